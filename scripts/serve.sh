#!/usr/bin/env bash
# Install the proxy into .venv and run it on the example config (config.yaml).
# JWT_SECRET and S3_ENDPOINT_URL may be set beforehand; a development secret is used otherwise.
set -euo pipefail
source "$(dirname "$0")/venv.sh" ""
export JWT_SECRET="${JWT_SECRET:-dev-only-secret-change-me-0123456789abcdef}"
exec .venv/bin/python -m proxy serve --config "${CONFIG:-config.yaml}" "$@"
