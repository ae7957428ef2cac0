#!/usr/bin/env bash
# Install the proxy into .venv and run it on the example config (config.yaml), for production.
# Export JWT_SECRET first (the proxy refuses to start without one; make one with
#   python -c 'import secrets; print(secrets.token_urlsafe(64))'); S3_ENDPOINT_URL only for an
# S3-compatible endpoint (unset or empty: AWS). Only the demo (scripts/demo.sh) makes up secrets.
set -euo pipefail
source "$(dirname "$0")/venv.sh" ""
exec .venv/bin/python -m proxy serve --config "${CONFIG:-config.yaml}" "$@"
