#!/usr/bin/env bash
# One GPU call: where the online phase's time goes, on BERT-base cut to $LAYERS layers (fused gates,
# seq 128, both parties on GPU 0): (1) a plain bench, (2) the same under cProfile (FUSEC_PYPROFILE;
# the top of each party's profile goes to $OUT/prof_*.txt), (3) the same with CUDA MPS on.
# Each party's round phases (step / pack / wire / unpack) of the last step go to $OUT/phases.txt.
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
LAYERS=${LAYERS:-2}; REPEAT=${REPEAT:-3}; MPS=${MPS:-1}; PROFILE=${PROFILE:-1}
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1; echo "install rc=$?"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
WORK=/tmp/fusec; mkdir -p "$WORK"
common=(--model bert-base --layers "$LAYERS" --gates "${GATES:-fused}" --backend gpu --internal-batch 1 --workdir "$WORK" --keys-dir "$WORK/keys")
bench() {  # name, extra env...
  local name=$1; shift
  local t0=$SECONDS
  env "$@" timeout "${LIMIT:-300}" python3 -m fusec bench "${common[@]}" --warmup 1 --repeat "$REPEAT" \
    --json "$OUT/$name.json" --markdown "$OUT/$name.md" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - t0)) s"; grep -E "^\| bert" "$OUT/$name.md" 2>/dev/null | tail -2
  python3 - "$WORK"/runs/*/ <<'PY' | tee -a "$OUT/phases.txt"
import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/p*.json")):
    d = json.load(open(f))
    for s in d.get("steps", [])[-1:]:
        ph = {k: round(v, 4) for k, v in s.get("round_phases", {}).items()}
        print(f.split("/")[-1], "online", round(s["online_seconds"], 4), "rounds", s["rounds"], "phases", ph)
PY
}
[ "${PLAIN:-1}" = 1 ] && bench plain
if [ "$PROFILE" = 1 ]; then
  rm -rf /tmp/fusec-prof; mkdir -p /tmp/fusec-prof; REPEAT=1 bench prof FUSEC_PYPROFILE=/tmp/fusec-prof
  for f in /tmp/fusec-prof/p*_set1_*.prof; do   # the timed step (set 1, after the warm-up) of each party
    echo "== $f"; python3 -c "import pstats,sys; s=pstats.Stats(sys.argv[1]); s.sort_stats('tottime').print_stats(40); s.sort_stats('cumtime').print_stats(50)" "$f"
  done > "$OUT/profile.txt" 2>&1
fi
if [ "$MPS" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog; mkdir -p /tmp/mps /tmp/mpslog
  if nvidia-cuda-mps-control -d; then echo "mps on"; bench mps; echo quit | nvidia-cuda-mps-control; else echo "mps unavailable"; fi
fi
