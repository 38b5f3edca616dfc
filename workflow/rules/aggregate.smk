# Stage 8: tidy results files and a first summary table. Reads result files only (CSVs, the search
# results' JSON, the safetensors headers of the plugins and fine-tuned models for their sizes, class
# counts and settings, and the Snakemake benchmark files of every GPU rule for wall-clock times).


rule aggregate:
    input:
        evals=[run_path(p) for p in sorted(GRID.evals)],
        transfers=[run_path(t.path) for t in GRID.transfers],
        benches=[run_path(b.path) for b in GRID.benches],
        plugins=[plugin_file(*p) for p in sorted(GRID.plugins)],
        models=[run_path(p) for p in sorted(GRID.finetunes)],
        # every search result some fine-tune applies (one search serves several models)
        chosen=sorted({run_path(p) for p in (GRID.chosen_path(run) for run in GRID.finetunes.values()) if p}),
    output:
        evals=run_path(layout.TABLE, table="eval"),
        transfers=run_path(layout.TABLE, table="transfer"),
        benches=run_path(layout.TABLE, table="bench"),
        plugins=run_path(layout.TABLE, table="plugins"),
        models=run_path(layout.TABLE, table="models"),
        search=run_path(layout.TABLE, table="search"),
        runtime=run_path(layout.TABLE, table="runtime"),
        summary=run_path(layout.SUMMARY),
    params:
        name=config["name"],
        scale=config["scale"],
        benchmarks=run_path(layout.BENCHMARKS),  # globbed at run time: every job's benchmark file so far
        resources=config["resources"],
        # the recipe of each fine-tuned model and search result, by path (the headers do not name it)
        recipes={**{run_path(p): run.recipe for p, run in GRID.finetunes.items()},
                 **{run_path(c.chosen_path): c.recipe for c in GRID.searches.values()}},
    log: run_path(layout.STEP_LOG, stage="aggregate")
    localrule: True
    script: "../scripts/aggregate.py"
