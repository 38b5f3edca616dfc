"""Concatenate the per-job result files into tidy tables and write a first summary.

Reads result files only (CSVs and safetensors headers, never models or engines), so it reruns in a
second on any machine. Two config backbones can share a timm name, so every table also gets the
config's `backbone_key`, parsed from the result file's path:
  eval/<backbone_key>/<method>/<dataset_key>/r<source>_seed<seed>.csv
  transfer/<backbone_key>/<method>/<a>_to_<b>_r<high>_seed<seed>.csv
  bench/<backbone_key>/<method>_<mode>.csv
  plugins/<backbone_key>/<method>/<variant>.safetensors   -> plugins.csv (size of each plugin)
  finetune/<backbone_key>/<method>/<dataset_key>/r<source>_seed<seed>.safetensors -> models.csv
"""
import json
import re
from math import prod
from pathlib import Path

import pandas as pd
from safetensors import safe_open

sm = snakemake  # noqa: F821  (injected by Snakemake's `script:` directive)


# Header of each table when a config produces no rows of that kind, so every output stays readable.
COLUMNS = {
    "evals": ["dataset", "backbone", "method", "source_r", "target_r", "tocom", "variant", "s", "split", "seed",
              "top1", "n", "selected", "backbone_key"],
    "transfers": ["dataset", "backbone", "method", "model", "target_r", "seed", "top1", "n", "backbone_key", "a",
                  "high_r"],
    "benches": ["model", "method", "r", "mode", "device", "threads", "batch_size", "repeats", "images_per_s",
                "images_per_s_std", "gflops", "speedup", "flops_ratio", "backbone_key"],
    "plugins": ["backbone_key", "backbone", "method", "variant", "kind", "loss", "rank", "r_max", "groups", "width",
                "depth", "train_scale", "params"],
    "models": ["backbone_key", "backbone", "method", "dataset", "source_r", "seed", "mode", "num_classes", "epochs"],
}
TRANSFER_NAME = re.compile(r"^(?P<a>.+?)_to_(?P<b>.+)_r(?P<high>\d+)_seed(?P<seed>\d+)\.csv$")


def read(kind, path):
    df = pd.read_csv(path)
    p = Path(path)
    if kind == "evals":
        df["backbone_key"] = p.parts[-4]
    elif kind == "transfers":
        m = TRANSFER_NAME.match(p.name)
        df["backbone_key"], df["a"], df["high_r"] = p.parts[-3], m["a"].replace("__", "/"), int(m["high"])
    else:
        df["backbone_key"] = p.parts[-2]
    return df


def concat(kind):
    frames = [read(kind, p) for p in sm.input[kind]]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS[kind])


def header(path):
    """(metadata, {tensor name: shape}) of a safetensors file, without loading any tensor."""
    with safe_open(path, framework="np") as f:
        return f.metadata() or {}, {k: f.get_slice(k).get_shape() for k in f.keys()}


def plugin_row(path):
    meta, shapes = header(path)
    extra = json.loads(meta.get("extra", "{}"))
    p = Path(path)
    return {"backbone_key": p.parts[-3], "backbone": meta.get("backbone"), "method": p.parts[-2], "variant": p.stem,
            "kind": meta.get("variant"), "loss": extra.get("loss"), "rank": int(meta["rank"]),
            "r_max": int(meta["r_max"]), "groups": shapes["A.q"][0] if "A.q" in shapes else None,
            "width": int(meta["width"]), "depth": int(meta["depth"]), "train_scale": extra.get("train_scale"),
            "params": sum(prod(s) for s in shapes.values())}


def model_row(path):
    meta = json.loads(header(path)[0].get("tocom", "{}"))
    p = Path(path)
    return {"backbone_key": p.parts[-4], "backbone": meta.get("backbone"), "method": p.parts[-3],
            "dataset": meta.get("dataset", p.parts[-2].replace("__", "/")),
            "source_r": int(re.match(r"r(\d+)_", p.name)[1]), "seed": int(re.search(r"seed(\d+)", p.name)[1]),
            "mode": meta.get("mode"), "num_classes": meta.get("num_classes"), "epochs": meta.get("epochs")}


evals, transfers, benches = concat("evals"), concat("transfers"), concat("benches")
plugins = pd.DataFrame([plugin_row(p) for p in sm.input.plugins], columns=COLUMNS["plugins"])
models = pd.DataFrame([model_row(p) for p in sm.input.models], columns=COLUMNS["models"])
for df, out in ((evals, sm.output.evals), (transfers, sm.output.transfers), (benches, sm.output.benches),
                (plugins, sm.output.plugins), (models, sm.output.models)):
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)

lines = [f"# Summary: `{sm.params.name}` run (scale: {sm.params.scale})", ""]
if sm.params.scale != "paper":
    lines += ["Numbers at this scale are not comparable with the paper's; they show the pipeline's behaviour.", ""]
if len(evals):
    test = evals[evals.split == "test"]
    plain = test[test.tocom == 0]
    tocom = test[(test.tocom == 1) & test.selected]
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
if len(benches):
    cols = [c for c in ("backbone_key", "model", "method", "mode", "r", "gflops", "images_per_s", "speedup",
                        "flops_ratio") if c in benches]
    lines += ["## Throughput", "", benches[cols].to_markdown(index=False, floatfmt=".3f"), ""]
Path(sm.output.summary).write_text("\n".join(lines) + "\n")
