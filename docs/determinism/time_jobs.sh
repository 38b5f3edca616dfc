#!/usr/bin/env bash
# Paired, alternating wall-clock of one tocom job under several settings (A B C, A B C, ...), one job at a time.
# Usage: bash time_jobs.sh JOB ROUNDS setting-name ...     JOB: distill | finetune
# Output lines: round setting wall_s user_s sys_s load1_before load1_after
set -eu
cd "$(dirname "$0")"
source settings.sh
job=$1; rounds=$2; shift 2
O=out/timing; mkdir -p $O
BBK=out/cli/base_backbone.safetensors
case $job in
  distill)  cmd="$PY -m tocom.cli distill --checkpoint $BBK --dataset fashion_mnist --epochs 1 --batch-size 128 --lr 1e-3 \
              --limit 2000 --r-max 4 --rank 2 --scale 0.1 --loss kd --teacher-side source --seed 0 --device cpu --quiet";;
  finetune) cmd="$PY -m tocom.cli finetune --checkpoint $BBK --dataset fmnist_vtab/small --data-root data/fmnist_vtab \
              --method tome --r 4 --mode adaptformer --epochs 10 --batch-size 64 --lr 1e-3 --warmup-epochs 1 \
              --weight-decay 1e-4 --label-smoothing 0 --drop-path 0 --seed 0 --device cpu --quiet";;
esac
declare -A VARS; for s in "${SETTINGS[@]}"; do VARS[${s%%|*}]=${s#*|}; done
for ((i = 1; i <= rounds; i++)); do
  # alternate the order within a round too (A B, B A, ...) so a drifting load does not favour one side
  if ((i % 2)); then order=("$@"); else order=(); for ((k = $#; k >= 1; k--)); do order+=("${!k}"); done; fi
  for name in "${order[@]}"; do
    l0=$(cut -d' ' -f1 /proc/loadavg)
    env ${VARS[$name]} OMP_NUM_THREADS=1 /usr/bin/time -f "%e %U %S" -o $O/t.$$ $cmd --out $O/${job}_${name}_$i.safetensors > $O/${job}_${name}_$i.log 2>&1
    echo "$i $name $(cat $O/t.$$) $l0 $(cut -d' ' -f1 /proc/loadavg)"
  done
done
rm -f $O/t.$$
