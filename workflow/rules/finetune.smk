# Stage 3: fine-tuning per dataset x source r x method x backbone x seed (the off-the-shelf models),
# their selection companions (trained on `train` when the final model trains on the selection split
# too: CIFAR-100 and FGVC on all of train, VTAB-1k on train800val200), and the hyper-parameter searches
# the recipes ask for. A companion that would retrain its search's winning candidate (same seed, split and
# settings: the r = 0 companions of searched datasets) is that candidate's model, linked (search_chosen).


def finetune_flags(run):
    s = GRID.finetune_settings(run)
    return " ".join([
        backbone_flags(run.backbone),
        flags(dataset=run.dataset, method=run.method, r=run.source),
        s.cli_args(),
        common_flags(run.dataset, run.seed, "finetune", run.recipe),
    ])


def chosen_input(run):
    """The search result a fine-tune applies, when its recipe searches anything."""
    path = GRID.chosen_path(run)
    return [run_path(path)] if path else []


def chosen_flag(run):
    return flags(chosen=chosen_input(run)[0]) if chosen_input(run) else ""


rule search_candidate:
    input:
        backbone_input,
        lambda wc: data_input(layout.dataset_name(wc.dataset)),
    output:
        model=run_path(layout.SEARCH),
        score=run_path(layout.SEARCH_SCORE),
    log: job_log("search", layout.SEARCH)
    benchmark: job_benchmark("search", layout.SEARCH)
    params:
        launch=lambda wc: launch("finetune", GRID.search_run(**wc).recipe),
        args=lambda wc: finetune_flags(GRID.search_run(**wc)),
    threads: lambda wc: threads("finetune", GRID.search_run(**wc).recipe)
    resources: **recipe_res("finetune", lambda wc: GRID.search_run(**wc).recipe)
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} finetune {params.args} --score-split val --out {output.model} "
        "> {log} 2>&1"


rule search_select:
    input:
        lambda wc: [run_path(layout.SEARCH_SCORE, **c.fields) for c in GRID.searches.values()
                    if c.chosen_path == layout.path(layout.CHOSEN, **wc)],
    output: run_path(layout.CHOSEN)
    log: job_log("search", layout.SEARCH, candidate="select")
    params:
        launch=f"{sys.executable} -m tocom.cli",
    localrule: True
    shell:
        "{params.launch} select --candidates {input} --out {output} > {log} 2>&1"


rule search_chosen:
    input:
        chosen=run_path(layout.CHOSEN),
        models=lambda wc: [run_path(c.path) for c in GRID.searches.values()
                           if c.chosen_path == layout.path(layout.CHOSEN, **wc)],
    output: run_path(layout.CHOSEN_MODEL)
    log: job_log("search", layout.CHOSEN_MODEL)
    params:
        launch=f"{sys.executable} -m tocom.cli",
    localrule: True
    shell:
        "{params.launch} link-chosen --chosen {input.chosen} --candidates {input.models} --out {output} > {log} 2>&1"


# The final models (rule finetune) and their selection companions (rule finetune_select): the same job.
for _name, _role, _stage, _template in (("finetune", "final", "finetune", layout.FINETUNE),
                                        ("finetune_select", "select", "select", layout.SELECT)):

    rule:
        name: _name
        input:
            backbone_input,
            lambda wc, role=_role: chosen_input(GRID.finetune_run(role, **wc)),
            lambda wc: data_input(layout.dataset_name(wc.dataset)),
        output: run_path(_template)
        log: job_log(_stage, _template)
        benchmark: job_benchmark(_stage, _template)
        params:
            launch=lambda wc, role=_role: launch("finetune", GRID.finetune_run(role, **wc).recipe),
            args=lambda wc, role=_role: finetune_flags(GRID.finetune_run(role, **wc)) + " "
            + chosen_flag(GRID.finetune_run(role, **wc)),
        threads: lambda wc, role=_role: threads("finetune", GRID.finetune_run(role, **wc).recipe)
        resources: **recipe_res("finetune", lambda wc, role=_role: GRID.finetune_run(role, **wc).recipe)
        shell:
            "OMP_NUM_THREADS={threads} {params.launch} finetune {params.args} --out {output} > {log} 2>&1"
