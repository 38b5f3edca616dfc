"""Concatenate the per-job result files into tidy tables and write a first summary.

Reads result files only (CSVs, JSON and safetensors headers, never models or engines), so it reruns in a
second on any machine. Two config backbones can share a timm name, so every table also gets the
config's `backbone_key`, parsed from the result file's path by the run layout (tocom/layout.py):
  layout.EVAL -> eval.csv, TRANSFER -> transfer.csv, BENCH -> bench.csv, PLUGIN -> plugins.csv,
  FINETUNE and SELECT -> models.csv, CHOSEN -> search.csv, and the Snakemake `benchmark:` files
  (BENCHMARK, globbed) -> runtime.csv.

eval.csv keeps the evaluator's `checkpoint` column ("final": the evaluated model; "select": its
companion trained without the selection split, rows on that split only). models.csv and plugins.csv
carry every setting the header records as flattened `settings.<field>` columns (what actually ran),
plus the training `split`. bench.csv holds both `tocom bench` tables: throughput rows (Fig. 3,
`kind` = "throughput") and `--plugin-check` rows (`kind` = merged_throughput / switch, see
tocom/engine/bench.py). A header that cannot be read stops the step with one line naming the file.
"""
import json
import sys
from math import prod
from pathlib import Path

import pandas as pd
from tocom import layout
from tocom.errors import TocomError
from tocom.io import header_json, read_safetensors_header, write_csv, write_text   # torch-free

sm = snakemake  # noqa: F821  (injected by Snakemake's `script:` directive)


# Header of each table when a config produces no rows of that kind, so every output stays readable.
THROUGHPUT = ["model", "method", "r", "mode", "device", "threads", "batch_size", "repeats", "images_per_s",
              "images_per_s_std", "gflops", "speedup", "flops_ratio"]
PLUGIN_CHECK = ["plugin_rank", "kind", "source_r", "target_r", "k", "value", "value_std", "reference",
                "reference_std", "ratio", "unit"]
COLUMNS = {
    "evals": ["dataset", "backbone", "method", "source_r", "target_r", "tocom", "variant", "s", "split", "seed",
              "top1", "n", "selected", "checkpoint", "backbone_key"],
    "transfers": ["dataset", "backbone", "method", "model", "target_r", "seed", "top1", "n", "backbone_key", "a",
                  "high_r"],
    "benches": THROUGHPUT + PLUGIN_CHECK + ["backbone_key"],
    "plugins": ["backbone_key", "backbone", "method", "variant", "kind", "loss", "rank", "r_max", "groups", "width",
                "depth", "train_scale", "params", "split"],
    "models": ["backbone_key", "backbone", "method", "dataset", "role", "recipe", "source_r", "seed", "mode",
               "num_classes", "epochs", "split", "params"],
    "search": ["backbone_key", "method", "dataset", "seed", "recipe", "candidate", "split", "top1", "chosen"],
    "runtime": ["rule", "job", "repeat", "s", "h", "max_rss", "cpu_time", "gpus", "device_hours"],
}
# Which `resources` entry of the config a rule's jobs ran with (for GPUs per job in runtime.csv).
RESOURCE_OF_RULE = {"pretrain": "pretrain", "distill": "distill", "finetune": "finetune", "select": "finetune",
                    "search": "finetune", "evaluate": "eval", "transfer": "eval", "bench": "bench"}
LOG = (getattr(sm, "log", None) or [None])[0]     # the tables written, or why it stopped (tests pass no log)
FIX = "re-run the step that wrote it (delete the file and rerun the workflow)"


def named(group, name, default=None):
    """An input, output or parameter of the rule that older callers (and the tests' stand-ins) may not pass."""
    try:
        return group[name]
    except (KeyError, AttributeError, IndexError):
        return default


def param(name, default=None):
    return named(sm.params, name, default)


def fail(path, why: str):
    """Stop with one line naming the file (`path` None: `why` names it already and ends in the fix)."""
    message = f"aggregate: {why}" if path is None else f"aggregate: {path}: {why}; {FIX}"
    if LOG:
        write_text(message + "\n", LOG)
    sys.exit(message)


def fields(template: str, path) -> dict:
    """The fields of a result file's path (layout.parse), or one line naming the file."""
    try:
        return layout.parse(template, path)
    except ValueError:
        fail(path, f"its path is not laid out as {template}")


def read(kind, path):
    df = pd.read_csv(path)
    if kind == "evals":
        df["backbone_key"] = fields(layout.EVAL, path)["backbone"]
        if "checkpoint" not in df:                  # written before the evaluator recorded it
            df["checkpoint"] = "final"
    elif kind == "transfers":
        f = fields(layout.TRANSFER, path)
        df["backbone_key"], df["a"], df["high_r"] = f["backbone"], f["a"], f["high"]
    else:
        df["backbone_key"] = fields(layout.BENCH, path)["backbone"]
        if "kind" not in df:                        # Fig. 3 throughput rows (plugin-check rows carry their kind)
            df["kind"] = "throughput"
    return df


def concat(kind):
    frames = [read(kind, p) for p in sm.input[kind]]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS[kind])
    if kind == "benches":       # one column order whichever kinds are present
        df = df.reindex(columns=[c for c in COLUMNS[kind] if c in df] + [c for c in df if c not in COLUMNS[kind]])
    return df


def or_fail(read, *args):
    """read(*args) of tocom.io (a safetensors header, a JSON object in it), or its error (which names the file
    and the fix) as one line."""
    try:
        return read(*args, FIX)
    except TocomError as e:
        fail(None, str(e))


def flat_settings(path, settings) -> dict:
    """{"settings.<field>": value}; lists as JSON text so a CSV cell holds them."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        fail(path, f"its header's 'settings' is a JSON {type(settings).__name__}, not an object")
    return {f"settings.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in settings.items()}


def as_int(path, meta, key):
    try:
        return int(meta[key])
    except KeyError:
        fail(path, f"its plugin header lacks '{key}'")
    except ValueError:
        fail(path, f"its plugin header has {key}={meta[key]!r}, not a whole number")


def plugin_row(path):
    meta, shapes = or_fail(read_safetensors_header, path)
    extra = or_fail(header_json, path, meta, "extra", "plugin header 'extra'") or {}
    settings = extra.get("settings")
    f = fields(layout.PLUGIN, path)
    row = {"backbone_key": f["backbone"], "backbone": meta.get("backbone"), "method": f["method"],
           "variant": f["variant"],
           "kind": meta.get("variant"), "loss": extra.get("loss", (settings or {}).get("loss")),
           "rank": as_int(path, meta, "rank"), "r_max": as_int(path, meta, "r_max"),
           "groups": shapes["A.q"][0] if "A.q" in shapes else None, "width": as_int(path, meta, "width"),
           "depth": as_int(path, meta, "depth"), "train_scale": extra.get("train_scale"),
           "params": sum(prod(s) for s in shapes.values()), "split": (settings or {}).get("split")}
    return {**row, **flat_settings(path, settings)}


def model_row(path, recipes: dict):
    meta, shapes = or_fail(read_safetensors_header, path)
    meta = or_fail(header_json, path, meta, "tocom", "model header 'tocom'") or {}
    for role, template in layout.ROLES.items():
        try:
            f = layout.parse(template, path)
            break
        except ValueError:
            continue
    else:
        fail(path, f"its path is not laid out as {' or '.join(layout.ROLES.values())}")
    row = {"backbone_key": f["backbone"], "backbone": meta.get("backbone"), "method": f["method"],
           "dataset": meta.get("dataset", f["dataset"]), "role": role, "recipe": recipes.get(str(path)),
           "source_r": f["source"], "seed": f["seed"], "mode": meta.get("mode"),
           "num_classes": meta.get("num_classes"), "epochs": meta.get("epochs"), "split": meta.get("split"),
           "params": sum(prod(s) for s in shapes.values())}
    return {**row, **flat_settings(path, meta.get("settings"))}


def search_rows(path, recipes: dict) -> list[dict]:
    """One row per candidate of a search result (tocom/search.py's chosen.json)."""
    try:
        data = json.loads(Path(path).read_text())
        chosen, candidates = data["chosen"], data["candidates"]
        if not isinstance(chosen, dict) or not isinstance(candidates, list):
            raise TypeError
    except ValueError as e:
        fail(path, f"not valid JSON ({e})")
    except (KeyError, TypeError):
        fail(path, "not a search result (needs 'chosen' and a 'candidates' list)")
    f = fields(layout.CHOSEN, path)
    key = {"backbone_key": f["backbone"], "method": f["method"], "dataset": f["dataset"], "seed": f["seed"],
           "recipe": recipes.get(str(path)), "split": data.get("split")}
    searched = list(dict.fromkeys([*chosen, *(k for c in candidates for k in c if k not in ("path", "top1"))]))
    rows = []
    for c in candidates:
        values = {k: c.get(k, chosen.get(k)) for k in searched}
        try:
            name = layout.parse(layout.SEARCH_SCORE, c.get("path", ""))["candidate"]
        except ValueError:
            name = ""
        rows.append({**key, "candidate": name, **values, "top1": c.get("top1"),
                     "chosen": all(values[k] == chosen[k] for k in chosen)})
    return rows


def runtime_rows(folder, resources: dict) -> list[dict]:
    """Every Snakemake benchmark file under the run's benchmark folder (layout.BENCHMARK)."""
    rows = []
    for tsv in sorted(Path(folder).glob("**/*.tsv")) if folder and Path(folder).is_dir() else []:
        f = fields(layout.BENCHMARK, tsv)
        rule = f["stage"]
        try:
            df = pd.read_csv(tsv, sep="\t")
            seconds = df["s"]
        except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError):
            fail(tsv, "not a Snakemake benchmark file (tab-separated, with an 's' column)")
        gpus = int((resources.get(RESOURCE_OF_RULE.get(rule, rule)) or {}).get("gpus", 0) or 0)
        for i, rec in enumerate(df.to_dict("records")):
            s = pd.to_numeric(rec.get("s"), errors="coerce")
            rows.append({"rule": rule, "job": f["job"], "repeat": i, "s": s, "h": s / 3600,
                         "max_rss": pd.to_numeric(rec.get("max_rss"), errors="coerce"),
                         "cpu_time": pd.to_numeric(rec.get("cpu_time"), errors="coerce"),
                         "gpus": gpus, "device_hours": s / 3600 * max(gpus, 1)})
    return rows


def frame(recs, kind):
    extra = list(dict.fromkeys(k for r in recs for k in r if k not in COLUMNS[kind]))
    return pd.DataFrame(recs, columns=COLUMNS[kind] + extra)


recipes = param("recipes", {}) or {}
evals, transfers, benches = concat("evals"), concat("transfers"), concat("benches")
plugins = frame([plugin_row(p) for p in sm.input.plugins], "plugins")
models = frame([model_row(p, recipes) for p in sm.input.models], "models")
search = frame([r for p in named(sm.input, "chosen", []) for r in search_rows(p, recipes)], "search")
search = search[[c for c in search if c not in ("top1", "chosen")] + ["top1", "chosen"]]   # settings, then score
runtime = pd.DataFrame(runtime_rows(param("benchmarks"), param("resources", {}) or {}), columns=COLUMNS["runtime"])
outputs = [(evals, "evals"), (transfers, "transfers"), (benches, "benches"), (plugins, "plugins"),
           (models, "models"), (search, "search"), (runtime, "runtime")]
for df, name in outputs:
    if named(sm.output, name):
        write_csv(df, named(sm.output, name))

lines = [f"# Summary: `{sm.params.name}` run (scale: {sm.params.scale})", ""]
if sm.params.scale != "paper":
    lines += ["Numbers at this scale are not comparable with the paper's; they show the pipeline's behaviour.", ""]
if len(evals):
    test = evals[(evals.split == "test") & (evals.checkpoint == "final")]
    plain = test[test.tocom == 0]
    tocom = test[(test.tocom == 1) & test.selected.astype(str).str.lower().eq("true")]
    keys = ["backbone_key", "method", "source_r", "target_r"]
    table = plain.groupby(keys).top1.mean().rename("plain").to_frame()
    for variant, group in tocom.groupby("variant"):
        table[f"+{variant}"] = group.groupby(keys).top1.mean()
    table = table.reset_index()
    for col in [c for c in table.columns if c.startswith("+")]:
        table[f"Δ{col[1:]}"] = table[col] - table["plain"]
    lines += ["## Mean test top-1 over datasets (s chosen on val)", "", table.to_markdown(index=False, floatfmt=".2f"), ""]
if len(transfers):
    lines += ["## Task-arithmetic transfer (Table 1)", "",
              transfers.pivot_table(index="dataset", columns="model", values="top1").to_markdown(floatfmt=".2f"), ""]
throughput = benches[benches["kind"].fillna("throughput") == "throughput"] if len(benches) else benches
if len(throughput):
    cols = [c for c in ("backbone_key", "model", "method", "mode", "r", "gflops", "images_per_s", "speedup",
                        "flops_ratio") if c in throughput]
    lines += ["## Throughput", "", throughput[cols].to_markdown(index=False, floatfmt=".3f"), ""]
if len(search):
    settings = [c for c in search if c not in COLUMNS["search"]]
    best = search[search.chosen]
    lines += ["## Hyper-parameter searches (chosen on val)", "",
              best[["backbone_key", "dataset", "seed", *settings, "top1"]].to_markdown(index=False), ""]
if len(runtime):
    per_rule = runtime.groupby("rule").agg(jobs=("job", "nunique"), hours=("h", "sum"),
                                           device_hours=("device_hours", "sum"), max_rss_mb=("max_rss", "max"))
    per_rule["jobs"] = per_rule.jobs.astype(str)
    lines += ["## Wall-clock per rule (Snakemake benchmark files)", "", per_rule.to_markdown(floatfmt=".3f"), ""]
write_text("\n".join(lines) + "\n", sm.output.summary)
if LOG:
    write_text("".join(f"{named(sm.output, name)}: {len(df)} rows\n" for df, name in outputs
                       if named(sm.output, name)) + f"{sm.output.summary}: the summary\n", LOG)
