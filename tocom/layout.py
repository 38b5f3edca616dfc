"""The run layout: where every output of a run lives, written and parsed here only.

Why one module: a path used to be spelled in the grid, again in each rule's `output:`, and parsed back
by position in the aggregation script. Now each kind of output has one template below; the grid
fills it (`path`), the workflow's rules use it as their output pattern (`pattern`: the same template
with Snakemake's wildcard braces, `WILDCARDS` their constraints), a job's log and benchmark files are
named after its output (`log`, `benchmark`), and whoever reads results back recovers the fields from a
path (`parse`). Changing where something lives is a change to one line here.

Paths are relative to the run's folder, `results/<config name>/` (`run_dir`); figures go to
`figures/<config name>/` (`figure_dir`). Dataset names hold a "/" (vtab/cifar), so inside a path they
are written as keys (`dataset_key`: vtab__cifar). Torch-free: the Snakefile and the report import it.
"""
from __future__ import annotations

import re

from .settings import DENSE_METHODS, METHODS, SEARCHABLE, UNCOMPRESSED

# ---- the templates (relative to the run folder) --------------------------------------------------------
BACKBONE = "backbones/{backbone}.safetensors"
PLUGIN = "plugins/{backbone}/{method}/{variant}.safetensors"
# The plain model's outputs per distillation image and degree, computed once for the plugins of a backbone and
# method that share them (DistillSettings.teacher = "once").
TEACHER = "teachers/{backbone}/{method}.safetensors"
# A fine-tune at source r = 0 compresses nothing, so one model serves every method: it is filed under
# method UNCOMPRESSED ("none"), as are the searches it applies; its evaluations keep the method they
# evaluate.
FINETUNE = "finetune/{backbone}/{method}/{dataset}/r{source}_seed{seed}.safetensors"
SELECT = "select/{backbone}/{method}/{dataset}/r{source}_seed{seed}.safetensors"
ROLES = {"final": FINETUNE, "select": SELECT}     # a fine-tune's role -> where it lives
# What a step writes beside its output OUT: a training step (engine/common.py) its record OUT.json, its resume
# state OUT.resume/ and its lock OUT.lock; a scored search candidate (`tocom finetune --score-split`) OUT.score.json.
RECORD, RESUME, LOCK, SCORE = ".json", ".resume", ".lock", ".score.json"
TRAINING_SIBLINGS = (RECORD, RESUME, LOCK)
SEARCH = "search/{backbone}/{method}/{dataset}/seed{seed}/{candidate}.safetensors"
SEARCH_SCORE = SEARCH + SCORE
CHOSEN = "search/{backbone}/{method}/{dataset}/seed{seed}/chosen.json"
# The winning candidate's model, linked (`tocom link-chosen`): it stands in for a selection companion that would
# retrain it (trained on `train` at the search's source r with the chosen settings, same seed).
CHOSEN_MODEL = "search/{backbone}/{method}/{dataset}/seed{seed}/chosen.safetensors"
EVAL = "eval/{backbone}/{method}/{dataset}/r{source}_seed{seed}.csv"
TRANSFER = "transfer/{backbone}/{method}/{a}_to_{b}_r{high}_seed{seed}.csv"
BENCH = "bench/{backbone}/{method}_{mode}.csv"
SEGMENT = "segment/{backbone}/{dataset}/r{source}_seed{seed}.safetensors"
SEGMENT_EVAL = "segment_eval/{backbone}/{dataset}/r{source}_seed{seed}.csv"
TASKS = "tasks"                                   # generated tasks: one VTAB-1k folder per task below
TASK = TASKS + "/{task}"
TASK_LIST = TASK + "/{split_file}"                # a task's split lists (VTAB_SPLIT_FILES)
TABLE = "tables/{table}.csv"                      # the tidy tables the report reads
SUMMARY = "tables/summary.md"
REPORT_ITEM = "report/{item}{ext}"                # one file per report item and format (.md, .tex, .csv)
REPORT = "report.md"
LOGS, BENCHMARKS = "logs", "benchmarks"
LOG = LOGS + "/{stage}/{job}.log"                 # a job's log, named after its output (`log`)
STEP_LOG = LOGS + "/{stage}.log"                  # the log of a step that runs once per run (aggregate)
BENCHMARK = BENCHMARKS + "/{stage}/{job}.tsv"     # Snakemake's `benchmark:` files (wall-clock per job)
FIGURE = "{item}{ext}"                            # under figure_dir: .png and .pdf

#: The split lists of a task in the VTAB-1k layout (VPT/NOAH's release, and the tasks the workflow
#: generates, which the same loader reads).
VTAB_SPLIT_FILES = {"train": "train800.txt", "val": "val200.txt", "trainval": "train800val200.txt", "test": "test.txt"}
#: Datasets named <GENERATED_FAMILY>/<task> are written by the workflow itself (`tocom make-tasks`), under TASK.
GENERATED_FAMILY = "fmnist_vtab"

INTS = ("source", "seed", "high")
#: What a template's field may hold. Fields not listed take one path component.
FIELDS = {
    "method": "|".join(sorted((*METHODS, *DENSE_METHODS, UNCOMPRESSED), key=len, reverse=True)),
    **dict.fromkeys(INTS, r"\d+"),
    **dict.fromkeys(("a", "b"), r"[^/]+?"),
    "mode": r"[a-z]+",                            # bench modes (infer, train, plugin): no "_", so tome_ffn_infer parses
    "task": r"[a-z0-9_]+",
    "candidate": rf"(?:{'|'.join(SEARCHABLE)})[^/]*",   # search.candidate_label: never "chosen" (CHOSEN_MODEL)
    "ext": r"\.\w+",
}
_FIELD = re.compile(r"{(\w+)}")


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
    return _FIELD.findall(template)


def path(template: str, **fields) -> str:
    """The template filled in; `dataset`, `a` and `b` may be given as names (vtab/cifar) or keys."""
    missing = [f for f in fields_of(template) if f not in fields]
    if missing:
        raise KeyError(f"{template}: no value for {', '.join(missing)}")
    return pattern(template, **fields)


def pattern(template: str, prefix: str = "", **fields) -> str:
    """The template as a Snakemake pattern: the given fields filled in (dataset, a, b as names or keys), the
    others `{field}` wildcards; `prefix` (the run folder) goes in front."""
    for key in ("dataset", "a", "b"):
        if isinstance(fields.get(key), str):
            fields[key] = dataset_key(fields[key])
    out = _FIELD.sub(lambda m: str(fields[m[1]]) if m[1] in fields else m[0], template)
    return f"{prefix}/{out}" if prefix else out


def job(template: str, **fields) -> str:
    """A job's name in its log and benchmark files: its output's path below the top folder, "/" -> "_",
    without the extension (eval/deit_b/tome/cifar100/r0_seed0.csv -> deit_b_tome_cifar100_r0_seed0)."""
    below = re.sub(r"\.\w+$", "", template.split("/", 1)[1])
    return pattern(below.replace("/", "_"), **fields)


def log(stage: str, template: str, **fields) -> str:
    """The log of the `stage` job writing `template` (a pattern unless every field is given)."""
    return pattern(LOG, stage=stage, job=job(template, **fields))


def benchmark(stage: str, template: str, **fields) -> str:
    return pattern(BENCHMARK, stage=stage, job=job(template, **fields))


def constraints(*templates: str) -> dict[str, str]:
    """Snakemake `wildcard_constraints` for the fields of the templates."""
    return {f: FIELDS.get(f, r"[^/]+") for t in templates for f in fields_of(t)}


#: The constraints of every output's fields (the workflow's global `wildcard_constraints`).
WILDCARDS = constraints(BACKBONE, PLUGIN, TEACHER, FINETUNE, SEARCH, EVAL, TRANSFER, BENCH, SEGMENT, TASK)


def _regex(template: str) -> re.Pattern:
    parts = _FIELD.split(template)          # literal text and field names, alternating
    return re.compile("(?:^|/)" + "".join(f"(?P<{x}>{FIELDS.get(x, r'[^/]+')})" if i % 2 else re.escape(x)
                                          for i, x in enumerate(parts)) + "$")


def parse(template: str, file) -> dict:
    """The fields of `file` (a path ending in the template; anything before it is ignored): integers for
    source/seed/high, dataset names (not keys) for dataset/a/b. Raises ValueError when it does not fit."""
    m = _regex(template).search(str(file).replace("\\", "/"))
    if m is None:
        raise ValueError(f"{file} is not laid out as {template}")
    return {k: int(v) if k in INTS else dataset_name(v) if k in ("dataset", "a", "b") else v
            for k, v in m.groupdict().items()}
