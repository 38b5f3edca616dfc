"""The run layout: where every output of a run lives, written and parsed here only.

Why one module: a path used to be spelled in the grid, again in each rule's `output:`, and parsed back
by position in the aggregation script. Now each kind of output has one template below; the grid
fills it (`path`), the workflow's rules use it as their output pattern (`pattern`: the same template
with Snakemake's wildcard braces), and whoever reads results back recovers the fields from a path
(`parse`). Changing where something lives is a change to one line here.

Paths are relative to the run's folder, `results/<config name>/` (`run_dir`); figures go to
`figures/<config name>/` (`figure_dir`). Dataset names hold a "/" (vtab/cifar), so inside a path they
are written as keys (`dataset_key`: vtab__cifar). Torch-free: the Snakefile and the report import it.
"""
from __future__ import annotations

import re

from .settings import DENSE_METHODS, METHODS, UNCOMPRESSED

# ---- the templates (relative to the run folder) --------------------------------------------------------
BACKBONE = "backbones/{backbone}.safetensors"
PLUGIN = "plugins/{backbone}/{method}/{variant}.safetensors"
# A fine-tune at source r = 0 compresses nothing, so one model serves every method: it is filed under
# method UNCOMPRESSED ("none"), as are the searches it applies; its evaluations keep the method they
# evaluate.
FINETUNE = "finetune/{backbone}/{method}/{dataset}/r{source}_seed{seed}.safetensors"
SELECT = "select/{backbone}/{method}/{dataset}/r{source}_seed{seed}.safetensors"
SEARCH = "search/{backbone}/{method}/{dataset}/seed{seed}/{candidate}.safetensors"
SEARCH_SCORE = SEARCH + ".score.json"
CHOSEN = "search/{backbone}/{method}/{dataset}/seed{seed}/chosen.json"
EVAL = "eval/{backbone}/{method}/{dataset}/r{source}_seed{seed}.csv"
TRANSFER = "transfer/{backbone}/{method}/{a}_to_{b}_r{high}_seed{seed}.csv"
BENCH = "bench/{backbone}/{method}_{mode}.csv"
SEGMENT = "segment/{backbone}/{dataset}/r{source}_seed{seed}.safetensors"
SEGMENT_EVAL = "segment_eval/{backbone}/{dataset}/r{source}_seed{seed}.csv"
TASKS = "tasks"                                   # generated tasks: one VTAB-1k folder per task below
TASK = "tasks/{task}"
TABLE = "tables/{table}.csv"                      # the tidy tables the report reads
SUMMARY = "tables/summary.md"
REPORT_ITEM = "report/{item}{ext}"                # one file per report item and format (.md, .tex, .csv)
REPORT = "report.md"
LOG = "logs/{stage}/{job}.log"
BENCHMARK = "benchmarks/{stage}/{job}.tsv"       # Snakemake's `benchmark:` files (wall-clock per job)
FIGURE = "{item}{ext}"                            # under figure_dir: .png and .pdf

#: What a template's field may hold. Fields not listed take one path component.
FIELDS = {
    "method": "|".join(sorted((*METHODS, *DENSE_METHODS, UNCOMPRESSED), key=len, reverse=True)),
    "source": r"\d+",
    "seed": r"\d+",
    "high": r"\d+",
    "a": r"[^/]+?",
    "b": r"[^/]+?",
    "ext": r"\.\w+",
    "stage": r"[^/]+",
    "job": r"[^/]+",
}
INTS = ("source", "seed", "high")


def run_dir(name: str) -> str:
    return f"results/{name}"


def figure_dir(name: str) -> str:
    return f"figures/{name}"


def dataset_key(name: str) -> str:
    """File-name form of a dataset name: vtab/cifar -> vtab__cifar."""
    return name.replace("/", "__")


def dataset_name(key: str) -> str:
    return key.replace("__", "/")


def fields_of(template: str) -> list[str]:
    return re.findall(r"{(\w+)}", template)


def path(template: str, **fields) -> str:
    """The template filled in; `dataset`, `a` and `b` may be given as names (vtab/cifar) or keys."""
    for key in ("dataset", "a", "b"):
        if key in fields and isinstance(fields[key], str):
            fields[key] = dataset_key(fields[key])
    return template.format(**fields)


def pattern(template: str, prefix: str = "") -> str:
    """The template as a Snakemake output pattern: `{field}` stays a wildcard; `prefix` (the run folder)
    goes in front."""
    return f"{prefix}/{template}" if prefix else template


def constraints(template: str) -> dict[str, str]:
    """Snakemake `wildcard_constraints` for the fields of a template."""
    return {f: FIELDS.get(f, r"[^/]+") for f in fields_of(template)}


def _regex(template: str) -> re.Pattern:
    out, last = [], 0
    for m in re.finditer(r"{(\w+)}", template):
        out.append(re.escape(template[last:m.start()]))
        out.append(f"(?P<{m[1]}>{FIELDS.get(m[1], r'[^/]+')})")
        last = m.end()
    out.append(re.escape(template[last:]))
    return re.compile("(?:^|/)" + "".join(out) + "$")


def parse(template: str, file: str) -> dict:
    """The fields of `file` (a path ending in the template; anything before it is ignored): integers for
    source/seed/high, dataset names (not keys) for dataset/a/b. Raises ValueError when it does not fit."""
    m = _regex(template).search(str(file).replace("\\", "/"))
    if m is None:
        raise ValueError(f"{file} is not laid out as {template}")
    out = m.groupdict()
    for key in INTS:
        if key in out:
            out[key] = int(out[key])
    for key in ("dataset", "a", "b"):
        if key in out:
            out[key] = dataset_name(out[key])
    return out
