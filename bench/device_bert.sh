#!/usr/bin/env bash
# BERT-base (random weights, seq 128, batch 1) on one H200: export, then for each gate set
# in $GATES: compile, GPU dealer, P0 and P1 as two processes on the GPU over loopback TCP,
# output compared with onnxruntime. Keys live in $WORK (tmpfs when it is big enough).
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"; GATES=${GATES:-fused}; LAYERS=${LAYERS:-12}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
WORK=${WORK:-/tmp/fusec}  # disk, not tmpfs: keys in tmpfs count against the host RAM the parties need
mkdir -p "$WORK"; df -h /dev/shm /tmp | tail -2; echo "work dir $WORK"
t0=$SECONDS
[ -s "$WORK/bert.onnx" ] || timeout 150 python3 -m fusec.models bert "$WORK/bert.onnx" --layers "$LAYERS" --hidden 768 --heads 12 \
  --intermediate 3072 --vocab 30522 --seq 128 > "$OUT/export.log" 2>&1; echo "export rc=$? $((SECONDS - t0)) s"
for g in $GATES; do
  t0=$SECONDS
  timeout "${LIMIT:-420}" python3 -m fusec verify "$WORK/bert.onnx" --batch 1 --seq 128 --gates "$g" --backend gpu \
    --workdir "$WORK/v_$g" > "$OUT/verify_$g.log" 2>&1; echo "verify $g rc=$? $((SECONDS - t0)) s"
  tail -n 5 "$OUT/verify_$g.log"
  for p in 0 1; do cp "$WORK/v_$g/p$p.json" "$OUT/bert_${g}_p$p.json" 2>/dev/null; done
  grep -h "wrote\|key set" "$OUT/verify_$g.log" | tail -2
  rm -rf "$WORK/v_$g/keys"
done
