# ToCom reproducibility pipeline. Stages live in workflow/rules/, one file each; the grid and
# every check live in the tocom package (tocom/experiments.py). Default config: the CPU run.
#   snakemake --cores all                                   # embedded CPU default
#   snakemake --cores all --configfile config/smoke.yaml    # CI smoke subset
#   snakemake --profile slurm --configfile config/paper.yaml
if not config:  # a --configfile replaces the default instead of being merged into it
    configfile: "config/cpu.yaml"

include: "workflow/rules/common.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        AGGREGATES,
        REPORT,
    default_target: True
