#!/usr/bin/env bash
# Install the proxy into .venv and run it on the example config (config.yaml).
# JWT_SECRET and S3_ENDPOINT_URL may be set beforehand; a development secret is used otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "Python 3.11 or newer is required (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
export JWT_SECRET="${JWT_SECRET:-dev-only-secret-change-me-0123456789abcdef}"
exec .venv/bin/python -m proxy serve --config "${CONFIG:-config.yaml}" "$@"
