#!/usr/bin/env bash
# The prepared GPU check of medlsam (scripts/gpu_check.py): the CUDA tests with TF32 off and on,
# SAM ViT-B and MedLAM width 24 on the GPU, medlsam-localize / medlsam-infer determinism and
# CPU/precision differences, 30 training steps with save/resume, the quick benchmark, and the
# slice-preparation overlap. One summary table; exit status non-zero when any check fails.
# Under 8 minutes on one H100. Extra arguments go to gpu_check.py (e.g. --only sam,medlam,
# --json report.json; --device cpu --tiny is the CPU dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout --kill-after=10 475 python scripts/gpu_check.py --budget 450 "$@"
