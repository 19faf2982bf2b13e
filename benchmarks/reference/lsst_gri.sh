#!/usr/bin/env bash
# Rebuild the lsst_gri reference: simulate 60,000 training and 2,000 held-out lenses,
# train, diagnose. About 35 min on a 2-core CPU (4 min simulating, 25 min training);
# minutes on a GPU machine.
# Usage: bash benchmarks/reference/lsst_gri.sh OUTDIR [--device cuda]
set -euo pipefail
out=${1:?usage: lsst_gri.sh OUTDIR [--device DEVICE]}
shift
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
sbi-lens simulate lsst_gri --num 60000 --out "$out/lsst_train.zarr" --seed 1 --workers "${WORKERS:-2}" --quiet
sbi-lens simulate lsst_gri --num 2048 --out "$out/lsst_test.zarr" --seed 2 --workers "${WORKERS:-2}" --quiet
sbi-lens train "$out/lsst_train.zarr" --out "$out/lsst_model" --config "$here/train_lsst.yaml" --quiet "$@"
sbi-lens diagnose "$out/lsst_model" "$out/lsst_test.zarr" --out "$out/lsst_report" --num-obs 2000
