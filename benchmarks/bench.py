"""Entry point of the benchmark harness; run it with `bash benchmarks/run.sh [--quick]`."""

import sys

from harness.main import main

if __name__ == "__main__":
    sys.exit(main())
