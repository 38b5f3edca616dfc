# Stage 2: ToCom self-distillation per backbone x method x variant (main plugin and ablations). Plugins whose
# teacher's outputs are computed once (distill.teacher: once) and shared read them from one teacher_outputs job.


def distill_flags(wc, variant=None):
    dataset, s = GRID.distill_settings(wc.backbone, variant or wc.variant)
    s = s.replace(method=wc.method)
    return " ".join([backbone_flags(wc.backbone), flags(dataset=dataset), s.cli_args(),
                     common_flags(dataset, config["seeds"][0], "distill")])


def teacher_input(wc):
    path = GRID.teacher_file(wc.backbone, wc.method, wc.variant)
    return [run_path(path)] if path else []


def teacher_flags(wc):
    """The flags of the plugin whose settings the shared teacher outputs are computed with."""
    _, _, variant = GRID.teachers[layout.path(layout.TEACHER, **wc)]
    return distill_flags(wc, variant)


rule teacher_outputs:
    input: backbone_input
    output: run_path(layout.TEACHER)
    log: job_log("distill", layout.TEACHER)
    benchmark: job_benchmark("distill", layout.TEACHER)
    params:
        launch=launch("distill"),
        args=teacher_flags,
    threads: threads("distill")
    resources: **res("distill")
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} teacher-outputs {params.args} --out {output} > {log} 2>&1"


rule distill:
    input:
        backbone=backbone_input,
        teacher=teacher_input,
    output: run_path(layout.PLUGIN)
    log: job_log("distill", layout.PLUGIN)
    benchmark: job_benchmark("distill", layout.PLUGIN)
    params:
        launch=launch("distill"),
        args=lambda wc, input: distill_flags(wc) + (f" --teacher-outputs {input.teacher[0]}" if input.teacher else ""),
    threads: threads("distill")
    resources: **res("distill")
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} distill {params.args} --out {output} > {log} 2>&1"
