#!/usr/bin/env bash
# Benchmark the proxy against its peers (see benchmarks/README.md).
# Usage: bash benchmarks/run.sh [--quick] [--out PATH] [more options: --help]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
python="$root/.venv/bin/python"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
have nginx || missing+=(nginx)
have wrk || missing+=(wrk)
have taskset || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "run.sh: installing ${missing[*]} with apt-get" >&2
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "run.sh: need root or sudo to apt-get install ${missing[*]}" >&2
            exit 2
        }
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        "${sudo[@]}" apt-get update >&2
        "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
fi

if [ ! -x "$python" ]; then
    echo "run.sh: $python not found; create the venv first (./scripts/test.sh or pip install -e .)" >&2
    exit 2
fi

exec "$python" -B "$here/bench.py" "$@"
