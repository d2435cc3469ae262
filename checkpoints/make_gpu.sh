#!/usr/bin/env bash
# The GPU work package: train every shipped checkpoint at GPU scale (bf16 autocast + TF32 in training only), measure
# throughput and the training time to each checkpoint's stated score error, evaluate them against the exact
# denoiser, write NAME.safetensors + NAME.json (cards say the device and whether reduced precision ran) and
# OUT/make_gpu_summary.json. Run from the repository root:
#
#   checkpoints/make_gpu.sh                  # CUDA: three streams on the one GPU, into checkpoints/
#   checkpoints/make_gpu.sh --out DIR        # ... into DIR
#   checkpoints/make_gpu.sh --tiny [--out DIR]  # the same path, tiny networks, one CPU process (CI; seconds)
#
# Without CUDA it runs --tiny (into a new temporary folder unless --out is given), so it never overwrites the
# shipped checkpoints with tiny ones. Budget: 12 minutes on one H200; the step plan and its arithmetic are in
# toy_models/neural/shipped.py. Every run is also capped by wall clock (TrainConfig.max_seconds), each stream at
# STREAM_BUDGET_S = 540 s of training, and the whole package is killed at 690 s as a last resort.
set -euo pipefail
tiny=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) tiny=1; shift ;;
    --out) [ $# -ge 2 ] || { echo "make_gpu.sh: --out needs a folder" >&2; exit 2; }; out="$2"; shift 2 ;;
    *) echo "make_gpu.sh: unknown argument $1 (use --tiny, --out DIR)" >&2; exit 2 ;;
  esac
done
PYTHON="${PYTHON:-python}"
started="$(date +%s)"
if [ "$tiny" = 0 ] && ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "make_gpu.sh: no CUDA device; running the tiny configuration" >&2
  tiny=1
fi
if [ "$tiny" = 1 ]; then
  out="${out:-$(mktemp -d "${TMPDIR:-/tmp}/make_gpu.XXXXXX")}"
  mkdir -p "$out"
  OMP_NUM_THREADS=1 "$PYTHON" -m toy_models.neural.shipped build --scale tiny --out "$out"
else
  out="${out:-checkpoints}"
  mkdir -p "$out"
  pids=()
  for stream in 0 1 2; do  # three processes share the GPU: these networks are launch-bound, not FLOP-bound
    OMP_NUM_THREADS=4 timeout 690 "$PYTHON" -m toy_models.neural.shipped build --scale gpu --stream "$stream" \
      --out "$out" > "$out/.make_gpu-stream$stream.log" 2>&1 &
    pids+=("$!")
  done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  cat "$out"/.make_gpu-stream*.log
  rm -f "$out"/.make_gpu-stream*.log
  [ "$status" = 0 ] || echo "make_gpu.sh: a stream failed (its log is above)" >&2
fi
"$PYTHON" -m toy_models.neural.shipped summarize --out "$out" --started "$started"
echo "make_gpu.sh: $(( $(date +%s) - started )) s; checkpoints and make_gpu_summary.json in $out"
