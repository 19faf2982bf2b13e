#!/usr/bin/env bash
# Rebuild the shipped lsst_gri model from scratch, with fixed seeds:
#   1. simulate 100,000 training lenses (seed 1) and 2,048 held-out lenses (seed 2)
#      of the built-in lsst_gri simulation;
#   2. train with benchmarks/reference/train_lsst.yaml (streamed from the store);
#   3. diagnose on 2,000 held-out lenses;
#   4. install model.json, weights.pt, ood_reference.pt and report.json (headline
#      metrics and the diagnose command) into sbi_lens/models/lsst_gri/.
# Hours on a 2-core CPU; use a GPU (--device cuda) for the real thing.
# Usage: bash benchmarks/reference/ship_lsst_gri.sh OUTDIR [--device cuda]
# Environment: WORKERS (simulation processes, default 2), NUM_TRAIN (default 100000).
set -euo pipefail
out=${1:?usage: ship_lsst_gri.sh OUTDIR [--device DEVICE]}
shift
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
workers=${WORKERS:-2}
num_train=${NUM_TRAIN:-100000}
mkdir -p "$out"
sbi-lens simulate lsst_gri --num "$num_train" --out "$out/ship_train.zarr" --seed 1 --workers "$workers" --quiet
sbi-lens simulate lsst_gri --num 2048 --out "$out/ship_test.zarr" --seed 2 --workers "$workers" --quiet
sbi-lens train "$out/ship_train.zarr" --out "$out/ship_model" --config "$here/train_lsst.yaml" --quiet "$@"
diagnose=(sbi-lens diagnose "$out/ship_model" "$out/ship_test.zarr" --out "$out/ship_report" --num-obs 2000 --seed 0)
if [[ "${1:-}" == "--device" ]]; then diagnose+=(--device "$2"); fi
"${diagnose[@]}"
python -m sbi_lens.shipped install "$out/ship_model" "$out/ship_report/metrics.json" lsst_gri \
    --models-dir "$repo/sbi_lens/models" --seed 2 \
    --command "sbi-lens diagnose lsst_gri HELD_OUT.zarr --out REPORT --num-obs 2000 --seed 0  # HELD_OUT: sbi-lens simulate lsst_gri --num 2048 --seed 2"
sbi-lens models
