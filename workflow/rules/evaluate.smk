# Stage 4: one job per fine-tuned model and compression method: every target r, plain and with each
# plugin. A model fine-tuned at source r = 0 (filed under method none) is evaluated once per method.


def eval_run(wc):
    return GRID.eval_run(**wc)


def eval_plugins(wc):
    return {v: f"{OUT}/{plugin_path(wc.backbone, wc.method, v)}" for v in sorted(eval_run(wc).variants)}


def eval_selector(wc):
    sel = eval_run(wc).selector
    return [f"{OUT}/{sel.path}"] if sel else []


def eval_flags(wc):
    ev = eval_run(wc)
    return " ".join([
        flags(method=ev.method, targets=sorted(ev.targets),
              plugin=[f"{v}={p}" for v, p in eval_plugins(wc).items()],
              select_checkpoint=(eval_selector(wc) or [None])[0]),
        GRID.eval_settings.cli_args(),
        common_flags(ev.finetune.dataset, ev.finetune.seed),
    ])


rule evaluate:
    input:
        model=lambda wc: f"{OUT}/{eval_run(wc).finetune.path}",
        selector=eval_selector,
        plugins=lambda wc: list(eval_plugins(wc).values()),
        data=lambda wc: data_input(eval_run(wc).finetune.dataset),
    output:
        f"{OUT}/{EVAL}",
    log:
        f"{LOGS}/evaluate/{{backbone}}_{{method}}_{{dataset}}_r{{source}}_seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{backbone}}_{{method}}_{{dataset}}_r{{source}}_seed{{seed}}.tsv"
    params:
        launch=launch("eval"),
        args=eval_flags,
    threads: threads("eval")
    resources:
        **res("eval"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} evaluate --checkpoint {input.model} {params.args} --out {output} > {log} 2>&1"
