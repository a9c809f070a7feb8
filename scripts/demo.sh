#!/usr/bin/env bash
# Install fusec and run the bundled example: dealer, P0 and P1 as three processes over TCP.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e .
python3 -m fusec demo "$@"
