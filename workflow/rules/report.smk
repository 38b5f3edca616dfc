# Stage 8: every table and figure of the paper from the tidy tables, then one assembled report.
# One rule per item; each reads result tables (and the paper's numbers) only, never models.
# Which results feed which item is the config's `report` section (roles, dataset lists, degrees).
# The items' .md/.csv/.png are also flagged for Snakemake's own HTML report (after a finished run:
# `snakemake --report report.html` with the same --configfile): one category per paper section, one
# caption per item under workflow/report/ (paths relative to this file, as Snakemake resolves them).
from pathlib import Path

report: "../report/workflow.rst"

REPORT_DIR = f"{OUT}/report"
FIG_DIR = f"figures/{config['name']}"
TABLES = f"{OUT}/tables"
PAPER_NUMBERS = str(Path(workflow.basedir) / "reference" / "paper_results.csv")
PAPER_HPARAMS = str(Path(workflow.basedir) / "reference" / "paper_hparams.csv")
PROTOCOL = str(Path(workflow.basedir) / "docs" / "protocol.md")     # the documented differences (Table 13)
HELPERS = str(Path(workflow.basedir) / "workflow" / "scripts" / "report" / "common.py")   # rerun items when it changes
REPORT = f"{OUT}/report.md"


def _check_report(cfg):
    """Cross-checks the schema cannot express; one line, before any job runs."""
    rep = cfg["report"]
    for role in ("main", "evit", "idle", "small", "mae"):
        if rep.get(role) and rep[role]["backbone"] not in cfg["backbones"]:
            sys.exit(f"config error: report.{role}: backbone {rep[role]['backbone']!r} is not defined under "
                     "`backbones`")
        if rep.get(role) and rep[role].get("variant", "tocom") not in cfg["variants"]:
            sys.exit(f"config error: report.{role}: variant {rep[role]['variant']!r} is not defined under `variants`")
    for kind, names in rep.get("variants", {}).items():
        unknown = [v for v in names if v not in cfg["variants"]]
        if unknown:
            sys.exit(f"config error: report.variants.{kind}: {', '.join(unknown)} not defined under `variants`")


_check_report(config)


# Snakemake's HTML report: item stem -> (category, subcategory); every item needs workflow/report/<stem>.rst.
REPORT_ITEMS_HTML = {
    "claims": ("Claims", "Claims in the paper's text"),
    "claims_at_scale": ("Claims", "Claims at this scale (verdicts)"),
    "fig2_source_target": ("Motivation", "Fig. 2: source vs target r"),
    "fig3_throughput": ("Motivation", "Fig. 3: throughput"),
    "table1_transfer": ("Motivation", "Table 1: transfer across tasks"),
    "fig5_inference": ("Main results", "Fig. 5: inference-time acceleration"),
    "fig6_training": ("Main results", "Fig. 6: training-time acceleration"),
    "table2_vtab_natural_specialized": ("VTAB-1k", "Table 2: Natural and Specialized"),
    "table3_vtab_structured": ("VTAB-1k", "Table 3: Structured"),
    "table4_vtab_training": ("VTAB-1k", "Table 4: training-time acceleration"),
    "table5_ablation": ("Ablations", "Table 5: components"),
    "table6_scale": ("Ablations", "Table 6: training scale s"),
    "table7_rank": ("Ablations", "Table 7: LoRA rank h"),
    "fig7_evit": ("Other compression", "Fig. 7: EViT"),
    "table8_evit": ("Other compression", "Table 8: EViT"),
    "fig_idle": ("Other compression", "IdleViT figure"),
    "table_idle": ("Other compression", "IdleViT table"),
    "table9_deit_s": ("Other backbones", "Table 9: DeiT-S"),
    "table10_mae": ("Other backbones", "Table 10: MAE"),
    "table11_segmentation": ("Segmentation", "Table 11: Segmenter"),
    "table12_backbones": ("Set-up", "Table 12: backbones"),
    "table13_hparams": ("Set-up", "Table 13: hyper-parameters"),
    "table13_search": ("Set-up", "Table 13: searches"),
    "table14_datasets": ("Set-up", "Table 14: datasets"),
    "setup_degrees": ("Set-up", "Compression degrees"),
}
REPORT_FILE_KINDS = {"md": "table (Markdown)", "csv": "numbers (CSV)", "png": "figure (PNG)"}


def in_report(path, stem, ext):
    """An item's output, flagged for Snakemake's HTML report when it is a .md, .csv or .png."""
    if ext not in REPORT_FILE_KINDS:
        return path                         # .tex and .pdf: for the paper, not the HTML report
    category, subcategory = REPORT_ITEMS_HTML[stem]
    return report(path, caption=f"../report/{stem}.rst", category=category, subcategory=subcategory,
                  labels={"item": subcategory, "file": REPORT_FILE_KINDS[ext]})


def table_files(*stems):
    return [in_report(f"{REPORT_DIR}/{s}.{ext}", s, ext) for s in stems for ext in ("md", "tex", "csv")]


def figure_files(*stems):
    return [in_report(f"{REPORT_DIR}/{s}.{ext}", s, ext) for s in stems for ext in ("md", "csv")] + \
        [in_report(f"{FIG_DIR}/{s}.{ext}", s, ext) for s in stems for ext in ("png", "pdf")]


REPORT_PARAMS = dict(config=config, tables=TABLES, report_dir=REPORT_DIR, fig_dir=FIG_DIR)
EVAL, TRANSFER, BENCH = f"{TABLES}/eval.csv", f"{TABLES}/transfer.csv", f"{TABLES}/bench.csv"
PLUGINS, MODELS = f"{TABLES}/plugins.csv", f"{TABLES}/models.csv"
SEARCH, RUNTIME = f"{TABLES}/search.csv", f"{TABLES}/runtime.csv"


rule fig2_source_target:
    input: EVAL, reference=PAPER_NUMBERS, helpers=HELPERS
    output: figure_files("fig2_source_target")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/fig2_source_target.py"


rule fig3_throughput:
    input: BENCH, reference=PAPER_NUMBERS, helpers=HELPERS
    output: figure_files("fig3_throughput")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/fig3_throughput.py"


rule table1_transfer:
    input: TRANSFER, reference=PAPER_NUMBERS, helpers=HELPERS
    output: table_files("table1_transfer")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/table1_transfer.py"


rule fig5_inference:
    input: EVAL, reference=PAPER_NUMBERS, helpers=HELPERS
    output: figure_files("fig5_inference")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/fig5_inference.py"


rule table2_3_vtab_inference:
    input: EVAL, BENCH, reference=PAPER_NUMBERS, helpers=HELPERS
    output: table_files("table2_vtab_natural_specialized", "table3_vtab_structured")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/table2_3_vtab_inference.py"


rule fig6_training:
    input: EVAL, reference=PAPER_NUMBERS, helpers=HELPERS
    output: figure_files("fig6_training")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/fig6_training.py"


rule table4_vtab_training:
    input: EVAL, BENCH, reference=PAPER_NUMBERS, helpers=HELPERS
    output: table_files("table4_vtab_training")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/table4_vtab_training.py"


rule table5_ablation:
    input: EVAL, reference=PAPER_NUMBERS, helpers=HELPERS
    output: table_files("table5_ablation")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/table5_ablation.py"


rule table6_scale:
    input: EVAL, PLUGINS, reference=PAPER_NUMBERS, helpers=HELPERS
    output: table_files("table6_scale")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/table6_scale.py"


rule table7_rank:
    input: EVAL, PLUGINS, reference=PAPER_NUMBERS, helpers=HELPERS
    output: table_files("table7_rank")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/table7_rank.py"


rule fig7_table8_evit:
    input: EVAL, reference=PAPER_NUMBERS, helpers=HELPERS
    output: figure_files("fig7_evit") + table_files("table8_evit")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/fig7_table8_evit.py"


rule table_idle:
    input: EVAL, reference=PAPER_NUMBERS, helpers=HELPERS
    output: figure_files("fig_idle") + table_files("table_idle")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/table_idle.py"


rule table9_deit_s:
    input: EVAL, reference=PAPER_NUMBERS, helpers=HELPERS
    output: table_files("table9_deit_s")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/table9_deit_s.py"


rule table10_mae:
    input: EVAL, reference=PAPER_NUMBERS, helpers=HELPERS
    output: table_files("table10_mae")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/table10_mae.py"


rule table11_segmentation:
    input: SEGMENT_TABLE, reference=PAPER_NUMBERS, helpers=HELPERS
    output: table_files("table11_segmentation")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/table11_segmentation.py"


rule setup_tables:
    input: EVAL, PLUGINS, MODELS, SEARCH, hparams=PAPER_HPARAMS, protocol=PROTOCOL, helpers=HELPERS
    output: table_files("table12_backbones", "table13_hparams", "table13_search", "table14_datasets", "setup_degrees")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/setup_tables.py"


rule claims:
    input: EVAL, BENCH, RUNTIME, PLUGINS, reference=PAPER_NUMBERS, hparams=PAPER_HPARAMS, helpers=HELPERS
    output: table_files("claims")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/claims.py"


rule claims_at_scale:
    input: EVAL, TRANSFER, helpers=HELPERS
    output: table_files("claims_at_scale")
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/claims_at_scale.py"


REPORT_ITEMS = [rules.claims, rules.claims_at_scale, rules.fig2_source_target, rules.fig3_throughput,
                rules.table1_transfer, rules.fig5_inference, rules.table2_3_vtab_inference, rules.fig6_training, rules.table4_vtab_training,
                rules.table5_ablation, rules.table6_scale, rules.table7_rank, rules.fig7_table8_evit, rules.table_idle,
                rules.table9_deit_s, rules.table10_mae, rules.table11_segmentation, rules.setup_tables]


rule assemble_report:
    input: [f for item in REPORT_ITEMS for f in item.output if f.endswith(".md")], helpers=HELPERS
    output: REPORT
    params: **REPORT_PARAMS
    localrule: True
    script: "../scripts/report/assemble.py"
