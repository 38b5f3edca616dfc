# Stage 9: every table and figure of the paper from the tidy tables, then one assembled report.
# The items are the registry workflow/scripts/report/items.py (one row per table or figure: its stem, title,
# script, the tables and reference files it reads, its section, and how Snakemake's HTML report files it);
# this file generates one rule per script from it. Each reads result tables (and the paper's numbers) only,
# never models. Which results feed which item is the config's `report` section (roles, dataset lists, degrees).
# The items' .md/.csv/.png are also flagged for Snakemake's own HTML report (after a finished run:
# `snakemake --report report.html` with the same --configfile).
import importlib.util
import sys
from pathlib import Path

from tocom import layout
from tocom.io import write_text

report: "../report/workflow.rst"

REPORT_SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts" / "report"


# items.py, loaded from its file (the scripts' folder is not a package of the Snakefile)
_spec = importlib.util.spec_from_file_location("tocom_report_items", REPORT_SCRIPTS / "items.py")
REPORT_ITEMS = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = REPORT_ITEMS          # dataclasses look their module up
_spec.loader.exec_module(REPORT_ITEMS)


def _check_report(cfg):
    """Cross-checks the schema cannot express; one line, before any job runs."""
    rep = cfg["report"]
    for role in REPORT_ITEMS.ROLES:
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

REPORT_RUN = layout.run_dir(config["name"])
REPORT_FIGURES = layout.figure_dir(config["name"])
REPORT = f"{REPORT_RUN}/{layout.REPORT}"
REPORT_PARAMS = dict(config=config, run_dir=REPORT_RUN, fig_dir=REPORT_FIGURES)
REPORT_REFERENCES = {key: str(Path(workflow.basedir) / path) for key, path in REPORT_ITEMS.REFERENCES.items()}
# Every item reruns when the code it shares (or the registry) changes, not only its own script.
REPORT_HELPERS = [str(p) for p in sorted((REPORT_SCRIPTS / "common").glob("*.py"))] + [str(REPORT_SCRIPTS / "items.py")]

# Snakemake's HTML report reads each caption from a file: they are written from the registry into this
# process's temporary folder (the report is rendered by the process that parsed this file).
REPORT_CAPTIONS = workflow.snakemake_tmp_dir / "report_captions"
if workflow.is_main_process:
    for _item in REPORT_ITEMS.ITEMS.values():
        write_text(_item.caption + "\n", REPORT_CAPTIONS / f"{_item.stem}.rst")
REPORT_FILE_KINDS = {".md": "table (Markdown)", ".csv": "numbers (CSV)", ".png": "figure (PNG)"}


def report_file(path, item, ext):
    """An item's output, flagged for Snakemake's HTML report when it is a .md, .csv or .png (.tex and .pdf
    are for the paper)."""
    if ext not in REPORT_FILE_KINDS:
        return path
    return report(path, caption=str(REPORT_CAPTIONS / f"{item.stem}.rst"), category=item.category,
                  subcategory=item.label, labels={"item": item.label, "file": REPORT_FILE_KINDS[ext]})


def report_item_path(item, ext):
    """Where an item's file goes: figures under figures/<name>/, the rest under the run's report/ (tocom.layout)."""
    if ext in item.figure_exts:
        return f"{REPORT_FIGURES}/{layout.FIGURE.format(item=item.stem, ext=ext)}"
    return f"{REPORT_RUN}/{layout.REPORT_ITEM.format(item=item.stem, ext=ext)}"


for _script, _items in REPORT_ITEMS.scripts().items():
    _tables, _refs = REPORT_ITEMS.inputs(_items)

    rule:
        name: _script
        input:
            *[f"{REPORT_RUN}/{layout.TABLE.format(table=t)}" for t in _tables],
            **{r: REPORT_REFERENCES[r] for r in _refs},
            helpers=REPORT_HELPERS,
        output: [report_file(report_item_path(i, ext), i, ext) for i in _items for ext in i.report_exts + i.figure_exts]
        params: **REPORT_PARAMS, script=_script
        log: f"{REPORT_RUN}/{layout.LOG.format(stage='report', job=_script)}"
        localrule: True
        script: "../scripts/report/{params.script}.py"     # read when the job runs: not the loop's variable


rule assemble_report:
    input: [report_item_path(item, ".md") for item in REPORT_ITEMS.ITEMS.values()], helpers=REPORT_HELPERS
    output: REPORT
    params: **REPORT_PARAMS
    log: f"{REPORT_RUN}/{layout.LOG.format(stage='report', job='assemble_report')}"
    localrule: True
    script: "../scripts/report/assemble.py"
