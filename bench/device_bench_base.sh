#!/usr/bin/env bash
# One GPU call: install, GPU tests, then `fusec bench` on full BERT-base (seq 128, batch 1) for the
# gate sets in $GATES, both parties on GPU 0. Logs and JSON go to $OUT (the device tool brings them back).
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
GATES=${GATES:-fused}; REPEAT=${REPEAT:-3}; WARMUP=${WARMUP:-1}; TESTS=${TESTS:-1}; MODEL=${MODEL:-bert-base}
# wheels the image lacks (cryptography, cffi, pycparser, click), carried in .whl
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1; echo "install rc=$?"
python3 -c "import cupy, fusec, onnx, onnxruntime, click, jinja2, networkx, cryptography; print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'gpu(s)')" 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "$TESTS" = 1 ]; then
  t0=$SECONDS; timeout 200 python3 -m pytest tests -m gpu -q -x -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
  echo "gpu tests rc=$? $((SECONDS - t0)) s: $(tail -1 "$OUT/gpu_tests.log")"
fi
WORK=/tmp/fusec; mkdir -p "$WORK"
t0=$SECONDS
timeout "${LIMIT:-480}" python3 -m fusec bench --model "$MODEL" --gates "$GATES" --backend gpu --warmup "$WARMUP" \
  --repeat "$REPEAT" --internal-batch 1 --workdir "$WORK" --keys-dir "$WORK/keys" --json "$OUT/bench.json" \
  --markdown "$OUT/bench.md" > "$OUT/bench.log" 2>&1
echo "bench rc=$? $((SECONDS - t0)) s"; tail -n 12 "$OUT/bench.log"
