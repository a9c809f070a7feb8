#!/usr/bin/env bash
# One GPU call for the compiled-online issue: install, the GPU tests ($TESTS=1), then `fusec bench`
# for each "model:gates:warmup:repeat[:layers[:profile]]" in $RUNS (both parties on GPU 0, internal
# batch 1; an optional 7th field adds bench options for that run alone, "+" standing for a space, e.g.
# "bert-base:fused:2:5:::--cuda-graphs"), each with its round phases (step / pack / wire / unpack, per party) in $OUT/phases.txt;
# profile=1 runs the dealer and the parties under cProfile (slower) and appends the top of each
# profile to $OUT/profile.txt. $BENCH_ARGS is passed to every bench (e.g. --stream-keys). $GPU_TESTS: the
# test files for TESTS=1. KEYGEN_MEM=1: after each run, the dealer's in-memory keygen time (sets made and
# packed on the GPU, no host copy, no file) on the run's first build -> $OUT/keygen_mem.txt.
# MPS=1: every bench runs with --mps, under CUDA's Multi-Process Service (both parties' kernels on the card at
# once, no context switch per round; recorded in each JSON's machine.cuda_mps); its logs end in $OUT/mps_log.tgz.
# FUSEC_HOST_MEMORY_GIB: the memory of a machine whose MemAvailable grows as it is used (an H200 microVM).
# Launch plans: BENCH_ARGS="--cuda-graphs" with warmup 2 in RUNS (e.g. "bert-base:fused:2:5"): the first step
# is interpreted, the second recorded, the timed ones replayed; TESTS=1 GPU_TESTS=tests/test_launch_plan.py
# checks replays against the CPU's bytes first. TEST_LIMIT: seconds for the GPU tests (default 300).
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
RUNS=${RUNS:-bert-base:fused:1:5}; TESTS=${TESTS:-1}
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
LOG="$OUT/log.txt"   # one log and one tables file: the device brings back only a few files
python3 -m pip install -q --no-deps --no-build-isolation -e . >> "$LOG" 2>&1; echo "install rc=$?"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; free -g | sed -n 2p
if [ "$TESTS" = 1 ]; then
  t0=$SECONDS
  timeout "${TEST_LIMIT:-300}" python3 -m pytest ${GPU_TESTS:-tests/test_gpu_kernels.py tests/test_device_path.py tests/test_mul_narrow.py \
    tests/test_narrow_gates.py tests/test_stream_prefetch.py tests/test_launch_plan.py} -m gpu -v -x -o addopts="" -p no:cacheprovider > /tmp/gpu_tests.log 2>&1
  # -v: each test's name and outcome as it ends, so a run the limit stops still says which passed
  echo "gpu tests rc=$? $((SECONDS - t0)) s: $(grep -c ' PASSED' /tmp/gpu_tests.log) passed, $(grep -c -E ' (FAILED|ERROR)' /tmp/gpu_tests.log) failed: $(tail -1 /tmp/gpu_tests.log)"
  grep -E " (PASSED|FAILED|ERROR|SKIPPED)" /tmp/gpu_tests.log > "$OUT/gpu_tests.txt"; tail -n 40 /tmp/gpu_tests.log >> "$LOG"
fi
if [ -n "${WIRE:-}" ]; then   # WIRE="1,2,4,8": loopback GB/s of the parties' channel per stripe count -> $OUT/wire.txt
  timeout 120 python3 bench/wire.py --mb 64 --rounds 6 --stripes "$WIRE" 2>&1 | tee -a "$OUT/wire.txt"
fi
WORK=/tmp/fusec; mkdir -p "$WORK"
# the MPS logs as one file: the device brings back only a few files (a lease's benches append to the same logs)
if [ "${MPS:-0}" = 1 ]; then BENCH_ARGS="${BENCH_ARGS:-} --mps"; trap 'tar -czf "$OUT"/mps_log.tgz -C "$WORK"/mps log 2>/dev/null' EXIT; fi
for run in $RUNS; do
  IFS=: read -r model gates warmup repeat layers prof extra <<< "$run"; extra=${extra//+/ }
  tag=$(echo "$extra" | tr -cd 'a-z0-9')
  name="${model}_${gates}${layers:+_L$layers}${prof:+_prof}${tag:+_$tag}"; t0=$SECONDS
  rm -rf /tmp/fusec-prof; mkdir -p /tmp/fusec-prof
  ${prof:+env FUSEC_PYPROFILE=/tmp/fusec-prof} timeout "${LIMIT:-500}" python3 -m fusec bench --model "$model" --gates "$gates" --backend gpu --warmup "$warmup" \
    --repeat "$repeat" ${layers:+--layers "$layers"} --internal-batch 1 ${BENCH_ARGS:-} $extra --workdir "$WORK" --keys-dir "$WORK/keys" \
    --json "$OUT/$name.json" --markdown /tmp/$name.md > /tmp/$name.log 2>&1
  echo "$name rc=$? $((SECONDS - t0)) s"; grep -E "^\| (bert|gpt)" /tmp/$name.md 2>/dev/null | tail -1
  { echo "== $name"; cat /tmp/$name.log; } >> "$LOG"; cat /tmp/$name.md >> "$OUT/tables.md" 2>/dev/null
  grep -q "^error" /tmp/$name.log && for f in "$WORK"/logs/*.log "$WORK"/runs/*/*.log; do   # a failure's every log
    [ -f "$f" ] && { echo "== $name $f (last lines)"; tail -n 40 "$f"; } >> "$LOG"; done
  python3 - "$name" "$WORK"/runs/*/ <<'PY' | tee -a "$OUT/phases.txt"
import glob, json, sys
for f in sorted(glob.glob(sys.argv[2] + "/p*.json")):
    steps = [s for s in json.load(open(f)).get("steps", []) if not s.get("warmup")]
    for s in steps:
        ph = {k: round(v, 4) for k, v in s.get("round_phases", {}).items()}
        print(sys.argv[1], f.split("/")[-1], "online", round(s["online_seconds"], 4), "rounds", s["rounds"], ph)
    mem = [s.get("memory") for s in json.load(open(f)).get("steps", []) if s.get("memory")]
    if mem:     # device memory after the last step (GB), and why no plan was recorded where none was
        print(sys.argv[1], f.split("/")[-1], "memory", {k: round(v / 1e9, 2) if isinstance(v, int) else v
                                                        for k, v in mem[-1].items()})
PY
  if [ -n "$prof" ]; then
    for f in /tmp/fusec-prof/*.prof; do
      echo "== $name $f"; python3 -c "import pstats,sys; s=pstats.Stats(sys.argv[1]); s.sort_stats('tottime').print_stats(30); s.sort_stats('cumtime').print_stats(40)" "$f"
    done >> "$OUT/profile.txt" 2>&1
  fi
  if [ "${KEYGEN_MEM:-0}" = 1 ]; then
    build=$(python3 -c "import json,sys; r=[x for x in json.load(open(sys.argv[1]))['results'] if 'compile' in x]; print(r[0]['compile']['build'] if r else '')" "$OUT/$name.json")
    [ -n "$build" ] && { echo "== $name $build"; timeout 120 python3 -m fusec.bench keygen-in-memory "$build" --count 3 --backend gpu; } 2>&1 | tee -a "$OUT/keygen_mem.txt" | tail -1
  fi
  rm -rf "$WORK"/runs "$WORK"/keys "$WORK"/logs
done
