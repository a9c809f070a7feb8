#!/usr/bin/env bash
# Install fusec and run the bundled example: a digits classifier compiled, keys dealt, P0 and P1 over TCP, checked against onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e .
python3 -m fusec example "$@"
