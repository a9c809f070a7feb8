#!/usr/bin/env bash
# `fusec bench` on a GPU machine (the device tool): install, run the bench with
# $BENCH_ARGS on the GPU backend for at most $LIMIT seconds (configurations finished by
# then are kept: the JSON is rewritten after each), and bring back the JSON, the console
# log and one archive of the per-party logs. Usage:
#   OUT=... NAME=bert_1gpu BENCH_ARGS="--model bert-base --layers 1 ..." bash bench/device_bench.sh
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"; NAME=${NAME:-bench}; W=${WORK:-/tmp/fb}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
mkdir -p "$W"; nvidia-smi -L; df -h /tmp | tail -1; free -g | head -2
# shellcheck disable=SC2086
timeout -s TERM "${LIMIT:-540}" python3 -m fusec bench $BENCH_ARGS --backend gpu --workdir "$W" --keys-dir "$W/keys" \
  --json "$OUT/$NAME.json" --markdown "$OUT/$NAME.md" --keep-going 2>&1 | tee "$OUT/$NAME.log"
echo "bench rc=${PIPESTATUS[0]}"
tar czf "$OUT/${NAME}_logs.tgz" -C "$W" logs runs 2>/dev/null; ls -la "$OUT"
