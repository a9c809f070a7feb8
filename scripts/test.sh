#!/usr/bin/env bash
# Install fusec with its test extras and run the suite CI runs (slow tests deselected).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
# two workers (pytest-xdist): the suite is CPU-bound and single-threaded per test, CI has 2 cores
python3 -m pytest -q -n 2 -m "not slow" "$@"
