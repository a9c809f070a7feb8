#!/usr/bin/env bash
# Where the time goes on one H200 for BERT-base with $LAYERS layers (default 1): the GPU
# dealer under cProfile, then three online runs of both parties on the GPU: plain, with
# --profile-sync (exact per-scope GPU time), and P1 under cProfile. Logs go to $OUT.
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"; LAYERS=${LAYERS:-1}; GATES=${GATES:-fused}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
W=${WORK:-/tmp/fprof}; mkdir -p "$W"; t0=$SECONDS
dd if=/dev/zero of="$W/dd.bin" bs=64M count=32 conv=fsync 2>&1 | tail -1; rm -f "$W/dd.bin"
python3 -m fusec.models bert "$W/bert.onnx" --layers "$LAYERS" ${MODEL_ARGS:---hidden 768 --heads 12 --intermediate 3072 --vocab 30522} --seq "${SEQ:-128}" > "$OUT/export.log" 2>&1; echo "export rc=$? $((SECONDS - t0)) s"
python3 -m fusec compile "$W/bert.onnx" -o "$W/build" --batch 1 --seq "${SEQ:-128}" --gates "$GATES" > "$OUT/compile.log" 2>&1
echo "compile rc=$? $((SECONDS - t0)) s"
python3 -c "
import numpy as np; from fusec.build import load_build; from fusec.passes.calibrate import default_feeds
b = load_build('$W/build'); np.savez('$W/input.npz', **default_feeds(b.ir, 0))"
t1=$SECONDS
python3 -m cProfile -o "$OUT/keygen.prof" -m fusec keygen "$W/build" -o "$W/keys" --count 3 --backend "${BACKEND:-gpu}" > "$OUT/keygen.log" 2>&1
echo "keygen(3 sets, cProfile) rc=$? $((SECONDS - t1)) s"; tail -2 "$OUT/keygen.log"
python3 -c "
import pstats; s = pstats.Stats('$OUT/keygen.prof'); s.sort_stats('tottime').print_stats(25); s.sort_stats('cumulative').print_stats(40)" > "$OUT/keygen_prof.txt"
run() {  # $1 tag, $2 extra P1 prefix, $3 extra flags
  port=$((9000 + RANDOM % 1000))
  python3 -m fusec run "$W/build" --party 0 --keys "$W/keys/p0.key" --listen 127.0.0.1:$port --backend "${BACKEND:-gpu}" $3 \
    --stats "$OUT/$1_p0.json" > "$OUT/$1_p0.log" 2>&1 &
  $2 python3 $4 -m fusec run "$W/build" --party 1 --keys "$W/keys/p1.key" --peer 127.0.0.1:$port --backend "${BACKEND:-gpu}" $3 \
    --input "$W/input.npz" --stats "$OUT/$1_p1.json" > "$OUT/$1_p1.log" 2>&1; echo "$1 P1 rc=$?"; wait
  python3 -c "import json; d=json.load(open('$OUT/$1_p1.json')); print('$1', {k: d[k] for k in ('online_seconds','rounds','bytes_sent','key_load_seconds')}); print(' compute', {k: round(v,3) for k,v in d.get('compute_seconds',{}).items()}); print(' wire', {k: round(v,3) for k,v in d.get('wire_seconds',{}).items()})"
}
run plain "" "" ""
run sync "" "--profile-sync" ""
run cprof "" "" "-m cProfile -o $OUT/p1.prof"
python3 -c "
import pstats; s = pstats.Stats('$OUT/p1.prof'); s.sort_stats('tottime').print_stats(30); s.sort_stats('cumulative').print_stats(50)" > "$OUT/p1_prof.txt"
echo "total $((SECONDS - t0)) s"
