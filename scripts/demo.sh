#!/usr/bin/env bash
# Install the proxy with its demo extra into .venv and run the embedded demo: an in-process
# S3 (moto) with demo data, the proxy in front of it, and a demo page. No AWS account needed.
set -euo pipefail
source "$(dirname "$0")/venv.sh" "demo"
exec .venv/bin/python -m proxy demo "$@"
