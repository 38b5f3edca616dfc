# Sourced by the runners: the python they use, and the settings they compare.
PY=${PY:-python}   # the project virtualenv's python
[ -n "${TOCOM_SRC:-}" ] && export PYTHONPATH=$TOCOM_SRC   # optional: a frozen copy of the tocom package

# name|environment (space-separated VAR=value; empty = unpinned).
SETTINGS=(
"unpinned|"
"aten_avx2|ATEN_CPU_CAPABILITY=avx2"
"mkl_cbwr_avx2|MKL_CBWR=AVX2"
"mkl_enable_avx2|MKL_ENABLE_INSTRUCTIONS=AVX2"
"onednn_avx2|ONEDNN_MAX_CPU_ISA=AVX2"
"mkl_cbwr_compatible|MKL_CBWR=COMPATIBLE"
"emulate_avx2_cpu|ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2"
"emulate_avx512_cpu|ATEN_CPU_CAPABILITY=avx512 MKL_ENABLE_INSTRUCTIONS=AVX512 ONEDNN_MAX_CPU_ISA=AVX512_CORE"
"pin_avx2_strict|ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2,STRICT ONEDNN_MAX_CPU_ISA=AVX2"
"pin_avx2_strict_on_avx2_cpu|ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2,STRICT ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
"pin_avx2|ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2"
"pin_avx512_strict|ATEN_CPU_CAPABILITY=avx512 MKL_CBWR=AVX512,STRICT ONEDNN_MAX_CPU_ISA=AVX512_CORE"
"pin_avx2_mkl_compatible|ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=AVX2"
"pin_baseline|ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=SSE41"
)
