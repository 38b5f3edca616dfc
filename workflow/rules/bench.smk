# Stage 6: throughput per r, inference and training (Fig. 3), and the plugin's costs (mode `plugin`: merged
# throughput against the plain model, switch() latency against its floor). Random weights: speed does not depend on them.
from tocom.settings import PLUGIN_CHECK


def bench_flags(wc):
    b = next(b for b in config["bench"] if b["backbone"] == wc.backbone and b["method"] == wc.method)
    mode = dict(mode="infer", plugin_check=True) if wc.mode == PLUGIN_CHECK else dict(mode=wc.mode)
    precision = None if wc.mode == PLUGIN_CHECK else config.get("precision")    # the plugin check is float32
    return " ".join([flags(model=config["backbones"][wc.backbone]["timm"], method=wc.method, r=b["r"], **mode,
                           device=config.get("device"), precision=precision, threads=threads("bench")),
                     GRID.bench_settings(b).cli_args()])


rule bench:
    output: run_path(layout.BENCH)
    log: job_log("bench", layout.BENCH)
    benchmark: job_benchmark("bench", layout.BENCH)
    params:
        launch=f"{sys.executable} -m tocom.cli",
        args=bench_flags,
    threads: threads("bench")
    resources: **res("bench")
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} bench {params.args} --out {output} > {log} 2>&1"
