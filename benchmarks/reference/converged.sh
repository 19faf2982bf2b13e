#!/usr/bin/env bash
# Issue 12's converged comparison: simulate a training and a held-out store for each
# config (one_band_48, lsst_gri), train every (config, model, seed) to convergence as
# its own process, N at a time, then print the table (docs/estimator.md, "Converged
# comparison (issue 12)").
#
# Usage: bash benchmarks/reference/converged.sh OUTDIR [--device cuda] [--jobs N]
#            [--seeds "0 1 2"] [--quick] [--num-train N] [--num-test N] [--workers K]
#            [-- EXTRA converged.py OPTIONS]
#   --quick      one config (one_band_48) and the first seed: 4 runs instead of 24
#   --num-train  training lenses per store (20000); --num-test held-out lenses (2000)
#   --workers    simulation processes (default: all cores)
# Results: OUTDIR/results.jsonl (one line per run), OUTDIR/table.md, OUTDIR/logs/.
# Re-running continues unfinished stores and re-runs every pair; an earlier
# results.jsonl is kept as results.<time>.jsonl.
set -euo pipefail
out=${1:?usage: converged.sh OUTDIR [--device cuda] [--jobs N] [--seeds "0 1 2"] [--quick]}
shift
device=cpu jobs=1 seeds="0 1 2" quick=0 num_train=20000 num_test=2000
workers=$(nproc)
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --num-train) num_train=$2; shift 2 ;;
    --num-test) num_test=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "converged.sh: unknown option $1 (see the usage at the top of the script)" >&2
       exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
configs=("$here/one_band_48.yaml" lsst_gri)
models=(ours_train ours_sbi stock_resnet stock_cnn)   # slowest first: fewer idle slots at the end
if [ "$quick" = 1 ]; then
  configs=("$here/one_band_48.yaml")
  seeds=${seeds%% *}
fi
# Each run gets an equal share of the cores for torch and zarr.
threads=$(( $(nproc) / jobs )); [ "$threads" -ge 1 ] || threads=1
mkdir -p "$out/logs"

tick=$SECONDS
for config in "${configs[@]}"; do
  name=$(basename "$config" .yaml)
  sbi-lens simulate "$config" --num "$num_train" --out "$out/${name}_train.zarr" --seed 1 \
    --workers "$workers" --quiet
  sbi-lens simulate "$config" --num "$num_test" --out "$out/${name}_test.zarr" --seed 2 \
    --workers "$workers" --quiet
done
echo "converged.sh: stores ready after $((SECONDS - tick)) s" >&2

if [ -s "$out/results.jsonl" ]; then
  mv "$out/results.jsonl" "$out/results.$(date +%Y%m%dT%H%M%S).jsonl"
fi
list="$out/logs/runs.txt"
: > "$list"
for config in "${configs[@]}"; do
  name=$(basename "$config" .yaml)
  for seed in $seeds; do
    for model in "${models[@]}"; do
      printf '%q ' python "$root/benchmarks/converged.py" "$out/${name}_train.zarr" \
        "$out/${name}_test.zarr" --model "$model" --seed "$seed" --device "$device" \
        --threads "$threads" --work "$out/models" --out "$out/results.jsonl" \
        ${extra[@]+"${extra[@]}"} >> "$list"
      printf '> %q 2>&1\n' "$out/logs/${name}_${model}_${seed}.log" >> "$list"
    done
  done
done
status=0
# One line of runs.txt per run; bash -c runs it as written (paths quoted by printf %q).
OMP_NUM_THREADS=$threads xargs -P "$jobs" -d '\n' -n 1 bash -c < "$list" || status=$?
echo "converged.sh: $(wc -l < "$list") runs done after $((SECONDS - tick)) s (status $status)" >&2
python "$root/benchmarks/converged_table.py" "$out/results.jsonl" | tee "$out/table.md"
exit "$status"
