# Stage 3: fine-tuning per dataset x source r x method x backbone x seed (the off-the-shelf models),
# their selection companions (trained on `train` when the final model trains on the selection split
# too, e.g. VTAB-1k's train800val200), and the hyper-parameter searches the recipes ask for.


def finetune_flags(run):
    s = GRID.finetune_settings(run)
    return " ".join([
        backbone_flags(run.backbone),
        flags(dataset=run.dataset, method=run.method, r=run.source),
        s.cli_args(),
        common_flags(run.dataset, run.seed),
    ])


def chosen_input(run):
    """The search result a fine-tune applies, when its recipe searches anything."""
    path = GRID.chosen_path(run)
    return [f"{OUT}/{path}"] if path else []


def chosen_flag(run):
    return flags(chosen=chosen_input(run)[0]) if chosen_input(run) else ""


rule search_candidate:
    input:
        backbone_input,
        lambda wc: data_input(dataset_name(wc.dataset)),
    output:
        model=f"{OUT}/{SEARCH}",
        score=f"{OUT}/{SEARCH}.score.json",
    log:
        f"{LOGS}/search/{{backbone}}_{{method}}_{{dataset}}_seed{{seed}}_{{candidate}}.log",
    benchmark:
        f"{OUT}/benchmarks/search/{{backbone}}_{{method}}_{{dataset}}_seed{{seed}}_{{candidate}}.tsv"
    params:
        launch=launch("finetune"),
        args=lambda wc: finetune_flags(GRID.search_run(**wc)),
    threads: threads("finetune")
    resources:
        **res("finetune"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} finetune {params.args} --score-split val --out {output.model} "
        "> {log} 2>&1"


rule search_select:
    input:
        lambda wc: [f"{OUT}/{c.path}.score.json" for c in GRID.searches.values()
                    if c.chosen_path == CHOSEN.format(**wc)],
    output:
        f"{OUT}/{CHOSEN}",
    log:
        f"{LOGS}/search/{{backbone}}_{{method}}_{{dataset}}_seed{{seed}}_select.log",
    params:
        launch=f"{sys.executable} -m tocom.cli",
    localrule: True
    shell:
        "{params.launch} select --candidates {input} --out {output} > {log} 2>&1"


rule finetune:
    input:
        backbone_input,
        lambda wc: chosen_input(GRID.finetune_run(**wc)),
        lambda wc: data_input(dataset_name(wc.dataset)),
    output:
        f"{OUT}/{FINETUNE}",
    log:
        f"{LOGS}/finetune/{{backbone}}_{{method}}_{{dataset}}_r{{source}}_seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/finetune/{{backbone}}_{{method}}_{{dataset}}_r{{source}}_seed{{seed}}.tsv"
    params:
        launch=launch("finetune"),
        args=lambda wc: finetune_flags(GRID.finetune_run(**wc)) + " " + chosen_flag(GRID.finetune_run(**wc)),
    threads: threads("finetune")
    resources:
        **res("finetune"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} finetune {params.args} --out {output} > {log} 2>&1"


rule finetune_select:
    input:
        backbone_input,
        lambda wc: chosen_input(GRID.finetune_run("select", **wc)),
        lambda wc: data_input(dataset_name(wc.dataset)),
    output:
        f"{OUT}/{SELECT}",
    log:
        f"{LOGS}/select/{{backbone}}_{{method}}_{{dataset}}_r{{source}}_seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/select/{{backbone}}_{{method}}_{{dataset}}_r{{source}}_seed{{seed}}.tsv"
    params:
        launch=launch("finetune"),
        args=lambda wc: finetune_flags(GRID.finetune_run("select", **wc)) + " "
        + chosen_flag(GRID.finetune_run("select", **wc)),
    threads: threads("finetune")
    resources:
        **res("finetune"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} finetune {params.args} --out {output} > {log} 2>&1"
