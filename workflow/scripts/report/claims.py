"""The paper's claims in its text, each beside this run's number.

(a) Abstract: gains of up to 2.3 (CIFAR-100), 1.5 (FGVC mean) and 2.0 (VTAB-1k mean): our largest ToCom
    gain over the targets above the Fig. 5 source, on the CIFAR-100 role (the first `cifar_fgvc` dataset),
    the mean of the other `cifar_fgvc` datasets (the FGVC role) and the VTAB-1k mean.
(b) Sec. 5.2 / Fig. 5: average gains of 0.5 and 1.7 on CIFAR-100 + the 4 FGVC sets at targets 12 and 16
    (source 0): ours at the `degrees.inference` targets, on that mean and on the FGVC mean alone.
(c) Sec. 5.1: ToCom training takes 1.8 h on 8 V100s: the main plugin's distillation wall-clock from
    runtime.csv (the Snakemake benchmark file) and GPUs per job from `resources.distill.gpus`.
(d) no extra inference cost and (e) real-time degree switching: `tocom bench --plugin-check` rows of
    bench.csv (merged-plugin images/s against the plain model; `Compensation.switch` latency against
    one rank-k update). Absent rows are said to be absent, never estimated.
Reads tables/eval.csv, bench.csv, runtime.csv, plugins.csv and the paper's numbers only.
"""

import re
from pathlib import Path

import pandas as pd

from common.ctx import Ctx, present, run, select
from common.fmt import NOT_IN_GRID, r_pair, short
from common.stats import Stat, gain_of
from common.table import Table
from items import REFERENCES, Item
from tocom import layout

HPARAMS = Path(__file__).resolve().parents[3] / REFERENCES["paper_hparams"]
A = "(a) Abstract: up to +2.3 (CIFAR-100), +1.5 (FGVC), +2.0 (VTAB-1k)"
B = "(b) Sec. 5.2: mean gains +0.5, +1.7 on CIFAR-100 + FGVC at r = 12, 16"
C = "(c) Sec. 5.1: ToCom training takes 1.8 h on 8 V100s"
D = "(d) merged into the weights, ToCom adds no inference cost (images/s)"
E = "(e) the compression degree can be switched in real time (ms per switch)"


def paper_claim(ctx: Ctx, source: str, dataset: str, metric: str = "delta") -> float | None:
    """A number of the paper's text whatever r the reference file assigns it (the abstract states none)."""
    if ctx.paper is None:
        return None
    p, role = ctx.paper, ctx.role("main")
    rows = p[(p.source == source) & (p.dataset == dataset) & (p.metric == metric) & (p.tocom == "1")
             & (p.backbone == ctx.config["backbones"][role["backbone"]]["timm"]) & (p.method == role["method"])]
    return float(rows.value.iloc[0]) if len(rows) else None


def paper_training_cost() -> tuple[float | None, int | None]:
    """(hours, GPUs) of reference/paper_hparams.csv's `tocom_train_gpu_hours` ("1.8 h on 8xV100")."""
    if not HPARAMS.exists():
        return None, None
    hp = pd.read_csv(HPARAMS, dtype=str, keep_default_na=False)
    row = hp[hp.key == "tocom_train_gpu_hours"]
    m = re.match(r"\s*([\d.]+)\s*h\s+on\s+(\d+)", row.value.iloc[0]) if len(row) else None
    return (float(m[1]), int(m[2])) if m else (None, None)


def gains_by_target(ev, source, targets, variant, datasets) -> dict:
    """target -> (Stat of the mean gain over `datasets` per seed, plain rows, ToCom rows)."""
    out = {}
    for t in targets:
        base, comp = select(ev, source, t, None, datasets), select(ev, source, t, variant, datasets)
        g = gain_of(base, comp, datasets)
        if g.ok:
            out[t] = (g, base, comp)
    return out


def max_gains(ctx: Ctx, t: Table) -> list[str]:
    ev, variant = ctx.evals("main"), ctx.plugin("main")
    source = ctx.report["degrees"]["fig5_source"]
    cf = list(ctx.report["cifar_fgvc"])
    vtab = ctx.vtab_all()
    groups = [(f"CIFAR-100 role ({short(cf[0])})" if cf else "CIFAR-100 role", cf[:1], "cifar100"),
              ("FGVC role, mean of " + ", ".join(short(d) for d in cf[1:]), cf[1:], "fgvc/mean"),
              (f"VTAB-1k mean of the {len(present(vtab, ev))} tasks evaluated", vtab, "vtab/mean")]
    notes = []
    here = ev[ev.source_r == source]
    targets = sorted({int(x) for x in here.target_r if x > source})
    for label, datasets, paper_key in groups:
        have = present(datasets, here)
        gains = gains_by_target(ev, source, targets, variant, have) if have else {}
        if not gains:
            notes.append(f"(a) {label}: {NOT_IN_GRID} (no plain and ToCom results at source r = {source} with a "
                         "target above it).")
            continue
        best = max(gains, key=lambda x: gains[x][0].mean)
        g, base, comp = gains[best]
        row = f"{label}: max over targets, at {r_pair(source, best)}"
        t.put(A, row, "ours", g, paper_claim(ctx, "Abstract", paper_key), signed=True)
        t.test(A, row, base, comp)
        missing = [d for d in datasets if d not in have]
        if missing:
            notes.append(f"(a) {label}: datasets {NOT_IN_GRID}, left out: {', '.join(missing)}.")
    notes.append(f"(a) The maxima are over the targets {', '.join(map(str, targets)) or '—'} above source r = "
                 f"{source}, on test results, as the paper's \"up to\": optimistic by construction (a maximum "
                 "over settings); (b) gives the fixed settings.")
    return notes


def average_gains(ctx: Ctx, t: Table) -> list[str]:
    ev, variant = ctx.evals("main"), ctx.plugin("main")
    source = ctx.report["degrees"]["fig5_source"]
    cf = list(ctx.report["cifar_fgvc"])
    notes = []
    for target in ctx.report["degrees"]["inference"]["targets"]:
        for label, datasets, paper_key in (("CIFAR-100 + FGVC mean", cf, "cifar100+fgvc/mean"),
                                           ("FGVC mean", cf[1:], None)):
            have = present(datasets, ev[(ev.source_r == source) & (ev.target_r == target)])
            gains = gains_by_target(ev, source, [target], variant, have) if have else {}
            row = f"{label}, {r_pair(source, target)}"
            if not gains:
                notes.append(f"(b) {row}: {NOT_IN_GRID}.")
                continue
            g, base, comp = gains[target]
            paper = ctx.paper_value("Sec. 5.2 text", "main", paper_key, source, target, 1, "tocom", "delta") \
                if paper_key else None
            t.put(B, row, "ours", g, paper, signed=True)
            t.test(B, row, base, comp)
            if len(have) < len(datasets):
                notes.append(f"(b) {row}: over {', '.join(have)} only ({NOT_IN_GRID}: "
                             f"{', '.join(d for d in datasets if d not in have)}).")
    return notes


def training_cost(ctx: Ctx, t: Table) -> list[str]:
    rt, role = ctx.table("runtime"), ctx.role("main")
    gpus = int((ctx.config.get("resources", {}).get("distill") or {}).get("gpus", 0) or 0)
    hours, paper_gpus = paper_training_cost()
    if ctx.paper is None:
        hours = paper_gpus = None
    job = f"{role['backbone']}_{role['method']}_{ctx.plugin('main')}"
    rows = rt[(rt.rule == "distill")] if len(rt) else rt
    mine = rows[rows.job == job] if len(rows) else rows
    if mine.empty:
        return [f"(c) not measured in this run: no Snakemake benchmark file of the distillation "
                f"({layout.BENCHMARK.format(stage='distill', job=job)}) in {layout.TABLE.format(table='runtime')}."]
    h = float(mine.s.mean()) / 3600
    t.put(C, f"wall-clock (h), plugin `{job}`", "ours", Stat(h, n=1), hours, digits=3)
    t.put(C, "GPUs per job (resources.distill.gpus)", "ours", Stat(float(gpus), n=1),
          float(paper_gpus) if paper_gpus else None, digits=0)
    if gpus:
        t.put(C, "GPU-hours", "ours", Stat(h * gpus, n=1), hours * paper_gpus if hours and paper_gpus else None,
              digits=2)
    notes = []
    if len(rows) > 1:
        t.put(C, f"all {rows.job.nunique()} distillations: total wall-clock (h)", "ours",
              Stat(float(rows.groupby("job").s.mean().sum()) / 3600, n=1), digits=3)
    pl = ctx.table("plugins")
    settings = pl[(pl.backbone_key == role["backbone"]) & (pl.method == role["method"])
                  & (pl.variant == ctx.plugin("main"))] if len(pl) else pl
    what = ""
    if len(settings) and "settings.epochs" in settings:
        s = settings.iloc[0]
        what = (f" It distilled {int(s['settings.epochs'])} epoch(s) of {ctx.config['distill'].get('dataset')}"
                + (f" (at most {int(s['settings.limit'])} images)" if pd.notna(s.get("settings.limit")) else "")
                + f", batch {int(s['settings.batch_size'])}.")
    notes.append(f"(c) One measurement (Snakemake `benchmark:` wall-clock of the job, data loading included), "
                 + ("on CPU: resources.distill.gpus is 0." if not gpus else
                    "on this cluster's GPUs (their model is not recorded; the paper's are V100s).") + what)
    return notes


def plugin_costs(ctx: Ctx, t: Table) -> list[str]:
    pc, role = ctx.plugin_checks(), ctx.role("main")
    if len(pc) and "backbone_key" in pc:
        mine = pc[(pc.backbone_key == role["backbone"]) & (pc.method == role["method"])]
        pc = mine if len(mine) else pc
    notes = []
    merged = pc[pc.kind == "merged_throughput"] if len(pc) else pc
    if merged.empty:
        notes.append("(d) not measured in this run: bench.csv has no `tocom bench --plugin-check` "
                     "merged_throughput rows.")
    for r in (merged.sort_values("target_r") if len(merged) else merged).itertuples():
        row = f"r = {int(r.target_r)}, plugin move {r_pair(int(r.source_r), int(r.target_r))} merged"
        t.put(D, row, "ours", Stat(float(r.value), n=1))
        t.put(D, row, "reference", Stat(float(r.reference), n=1))
        t.put(D, row, "ours / reference", Stat(float(r.ratio), n=1), digits=3)
    switch = pc[pc.kind == "switch"] if len(pc) else pc
    if switch.empty:
        notes.append("(e) not measured in this run: bench.csv has no `tocom bench --plugin-check` switch rows.")
    order = [c for c in ("source_r", "target_r", "from_r") if c in switch]
    for r in (switch.sort_values(order) if len(switch) else switch).itertuples():
        move = r_pair(int(r.source_r), int(r.target_r))
        start = getattr(r, "from_r", None)      # the degree the timed switch leaves (source, or a neighbour)
        row = f"switch {r_pair(int(start), int(r.target_r))} (move {move}, rank {int(r.k)})" if pd.notna(start) \
            else f"switch {move} (rank {int(r.k)})"
        t.put(E, row, "ours", Stat(float(r.value), n=1), digits=3)
        t.put(E, row, "reference", Stat(float(r.reference), n=1), digits=3)
        t.put(E, row, "ours / reference", Stat(float(r.ratio), n=1), digits=2)
    checks = pd.concat([merged, switch])
    if len(checks):
        first = checks.iloc[0]
        notes.append(f"(d, e) `tocom bench --plugin-check` on {first.device} ({int(first.threads)} thread(s)), "
                     f"{first.model}, batch {int(first.batch_size)}, a random rank-{int(first.plugin_rank)} plugin, "
                     "medians over repeats. (d): reference = the plain model's images/s at the same r, ratio 1 = no "
                     "extra cost. (e): one `Compensation.switch` to the move's target, from the source (entering the "
                     "move) or from a neighbouring degree; reference = the floor, one rank-k update of each block's "
                     "W_q and W_v; ratio 1 = switching costs only that update. The paper gives no number for either "
                     "claim.")
    return notes


def make(ctx: Ctx, item: Item) -> None:
    t = Table(ctx, item, f"Each number the paper states in its text, beside this run's (role "
                         f"{ctx.role_label('main')}); gains are ToCom (s chosen on val) minus the same model "
                         "without it, test top-1 points.")
    notes = max_gains(ctx, t) + average_gains(ctx, t) + training_cost(ctx, t) + plugin_costs(ctx, t)
    t.notes += notes
    t.write()


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
