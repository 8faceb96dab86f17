#!/usr/bin/env bash
# Train the three tiny demo-world models in order (CLIP, VAE, generator) with their default configs
# and evaluate them on the held-out test images.
#
#   training/train_demo_models.sh WORLD MODELS_DIR [DEVICE] [GRID_PNG]
#
#   WORLD       demo world folder (generated with the default DemoWorldConfig if missing)
#   MODELS_DIR  where tiny-clip/ tiny-vae/ tiny-generator/ are written (assets/demo_models to ship)
#   DEVICE      torch device (default cpu)
#   GRID_PNG    ground truth / generated grid (default: none)
#
# Checkpoints go to MODELS_DIR/../checkpoints/<name> so that the shipped folders hold weights only.
# Environment: PYTHON (default python), TRAIN_ARGS (extra flags for every script, e.g. "--no-progress").
set -euo pipefail
WORLD=$(realpath -m "${1:?world folder}")
MODELS=$(realpath -m "${2:?models folder}")
DEVICE=${3:-cpu}
GRID=${4:+$(realpath -m "$4")}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."  # run the training package from the repository root
CK=$(dirname "$MODELS")/checkpoints
EXTRA=${TRAIN_ARGS:-}

"$PY" -c "from mindeye_core.data.demo import ensure_demo_world; print(ensure_demo_world('$WORLD', progress=False))"
t0=$(date +%s)
"$PY" -m training.train_tiny_clip --world "$WORLD" --out "$MODELS/tiny-clip" --ckpt-dir "$CK/tiny-clip" \
    --device "$DEVICE" --fp16 $EXTRA
t1=$(date +%s)
"$PY" -m training.train_tiny_vae --world "$WORLD" --out "$MODELS/tiny-vae" --ckpt-dir "$CK/tiny-vae" \
    --device "$DEVICE" --fp16 $EXTRA
t2=$(date +%s)
"$PY" -m training.train_tiny_generator --world "$WORLD" --clip "$MODELS/tiny-clip" --vae "$MODELS/tiny-vae" \
    --out "$MODELS/tiny-generator" --ckpt-dir "$CK/tiny-generator" --device "$DEVICE" --fp16 \
    ${GRID:+--grid "$GRID"} $EXTRA
t3=$(date +%s)
echo "wall seconds: clip $((t1 - t0)) vae $((t2 - t1)) generator $((t3 - t2))"
