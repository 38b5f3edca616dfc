# Stage 2: ToCom self-distillation per backbone x method x variant (main plugin and ablations).


def distill_flags(wc):
    dataset, s = GRID.distill_settings(wc.backbone, wc.variant)
    s = s.replace(method=wc.method)
    return " ".join([backbone_flags(wc.backbone), flags(dataset=dataset), s.cli_args(),
                     common_flags(dataset, config["seeds"][0], "distill")])


rule distill:
    input:
        backbone_input,
    output:
        run_path(layout.PLUGIN),
    log:
        job_log("distill", layout.PLUGIN),
    benchmark:
        job_benchmark("distill", layout.PLUGIN)
    params:
        launch=launch("distill"),
        args=distill_flags,
    threads: threads("distill")
    resources:
        **res("distill"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} distill {params.args} --out {output} > {log} 2>&1"
