#!/usr/bin/env bash
# Hash matrix for real tocom jobs (CPU-default recipes, shortened): pretrain (2 threads), distill,
# fine-tune and evaluate (1 thread each), every setting in settings.sh (or those named).
# Each stage after pretraining starts from the same unpinned inputs, so its hash reflects only its own kernels.
# Usage: bash run_cli.sh [setting-name ...]
set -eu
cd "$(dirname "$0")"
source settings.sh
O=out/cli; mkdir -p $O
T="$PY -m tocom.cli"
BB=tocom_vit_tiny_patch8_56
pretrain() { $T pretrain-backbone --backbone $BB --dataset fashion_mnist --epochs 1 --batch-size 128 --lr 1e-3 \
               --warmup-epochs 0.5 --limit 512 --seed 0 --device cpu --quiet --out "$1"; }
distill()  { $T distill --checkpoint $O/base_backbone.safetensors --dataset fashion_mnist --epochs 1 --batch-size 128 \
               --lr 1e-3 --limit 256 --r-max 4 --rank 2 --scale 0.1 --loss kd --teacher-side source --seed 0 \
               --device cpu --quiet --out "$1"; }
finetune() { $T finetune --checkpoint $O/base_backbone.safetensors --dataset fmnist_vtab/small --data-root data/fmnist_vtab \
               --method tome --r 4 --mode adaptformer --epochs 1 --limit 256 --batch-size 64 --lr 1e-3 --warmup-epochs 1 \
               --weight-decay 1e-4 --label-smoothing 0 --drop-path 0 --seed 0 --device cpu --quiet --out "$1"; }
evaluate() { $T evaluate --checkpoint $O/base_finetune.safetensors --data-root data/fmnist_vtab --method tome \
               --targets 0 2 4 --plugin $O/base_distill.safetensors --splits val test --select-split val --limit 100 \
               --batch-size 256 --seed 0 --device cpu --quiet --out "$1"; }
[ -d data/fmnist_vtab/small ] || $T make-tasks --out data/fmnist_vtab --tasks small   # one generated task
if [ ! -f $O/base_backbone.safetensors ]; then   # the shared inputs: unpinned, as the CPU default runs today
  OMP_NUM_THREADS=2 pretrain $O/base_backbone.safetensors > $O/base.log 2>&1
  OMP_NUM_THREADS=1 distill $O/base_distill.safetensors >> $O/base.log 2>&1
  OMP_NUM_THREADS=1 finetune $O/base_finetune.safetensors >> $O/base.log 2>&1
fi
for s in "${SETTINGS[@]}"; do
  name=${s%%|*}; vars=${s#*|}
  if [ $# -gt 0 ] && ! [[ " $* " == *" $name "* ]]; then continue; fi
  echo "# $(date +%T) $name load $(cut -d' ' -f1-3 /proc/loadavg)"
  env $vars OMP_NUM_THREADS=2 bash -c "$(declare -f pretrain); O=$O T='$T' BB=$BB; pretrain $O/${name}_pretrain.safetensors" > $O/${name}.log 2>&1
  for stage in distill finetune evaluate; do
    ext=safetensors; [ $stage = evaluate ] && ext=csv
    env $vars OMP_NUM_THREADS=1 bash -c "$(declare -f $stage); O=$O T='$T' BB=$BB; $stage $O/${name}_$stage.$ext" >> $O/${name}.log 2>&1
  done
  echo "$name pretrain=$($PY hash_tensors.py $O/${name}_pretrain.safetensors | cut -c1-12)" \
       "distill=$($PY hash_tensors.py $O/${name}_distill.safetensors | cut -c1-12)" \
       "finetune=$($PY hash_tensors.py $O/${name}_finetune.safetensors | cut -c1-12)" \
       "evaluate=$(sha256sum $O/${name}_evaluate.csv | cut -c1-12)"
done
