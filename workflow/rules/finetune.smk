# Stage 3: fine-tuning per dataset x source r x method x backbone x seed (the off-the-shelf models).


def finetune_flags(wc):
    run = GRID.finetune_run(**wc)
    recipe = dict(config["recipes"][run.recipe])
    limit = recipe.pop("limit", None)
    return " ".join([
        backbone_flags(wc.backbone),
        flags(dataset=run.dataset, split=recipe.pop("split", "trainval"), method=run.method, r=run.source,
              seed=run.seed, **recipe),
        common_flags(run.dataset, limit),
    ])


rule finetune:
    input:
        backbone_input,
    output:
        f"{OUT}/{FINETUNE}",
    log:
        f"{LOGS}/finetune/{{backbone}}_{{method}}_{{dataset}}_r{{source}}_seed{{seed}}.log",
    params:
        launch=launch("finetune"),
        args=finetune_flags,
    threads: threads("finetune")
    resources:
        **res("finetune"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} finetune {params.args} --out {output} > {log} 2>&1"
