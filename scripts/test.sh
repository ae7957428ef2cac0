#!/usr/bin/env bash
# Install everything the tests need into .venv, then lint, type-check and run the whole suite.
# This is the README's test command, and what CI runs.
set -euo pipefail
source "$(dirname "$0")/venv.sh" "test,demo"
# Debian's Chromium for the browser test of the demo (Playwright drives it; it never
# downloads a browser). Without root or apt-get, that one test is skipped with its reason.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test..." >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
# Debian's redis-server for the shared-state tests (two proxy processes on one Redis). Without
# root or apt-get, those tests are skipped with their reason.
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's redis-server for the shared-state tests..." >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } \
    >/dev/null 2>&1 || echo "warning: could not install redis-server; its tests will be skipped" >&2
fi
# Debian's kubernetes-client (kubectl) renders the deploy/kubernetes overlays with
# `kubectl kustomize` for tests/test_kubernetes.py. Without root or apt-get, those tests skip.
if ! command -v kubectl >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's kubernetes-client for the manifest tests..." >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client; } \
    >/dev/null 2>&1 || echo "warning: could not install kubernetes-client; its tests will be skipped" >&2
fi
# s3rver 3 (Node.js) enforces presigned URL expiry, which moto does not; s3rver 5 also verifies
# SigV4 signatures (tests/test_s3rver_sigv4.py). Their tests skip without them.
if command -v npm >/dev/null 2>&1; then
  npm ci --prefix tests/s3rver --silent --no-audit --no-fund \
    || echo "warning: could not install s3rver; its tests will be skipped" >&2
  npm ci --prefix tests/s3rver5 --silent --no-audit --no-fund --engine-strict=false \
    || echo "warning: could not install @20minutes/s3rver; its tests will be skipped" >&2
else
  echo "note: npm not found; the s3rver expiry and signature tests will be skipped" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
