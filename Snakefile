# ToCom reproducibility pipeline. Stages live in workflow/rules/, one file each; the grid and
# every check live in the tocom package (tocom/experiments.py), every output path in its run layout
# (tocom/layout.py). Default config: the CPU run.
#   snakemake --cores all                                   # embedded CPU default
#   snakemake --cores all --configfile config/smoke.yaml    # CI smoke subset
#   snakemake --profile slurm --configfile config/paper.yaml
import sys

from snakemake.utils import min_version

min_version("9.0")

try:
    import tocom  # noqa: F401  (the rules call into it)
except ModuleNotFoundError:
    sys.exit("config error: this Snakemake cannot import the tocom package; run the project's own "
             "(.venv/bin/snakemake) or `pip install -e .` into this Snakemake's environment")

# The CPU default applies unless a --configfile is given (which replaces it, never merges into it);
# --config key=value overrides on top of either, as in every Snakemake workflow.
if not workflow.config_settings.configfiles:
    configfile: "config/cpu.yaml"
elif "name" not in config:
    sys.exit(f"config error: {', '.join(map(str, workflow.config_settings.configfiles))} holds no pipeline "
             "config (empty?); start from config/cpu.yaml or config/paper.yaml")

include: "workflow/rules/common.smk"
include: "workflow/rules/tasks.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


rule all:
    input: AGGREGATES, SEGMENT_TABLE, REPORT
    default_target: True
