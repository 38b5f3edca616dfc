# Stage 4: one job per fine-tuned model and compression method: every target r plain, each plugin at the
# targets its study sets ask for. A model fine-tuned at source r = 0 (filed under method none) is evaluated
# once per method.


def eval_run(wc):
    return GRID.eval_run(**wc)


def eval_plugins(wc):
    return {v: plugin_file(wc.backbone, wc.method, v) for v in sorted(eval_run(wc).variants)}


def eval_selector(wc):
    sel = eval_run(wc).selector
    return [run_path(sel.path)] if sel else []


def eval_flags(wc):
    ev = eval_run(wc)
    fewer = {v: sorted(t) for v, t in sorted(ev.plugin_targets.items()) if t != ev.targets}
    return " ".join([
        flags(method=ev.method, targets=sorted(ev.targets),
              plugin=[f"{v}={p}" for v, p in eval_plugins(wc).items()],
              plugin_targets=[f"{v}={','.join(map(str, t))}" for v, t in fewer.items()] or None,
              select_checkpoint=(eval_selector(wc) or [None])[0]),
        GRID.eval_settings.cli_args(),
        common_flags(ev.finetune.dataset, ev.finetune.seed, "eval"),
    ])


rule evaluate:
    input:
        model=lambda wc: run_path(eval_run(wc).finetune.path),
        selector=eval_selector,
        plugins=lambda wc: list(eval_plugins(wc).values()),
        data=lambda wc: data_input(eval_run(wc).finetune.dataset),
    output: run_path(layout.EVAL)
    log: job_log("evaluate", layout.EVAL)
    benchmark: job_benchmark("evaluate", layout.EVAL)
    params:
        launch=launch("eval"),
        args=eval_flags,
    threads: threads("eval")
    resources: **res("eval")
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} evaluate --checkpoint {input.model} {params.args} --out {output} > {log} 2>&1"
