"""The report's items: one row per table or figure, in the order of the assembled report.

Each item is written here once: its stem (the name of its files), its title, the script that makes it (and
the function there, when a script makes several), the tidy tables and reference files it reads, and how
Snakemake's HTML report files it (category, label, caption). From this table workflow/rules/report.smk
generates one rule per script (inputs, outputs, captions), assemble.py takes the sections, and each script
gets its items' stems and titles (`make(ctx, item)`).

Plain Python, no imports beyond the standard library: the Snakefile loads it in every job.
"""
from __future__ import annotations

from dataclasses import dataclass

TABLE, FIGURE = "table", "figure"

#: The reference files an item may read (paths relative to the repository), by input name.
REFERENCES = {"paper_results": "reference/paper_results.csv",     # the paper's numbers
              "paper_hparams": "reference/paper_hparams.csv",     # the paper's Table 13 and Sec. 5.1 settings
              "protocol": "docs/protocol.md"}                     # the documented differences (Table 13)

#: The config's `report` roles and their names in the report.
ROLES = {"main": "main", "evit": "EViT", "idle": "IdleViT", "small": "DeiT-S role", "mae": "MAE role"}


@dataclass(frozen=True)
class Item:
    stem: str
    title: str
    kind: str                              # TABLE: .md, .tex, .csv; FIGURE: .md, .csv and a .png, .pdf
    tables: tuple[str, ...]                # the tidy tables it reads (results/<name>/tables/<table>.csv)
    category: str                          # Snakemake's HTML report: the category ...
    caption: str                           # ... and the caption (reStructuredText) it files the item under
    label: str = ""                        # its name there (subcategory); default: the title
    refs: tuple[str, ...] = ("paper_results",)    # keys of REFERENCES
    script: str = ""                       # the script (and rule) that makes it; default: the stem
    make: str = "make"                     # the function of the script that makes it: make(ctx, item)

    def __post_init__(self):
        object.__setattr__(self, "script", self.script or self.stem)
        object.__setattr__(self, "label", self.label or self.title)
        assert self.kind in (TABLE, FIGURE) and set(self.refs) <= set(REFERENCES), self

    @property
    def report_exts(self) -> tuple[str, ...]:
        """Its files under results/<name>/report/."""
        return (".md", ".tex", ".csv") if self.kind == TABLE else (".md", ".csv")

    @property
    def figure_exts(self) -> tuple[str, ...]:
        """Its files under figures/<name>/."""
        return (".png", ".pdf") if self.kind == FIGURE else ()


SETUP = "Set-up"
OTHER_COMPRESSION = "Other compression"

VERDICTS = Item(       # also quoted in the README (workflow/scripts/readme_results.py)
    "claims_at_scale", "Claims at this scale: does each qualitative claim hold in this run?", TABLE,
    ("eval", "transfer"), "Claims",
    "Each qualitative claim of the paper (mismatch drop, ToCom gains, larger gain for larger gaps, transfer, "
    "ablation ordering, insensitivity to h and s, EViT and IdleViT) tested on this run: effect ± 95 % interval "
    "over (dataset, seed) pairs, Wilcoxon signed-rank p, and a verdict (holds / does not hold / not significant / "
    "not in this run). The rules are stated in the item.",
    label="Claims at this scale (verdicts)", refs=())

#: (section title, its items), in the order of the assembled report.
SECTIONS = (
    ("The paper's claims: in its text, and at this scale", (
        Item("claims", "The paper's claims in its text, beside this run", TABLE,
             ("eval", "bench", "runtime", "plugins", "models"), "Claims",
             "Each number the paper states in its text (abstract maxima, Sec. 5.2 mean gains, training cost, no "
             "extra inference cost, real-time switching) beside this run's value, and its qualitative claims (ToCom "
             "matches source = target, smaller gains going down, CLS loss, EViT on Structured, LoRA ≈ 0.1 % of the "
             "parameters) with a verdict. Scale ``paper`` only: the paper's number and ours − paper.",
             label="Claims in the paper's text", refs=("paper_results", "paper_hparams")),
        VERDICTS,
    )),
    ("3 Motivation: the mismatch, its cost, and its transferability", (
        Item("fig2_source_target", "Fig. 2: accuracy vs target r for each source r (no ToCom)", FIGURE, ("eval",),
             "Motivation",
             "Fig. 2: test top-1 of models fine-tuned at each source r, evaluated at every target r (CIFAR-100 and "
             "FGVC roles). Accuracy is best where source = target.",
             label="Fig. 2: source vs target r"),
        Item("fig3_throughput", "Fig. 3: training and inference throughput vs r", FIGURE, ("bench",), "Motivation",
             "Fig. 3: measured inference and training throughput and speed-up over r = 0 per compression degree r.",
             label="Fig. 3: throughput"),
        Item("table1_transfer", "Table 1: task-arithmetic transfer of the source-degree gap", TABLE, ("transfer",),
             "Motivation",
             "Table 1: is the source-degree gap transferable across tasks? M_0^B against M_high^A − M_0^A + M_0^B "
             "on D_B at the target r; Δ and a paired test over (dataset, seed).",
             label="Table 1: transfer across tasks"),
    )),
    ("5.2 Inference-time acceleration of off-the-shelf models", (
        Item("fig5_inference", "Fig. 5: ToCom on off-the-shelf models, source r below target r", FIGURE, ("eval",),
             "Main results",
             "Fig. 5: off-the-shelf models fine-tuned at a low source r, evaluated at higher target r, plain and with "
             "ToCom (s chosen on val); source = target as reference.",
             label="Fig. 5: inference-time acceleration"),
        Item("table2_vtab_natural_specialized", "Table 2: VTAB-1k Natural and Specialized, source r below target r",
             TABLE, ("eval", "bench"), "VTAB-1k",
             "Table 2: VTAB-1k Natural and Specialized per task and group mean, source r below target r, plain and "
             "with ToCom; Δ and paired tests over (dataset, seed).",
             label="Table 2: Natural and Specialized", script="table2_3_vtab_inference", make="natural_specialized"),
        Item("table3_vtab_structured", "Table 3: VTAB-1k Structured, source r below target r", TABLE,
             ("eval", "bench"), "VTAB-1k",
             "Table 3: VTAB-1k Structured per task and group mean, source r below target r, plain and with ToCom.",
             label="Table 3: Structured", script="table2_3_vtab_inference", make="structured"),
    )),
    ("5.3 Training-time acceleration", (
        Item("fig6_training", "Fig. 6: ToCom on models trained with compression, target r below source r", FIGURE,
             ("eval",), "Main results",
             "Fig. 6: models fine-tuned at a high source r (faster training), evaluated at lower target r, plain "
             "and with ToCom.",
             label="Fig. 6: training-time acceleration"),
        Item("table4_vtab_training", "Table 4: VTAB-1k, target r below source r (training-time acceleration)", TABLE,
             ("eval", "bench"), "VTAB-1k",
             "Table 4: VTAB-1k group means for training-time acceleration (source r above target r), plain and "
             "with ToCom.",
             label="Table 4: training-time acceleration"),
    )),
    ("5.4 Ablation study", (
        Item("table5_ablation", "Table 5: ablation of ToCom's components", TABLE, ("eval",), "Ablations",
             "Table 5: ablations of ToCom (shared LoRA, CLS loss, no inversion) on the VTAB-1k mean at the ablation "
             "degree pairs.",
             label="Table 5: components"),
        Item("table6_scale", "Table 6: training scale s of ToCom", TABLE, ("eval", "plugins"), "Ablations",
             "Table 6: the LoRA scale s used to train ToCom, on the VTAB-1k mean at the ablation degree pairs; the "
             "inference s chosen on val.",
             label="Table 6: training scale s"),
        Item("table7_rank", "Table 7: LoRA rank h of ToCom", TABLE, ("eval", "plugins"), "Ablations",
             "Table 7: the LoRA rank h of ToCom, on the VTAB-1k mean at the ablation degree pairs, with each "
             "plugin's parameter count.",
             label="Table 7: LoRA rank h"),
    )),
    ("5.5 Other token compression methods", (
        Item("fig7_evit", "Fig. 7: ToCom on EViT, source r below target r", FIGURE, ("eval",), OTHER_COMPRESSION,
             "Fig. 7: ToCom on EViT (token pruning), source r below target r, CIFAR-100 and FGVC roles.",
             label="Fig. 7: EViT", script="fig7_table8_evit", make="figure"),
        Item("table8_evit", "Table 8: ToCom on EViT, VTAB-1k", TABLE, ("eval",), OTHER_COMPRESSION,
             "Table 8: ToCom on EViT, VTAB-1k group means.",
             label="Table 8: EViT", script="fig7_table8_evit", make="table"),
        Item("fig_idle", "IdleViT figure (not in the paper): source r below target r", FIGURE, ("eval",),
             OTHER_COMPRESSION, "IdleViT in the form of Fig. 7 (not in the paper).",
             label="IdleViT figure", script="table_idle", make="figure"),
        Item("table_idle", "IdleViT table (not in the paper): VTAB-1k", TABLE, ("eval",), OTHER_COMPRESSION,
             "IdleViT in the form of Table 8 (not in the paper).",
             label="IdleViT table", make="table"),
    )),
    ("5.6 Other backbones", (
        Item("table9_deit_s", "Table 9: ToCom on a smaller backbone (DeiT-S role), VTAB-1k", TABLE, ("eval",),
             "Other backbones", "Table 9: ToCom on the DeiT-S role, VTAB-1k group means.",
             label="Table 9: DeiT-S"),
        Item("table10_mae", "Table 10: ToCom on a self-supervised backbone (MAE role), VTAB-1k", TABLE, ("eval",),
             "Other backbones",
             "Table 10: ToCom on the MAE role (feature-distilled plugin), VTAB-1k group means.",
             label="Table 10: MAE"),
    )),
    ("Appendix: dense prediction", (
        Item("table11_segmentation",
             "Table 11: ToCom on semantic segmentation (Segmenter, tokens merged before each FFN)", TABLE,
             ("segment",), "Segmentation",
             "Table 11: Segmenter, mIoU and GFLOPs at each target r, plain and with ToCom.",
             label="Table 11: Segmenter"),
    )),
    ("Appendix: set-up of this run", (
        Item("table12_backbones", "Table 12: backbones", TABLE, ("plugins",), SETUP,
             "Table 12: the backbones of this run.",
             refs=(), script="setup_tables", make="backbones"),
        Item("table13_hparams", "Table 13: hyper-parameters, ours beside the paper's", TABLE,
             ("plugins", "models", "search"), SETUP,
             "Table 13: the hyper-parameters that ran (read from the result headers) beside the paper's; "
             "differences marked.",
             label="Table 13: hyper-parameters", refs=("paper_hparams", "protocol"), script="setup_tables",
             make="hparams"),
        Item("table13_search", "Table 13 (searches): hyper-parameters chosen on held-out data", TABLE, ("search",),
             SETUP,
             "Table 13 (searches): each hyper-parameter search of this run, its grid and the value chosen on val.",
             label="Table 13: searches", refs=("paper_hparams",), script="setup_tables", make="searches"),
        Item("table14_datasets", "Table 14: datasets", TABLE, ("models", "eval"), SETUP,
             "Table 14: the datasets of this run, their roles and split sizes.",
             refs=(), script="setup_tables", make="datasets"),
        Item("setup_degrees", "Compression degrees: paper vs this run", TABLE, (), SETUP,
             "The compression degrees r of this run and how they map onto the paper's.",
             label="Compression degrees", refs=(), script="setup_tables", make="degrees"),
    )),
)

ITEMS = {item.stem: item for _, items in SECTIONS for item in items}


def scripts() -> dict[str, list[Item]]:
    """Each script and the items it makes, in report order."""
    out: dict[str, list[Item]] = {}
    for item in ITEMS.values():
        out.setdefault(item.script, []).append(item)
    return out


def inputs(items) -> tuple[list[str], list[str]]:
    """The tidy tables and the reference files (keys of REFERENCES) a group of items reads, each once."""
    tables = list(dict.fromkeys(t for item in items for t in item.tables))
    refs = list(dict.fromkeys(r for item in items for r in item.refs))
    return tables, refs
