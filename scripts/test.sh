#!/usr/bin/env bash
# Install fusec with its test extras and run the suite CI runs (slow tests deselected).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
python3 -m pytest -q -m "not slow" "$@"
