# Stage 4: one grouped job per fine-tuned model: every target r, plain and with each plugin.


def eval_run(wc):
    return GRID.eval_run(**wc)


def eval_plugins(wc):
    return {v: f"{OUT}/{plugin_path(wc.backbone, wc.method, v)}" for v in sorted(eval_run(wc).variants)}


def eval_flags(wc):
    ev = eval_run(wc)
    e = config["evaluate"]
    return " ".join([
        flags(targets=sorted(ev.targets), scales=config["scales"], splits=e["splits"], select_split=e["select_split"],
              batch_size=e["batch_size"], seed=ev.finetune.seed),
        flags(plugin=[f"{v}={p}" for v, p in eval_plugins(wc).items()]),
        common_flags(ev.finetune.dataset, e.get("limit")),
    ])


rule evaluate:
    input:
        model=f"{OUT}/{FINETUNE}",
        plugins=lambda wc: list(eval_plugins(wc).values()),
    output:
        f"{OUT}/{EVAL}",
    log:
        f"{LOGS}/evaluate/{{backbone}}_{{method}}_{{dataset}}_r{{source}}_seed{{seed}}.log",
    params:
        launch=launch("eval"),
        args=eval_flags,
    threads: threads("eval")
    resources:
        **res("eval"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} evaluate --checkpoint {input.model} {params.args} --out {output} > {log} 2>&1"
