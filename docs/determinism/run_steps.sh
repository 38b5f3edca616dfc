#!/usr/bin/env bash
# Hash matrix for the training-step workload: every setting in settings.sh at THREADS (default 1).
# Usage: bash run_steps.sh STEPS THREADS [setting-name ...]   -> lines on stdout
set -eu
cd "$(dirname "$0")"
source settings.sh
steps=$1; threads=$2; shift 2
for s in "${SETTINGS[@]}"; do
  name=${s%%|*}; vars=${s#*|}
  if [ $# -gt 0 ] && ! [[ " $* " == *" $name "* ]]; then continue; fi
  echo "# $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  env $vars OMP_NUM_THREADS=$threads "$PY" steps.py "${name}_t${threads}_s${steps}_b${BATCH:-64}" "$steps" ${BATCH:-64} 2>&1 | tail -1
done
