#!/usr/bin/env bash
# The training-step workload on an emulated CPU (QEMU user mode, TCG: the CPUID, caches and vendor that
# MKL/oneDNN/ATen detect are the emulated model's; float ops are emulated bit-exactly in software).
# Usage: bash run_qemu.sh QEMU_CPU STEPS setting-name ...      (QEMU 7.2 TCG has AVX2 but no AVX-512)
set -eu
cd "$(dirname "$0")"
source settings.sh
cpu=$1; steps=$2; shift 2
for s in "${SETTINGS[@]}"; do
  name=${s%%|*}; vars=${s#*|}
  [[ " $* " == *" $name "* ]] || continue
  echo "# $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  env $vars OMP_NUM_THREADS=1 qemu-x86_64 -cpu "$cpu" "$PY" steps.py "qemu-${cpu}_${name}_t1_s${steps}_b${BATCH:-64}" "$steps" ${BATCH:-64} 2>&1 | tail -1
done
