#!/usr/bin/env bash
# One GPU-machine session: install, GPU correctness tests, kernel benchmark, a bert-tiny
# two-process run on the GPU. Logs go to $OUT (or ./device_out). Usage: bash bench/device_check.sh
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { local name=$1 limit=$2; shift 2; echo "== $name"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "   rc=$rc in $((SECONDS - t0)) s"; tail -n 4 "$OUT/$name.log"; }
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
nvidia-smi -L; python3 -c 'import cupy, numpy; print("cupy", cupy.__version__, "numpy", numpy.__version__)'
step install 120 python3 -m pip install -q --no-deps --no-build-isolation -e .
step kernels 240 python3 -m pytest -q -x -m gpu tests/test_gpu_kernels.py
step device_path 300 python3 -m pytest -q -x -m "gpu" tests/test_device_path.py
step gates_on_gpu 300 env FUSEC_TEST_BACKEND=gpu python3 -m pytest -q -m "not slow" tests/test_arith_gates.py \
  tests/test_truncation.py tests/test_compare.py tests/test_scalar.py tests/test_sigma.py tests/test_sigma_nonlinear.py \
  tests/test_movement.py tests/test_truth_table.py
step bench_kernels 240 python3 bench/bench_gpu_kernels.py --json "$OUT/gpu_kernels.json"
step verify_bert_tiny_gpu 300 python3 -m fusec verify tests/data/bert_tiny_legacy.onnx --batch 1 --seq 16 --backend gpu --workdir /tmp/vbt
cp /tmp/vbt/p0.json "$OUT/bert_tiny_p0.json" 2>/dev/null; cp /tmp/vbt/p1.json "$OUT/bert_tiny_p1.json" 2>/dev/null
