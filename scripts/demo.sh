#!/usr/bin/env bash
# Install the proxy with its demo extra into .venv and run the embedded demo: an in-process
# S3 (moto) with demo data, the proxy in front of it, and a demo page. No AWS account needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "Python 3.11 or newer is required (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[demo]'
exec .venv/bin/python -m proxy demo "$@"
