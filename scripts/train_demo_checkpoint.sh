#!/usr/bin/env bash
# Reproduce the demo MedLAM checkpoint medlsam/data/medlam_demo.pth.
#
# Data recipe: 40 procedural phantoms, `python -m medlsam.synth --n 40 --seed 1000` (default
# 128x128x~100 grid, all 40 used as unlabelled training CTs; none of them is a subject of the
# demo or of the measurement cohorts, which use other seeds). Training, on the CPU, in three
# stages, each starting from the previous stage's best (lowest validation error) weights:
#   1. configs/train_demo.txt        (seed 2023): 3,500 steps, relative distance only;
#   2. configs/train_demo_local.txt  (seed 2024): 1,500 steps, half the pairs near pairs;
#   3. configs/train_demo_mss.txt    (seed 2025): 1,000 steps, near pairs, + MSS on feature0.
# Run from the repository root:  bash scripts/train_demo_checkpoint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=result/demo_training
mkdir -p "$OUT"
"$PY" -m medlsam.synth --out "$OUT/synth" --n 40 --supports 1 --seed 1000 --quiet
( cd "$OUT" && cat synth/support_image.txt synth/query_image.txt | sed 's#^#synth/#' > train_images.txt )
for stage in train_demo train_demo_local train_demo_mss; do
  "$PY" -m medlsam.cli.train --config "configs/$stage.txt" --device cpu --threads 2 "$@"
done
mkdir -p medlsam/data
cp "$OUT/checkpoint/medlam_demo_mss.pth" medlsam/data/medlam_demo.pth  # stage 3 final weights (step 500)
chmod 644 medlsam/data/medlam_demo.pth
sha256sum medlsam/data/medlam_demo.pth
