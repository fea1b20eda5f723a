#!/usr/bin/env bash
# One call on a lent GPU machine: continue the shipped default model with GPU-sized batches, then send back the
# exported model, the training log and the training state. Prepared and tested on the CPU (DEVICE_TEST=1) so the
# device minutes go to training. Prepare here, from the repository root:
#   bash ../shared/tools/device-wheels.sh .whl                                  # wheels the GPU machine lacks
#   python recipes/librispeech/device/stage_data.py --out .gpudata --budget-mb 40   # ~38 min of training speech
# then run it there (the `device` tool's run, carry [".whl", ".gpudata"], timeout ~540 s):
#   MINUTES=6 bash recipes/librispeech/device/gpu_continue.sh
# What comes back in $OUT: default.pt + default.json (float16 codec and its card: lineage with GPU minutes),
# log.jsonl, probe.jsonl (the step-time probe) and the training state split into <= 15 MiB parts
# (state.pt.part-aa, -ab, ...: `cat state.pt.part-* > step.pt` gives back a state that train.resume=true continues).
# Settings (environment): MINUTES (training minutes, default 6), BATCH (default 128), LR (default 5e-4),
# INIT (checkpoint to start from, default the shipped model), RUN (run folder, default runs/gpu-continue),
# ESTIMATOR (default grit_rotation, the best rotation-family arm of docs/ablation; rotation is the shipped model's,
# ste the baseline),
# EXTRA (more recipe overrides, space-separated, e.g. "model.quantizer_dropout=1.0 model.rate_conditioning=true"),
# RECIPE (default recipes/librispeech/convnext.yaml). With RECIPE=recipes/librispeech/convnext-causal.yaml the same
# call trains the streaming model from the shipped default (its head resampled, docs/streaming.md) and sends it
# back as streaming.pt + streaming.json instead:
#   RECIPE=recipes/librispeech/convnext-causal.yaml MINUTES=7 BATCH=32 bash recipes/librispeech/device/gpu_continue.sh
set -euo pipefail
MINUTES=${MINUTES:-6}
BATCH=${BATCH:-128}
LR=${LR:-5e-4}
INIT=${INIT:-rvqcodec/pretrained/default.pt}
RUN=${RUN:-runs/gpu-continue}
ESTIMATOR=${ESTIMATOR:-grit_rotation}
RECIPE=${RECIPE:-recipes/librispeech/convnext.yaml}
case "$RECIPE" in
  *causal*) AS=streaming ;;
  *) AS=default ;;
esac
OUT=${OUT:?set OUT to the folder whose files come back}
PY=${PYTHON:-python3}
if [ -z "${DEVICE_TEST:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
  PRECISION=bf16
else
  PRECISION=no  # the CPU rehearsal: same commands, a few steps
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || true
COMMON=("$RECIPE" data.root=.gpudata "data.extra_train_dirs=[.gpudata/extra]"
        data.batch_size=$BATCH train.mixed_precision=$PRECISION train.init_from=$INIT train.ae_warmup_steps=0
        train.kmeans_init_seconds=0 optim.lr=$LR optim.warmup_steps=200 model.estimator=$ESTIMATOR ${EXTRA:-}
        --no-progress)
# 1. Probe: seconds per step at this batch on this machine (log every 10 steps, nothing saved that matters).
PROBE_STEPS=${PROBE_STEPS:-60}
rm -rf runs/gpu-probe
$PY -m rvqcodec train "${COMMON[@]}" train.run_dir=runs/gpu-probe train.steps=$PROBE_STEPS train.log_every=10 \
    train.valid_every=1000000 train.ckpt_every=1000000 train.valid_pesq=false
cp runs/gpu-probe/log.jsonl "$OUT/probe.jsonl"
# 2. As many steps as MINUTES allow at the probe's median step time (the cosine schedule then anneals in time);
#    train.max_minutes stops it a little later in any case.
STEPS=$($PY - "$MINUTES" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open("runs/gpu-probe/log.jsonl")]
times = [r["time/step_seconds"] for r in rows if "time/step_seconds" in r][1:]  # the first window holds start-up
print(max(20, int(float(sys.argv[1]) * 60 / statistics.median(times))))
PY
)
echo "training $STEPS steps (${MINUTES} min at the probe's step time)"
rm -rf "$RUN"
$PY -m rvqcodec train "${COMMON[@]}" train.run_dir=$RUN train.steps=$STEPS \
    train.max_minutes=$(awk "BEGIN { print $MINUTES + 1 }") train.valid_every=$(( STEPS / 4 > 0 ? STEPS / 4 : 1 )) \
    train.ckpt_every=$STEPS
# 3. Bank it: exported model + card, log, and the training state in parts that fit the way back.
$PY -m rvqcodec export "$RUN" "$OUT/$AS.pt" --as-$AS --recipe "$RECIPE" \
    --note "Continued on a GPU from $INIT at batch $BATCH ($ESTIMATOR estimator)."
cp "$RUN/log.jsonl" "$OUT/log.jsonl"
STATE=$(ls "$RUN"/checkpoints/step_*.pt | tail -1)
split -b 15M "$STATE" "$OUT/$(basename "$STATE").part-"
ls -l "$OUT"
