"""Concatenate the per-job result files into tidy tables and write a first summary.

Reads result CSVs only (never models or engines), so it reruns in a second on any machine.
"""
from pathlib import Path

import pandas as pd

sm = snakemake  # noqa: F821  (injected by Snakemake's `script:` directive)


# Header of each table when a config produces no rows of that kind, so every output stays readable.
COLUMNS = {
    "evals": ["dataset", "backbone", "method", "source_r", "target_r", "tocom", "variant", "s", "split", "seed",
              "top1", "n", "selected"],
    "transfers": ["dataset", "backbone", "method", "model", "target_r", "seed", "top1", "n"],
    "benches": ["model", "method", "r", "mode", "device", "threads", "batch_size", "repeats", "images_per_s",
                "images_per_s_std", "gflops", "speedup", "flops_ratio"],
}


def concat(kind):
    frames = [pd.read_csv(p) for p in sm.input[kind]]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS[kind])


evals, transfers, benches = concat("evals"), concat("transfers"), concat("benches")
for df, out in ((evals, sm.output.evals), (transfers, sm.output.transfers), (benches, sm.output.benches)):
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)

lines = [f"# Summary: `{sm.params.name}` run (scale: {sm.params.scale})", ""]
if sm.params.scale != "paper":
    lines += ["Numbers at this scale are not comparable with the paper's; they show the pipeline's behaviour.", ""]
if len(evals):
    test = evals[evals.split == "test"]
    plain = test[test.tocom == 0]
    tocom = test[(test.tocom == 1) & test.selected]
    keys = ["backbone", "method", "source_r", "target_r"]
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
    cols = [c for c in ("backbone", "model", "method", "mode", "r", "gflops", "images_per_s", "speedup", "flops_ratio")
            if c in benches]
    lines += ["## Throughput", "", benches[cols].to_markdown(index=False, floatfmt=".3f"), ""]
Path(sm.output.summary).write_text("\n".join(lines) + "\n")
