#!/usr/bin/env bash
# The prepared GPU check (issue #6): one short script for a lent GPU machine that has PyTorch.
#
#   bash benchmarks/gpu_check.sh DATA OUTDIR [SECONDS]
#
# Within SECONDS (default 520) it: splits DATA (seed 0), trains cpu-default on the GPU and
# evaluates it with TTA; times training steps of seed-convnext-large by setting
# (bench_gpu_step.py); runs the seed-convnext-large recipe (random init: no ConvNeXt weights are
# reachable offline) for its 56 epochs or 5 minutes, logging GPU utilization every second; then,
# with the time left, a longer lite0 run (224 px, 30 epochs, nothing frozen). Every stage gets
# its own time limit, so one failing stage leaves the others. Results land in OUTDIR:
# gpu_check.log, gpu_step.json, gpu_util.csv and runs.tar.gz (each run's config, metrics.csv,
# train_summary.json and evaluation). PLANTID_CHECK_SET="k=v ..." adds overrides to every run
# (e.g. tiny sizes for a dry run on a CPU); PLANTID_CHECK_CONVNEXT_SET only to the ConvNeXt run
# (e.g. "train.compile=true" or "data.batch_size=64" to measure those levers).
set -u
DATA=${1:?usage: gpu_check.sh DATA OUTDIR [SECONDS]}
OUTDIR=${2:?usage: gpu_check.sh DATA OUTDIR [SECONDS]}
BUDGET=${3:-520}
PY=${PYTHON:-python3}
EXTRA=${PLANTID_CHECK_SET:-}
START=$(date +%s)
WORK=$(mktemp -d)
mkdir -p "$OUTDIR"
export PY EXTRA START BUDGET WORK OUTDIR MANIFEST=$WORK/split/split.csv
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore COLUMNS=160
exec > >(tee -a "$OUTDIR/gpu_check.log") 2>&1

left() { echo $((BUDGET - ($(date +%s) - START))); }
plantid() { "$PY" -m plantid.cli "$@"; }
# stage NAME CAP_SECONDS COMMAND...: run COMMAND for at most CAP (or what is left), report rc and time.
stage() {
  local name=$1 cap=$2; shift 2
  local limit; limit=$(left); [ "$cap" -lt "$limit" ] && limit=$cap
  if [ "$limit" -lt 30 ]; then echo "== $name: skipped ($(left) s left)"; return; fi
  echo "== $name (limit ${limit} s, $(left) s left)"
  local t0; t0=$(date +%s)
  timeout -k 10 "$limit" bash -c '"$@"' _ "$@"; local rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 )) s"
}

lite0() {
  plantid train --data "$MANIFEST" --recipe cpu-default --out "$WORK/lite0" train.progress=false $EXTRA &&
  plantid evaluate "$WORK/lite0" --split test --tta default
}

convnext() {
  local minutes; minutes=$("$PY" -c "print(round(min(5.0, ($(left) - 45) / 60), 2))")
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 1 \
    > "$OUTDIR/gpu_util.csv" 2>/dev/null &
  local monitor=$!
  plantid train --data "$MANIFEST" --recipe seed-convnext-large --out "$WORK/convnext" \
    model.weights=none train.patience=0 train.max_minutes="$minutes" train.progress=false \
    ${PLANTID_CHECK_CONVNEXT_SET:-} $EXTRA
  local rc=$?
  kill $monitor 2>/dev/null
  return $rc
}

lite0_long() {
  local minutes; minutes=$("$PY" -c "print(round(max(0.2, ($(left) - 40) / 60), 2))")
  plantid train --data "$MANIFEST" --recipe cpu-default --out "$WORK/lite0-224-30" train.progress=false \
    data.image_size=224 'train.resize_phases=[]' train.epochs=30 model.freeze=0 train.max_minutes="$minutes" $EXTRA &&
  plantid evaluate "$WORK/lite0-224-30" --split test --tta default
}

export -f left plantid lite0 convnext lite0_long

echo "== machine"; nvidia-smi -L 2>&1; nproc
"$PY" -c 'import torch, timm, lightning, pydantic; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "| timm", timm.__version__, "| lightning", lightning.__version__, "| pydantic", pydantic.__version__)'

stage split 60 plantid split "$DATA" --out "$WORK/split"

stage "cpu-default on the GPU" 150 lite0

stage "training-step speed, seed-convnext-large" 100 "$PY" benchmarks/bench_gpu_step.py \
  --recipe seed-convnext-large --json-out "$OUTDIR/gpu_step.json" ${PLANTID_CHECK_STEP_ARGS:-}

stage "seed-convnext-large, 56 epochs or 5 minutes" 400 convnext

stage "lite0 at 224 px, 30 epochs, nothing frozen" 200 lite0_long

echo "== summaries"
for run in "$WORK"/lite0 "$WORK"/convnext "$WORK"/lite0-224-30; do
  [ -f "$run/train_summary.json" ] && { echo "-- $(basename "$run")"; cat "$run/train_summary.json"; echo; }
done
(cd "$WORK" && tar czf "$OUTDIR/runs.tar.gz" --exclude='*.ckpt' --exclude='tb' --exclude='export' \
   $(ls -d lite0 convnext lite0-224-30 2>/dev/null)) || true
echo "== done in $(( $(date +%s) - START )) s"
