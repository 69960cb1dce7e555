#!/usr/bin/env bash
# Reproduce the demo MedLAM checkpoint medlsam/data/medlam_demo.pth.
#
# Data recipe: 40 procedural phantoms, `python -m medlsam.synth --n 40 --seed 1000` (default
# 128x128x~100 grid, all 40 used as unlabelled training CTs; none of them is a subject of the
# demo or of the measurement cohorts, which use other seeds). Training: configs/train_demo.txt
# (seed 2023) on the CPU. Run from the repository root:  bash scripts/train_demo_checkpoint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=result/demo_training
mkdir -p "$OUT"
"$PY" -m medlsam.synth --out "$OUT/synth" --n 40 --supports 1 --seed 1000 --quiet
( cd "$OUT" && cat synth/support_image.txt synth/query_image.txt | sed 's#^#synth/#' > train_images.txt )
"$PY" -m medlsam.cli.train --config configs/train_demo.txt --device cpu --threads 2 "$@"
mkdir -p medlsam/data
cp "$OUT/checkpoint/medlam_demo_best.pth" medlsam/data/medlam_demo.pth  # lowest validation error
chmod 644 medlsam/data/medlam_demo.pth
sha256sum medlsam/data/medlam_demo.pth
