# Stage 7: tidy results files and a first summary table. Reads result files only (CSVs, and the
# safetensors headers of the plugins and fine-tuned models for their sizes and class counts).


rule aggregate:
    input:
        evals=[f"{OUT}/{p}" for p in sorted(GRID.evals)],
        transfers=[f"{OUT}/{t.path}" for t in GRID.transfers],
        benches=[f"{OUT}/{b.path}" for b in GRID.benches],
        plugins=[f"{OUT}/{plugin_path(*p)}" for p in sorted(GRID.plugins)],
        models=[f"{OUT}/{p}" for p in sorted(GRID.finetunes)],
    output:
        evals=f"{OUT}/tables/eval.csv",
        transfers=f"{OUT}/tables/transfer.csv",
        benches=f"{OUT}/tables/bench.csv",
        plugins=f"{OUT}/tables/plugins.csv",
        models=f"{OUT}/tables/models.csv",
        summary=f"{OUT}/tables/summary.md",
    params:
        name=config["name"],
        scale=config["scale"],
    log:
        f"{LOGS}/aggregate.log",
    localrule: True
    script:
        "../scripts/aggregate.py"
