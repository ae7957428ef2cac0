#!/usr/bin/env bash
# Install everything the tests need into .venv, then lint, type-check and run the whole suite.
# This is the README's test command, and what CI runs.
set -euo pipefail
source "$(dirname "$0")/venv.sh" "test,demo"
# Debian's packages the suite drives, each test skipping with its reason when its tool is
# missing (no root or no apt-get):
# - chromium: the demo's and sign-in's browser tests (Playwright drives it; it never
#   downloads a browser);
# - redis-server: shared state (several proxy processes on one Redis), outage and TLS tests;
# - redis-sentinel: the Sentinel failover test (else it runs `redis-server --sentinel`);
# - kubernetes-client: `kubectl kustomize` renders deploy/kubernetes's overlays.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's ${missing[*]} for the tests that drive them..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    for package in "${missing[@]}"; do  # one at a time: one that fails leaves the others
      apt-get install -y -qq "$package" >/dev/null 2>&1 \
        || echo "warning: could not install $package; the tests that need it will skip" >&2
    done
  fi
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
