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
Then the text's qualitative claims, each with a verdict under claims_at_scale.py's rules (Holm over (g)-(i); paired
tests over (dataset, seed)):
(f) Sec. 5.2: with ToCom the off-the-shelf model (Fig. 5 source) matches the model fine-tuned at source = target
    (ToCom at source → t minus plain t → t is not significantly negative, and above −INSENSITIVE_MAX);
(g) Sec. 5.3: ToCom's gain is smaller when target < source (high → low) than when target > source (low → high);
(h) Sec. 5.4: the CLS-loss plugin is comparable to ToCom where target > source (the ablation pairs going up) and
    worse only where target < source (16 → 0);
(i) Sec. 5.5: EViT is far worse than ToMe on VTAB-1k's Structured group (plain, at `degrees.other`);
(j) Sec. 4.1: the LoRA modules of one degree step are about 0.1 % of the model's parameters (plugins.csv's
    parameters per group against the main role's fine-tuned model in models.csv).
Reads tables/eval.csv, bench.csv, runtime.csv, plugins.csv, models.csv and the paper's numbers only.
"""

import math
import re
from pathlib import Path

import pandas as pd

from claims_at_scale import (ABSENT, FAILS, HOLDS, INSENSITIVE_MAX, MIN_PAIRS, NS, Claim, averaged_over_pairs,
                             directional, frame, insensitive, judge_all)
from common.builders import variant_settings
from common.ctx import GROUPS, Ctx, present, run, select
from common.fmt import NOT_IN_GRID, fmt, fmt_p, latex, markdown_table, r_pair, short
from common.stats import ALPHA, PAIRING, Stat, gain_of, pair_diffs, pair_test
from common.table import CSV_COLUMNS, Table
from items import REFERENCES, Item
from tocom import layout
from tocom.io import write_csv, write_text

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
    ev, variant, source = ctx.evals("main"), ctx.plugin("main"), ctx.report["degrees"]["fig5_source"]
    cf, vtab = list(ctx.report["cifar_fgvc"]), ctx.vtab_all()
    groups = [(f"CIFAR-100 role ({short(cf[0])})" if cf else "CIFAR-100 role", cf[:1], "cifar100"),
              ("FGVC role, mean of " + ", ".join(short(d) for d in cf[1:]), cf[1:], "fgvc/mean"),
              (f"VTAB-1k mean of the {len(present(vtab, ev))} tasks evaluated", vtab, "vtab/mean")]
    notes, here = [], ev[ev.source_r == source]
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
    ev, variant, source = ctx.evals("main"), ctx.plugin("main"), ctx.report["degrees"]["fig5_source"]
    cf, notes = list(ctx.report["cifar_fgvc"]), []
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
    hours, paper_gpus = paper_training_cost() if ctx.paper is not None else (None, None)
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
    return ["(c) One measurement (Snakemake `benchmark:` wall-clock of the job, data loading included), "
            + ("on CPU: resources.distill.gpus is 0." if not gpus else
               "on this cluster's GPUs (their model is not recorded; the paper's are V100s).") + what]


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


# ---- the text's qualitative claims, with verdicts ----------------------------------------------------------
F = "(f) Sec. 5.2: with ToCom the off-the-shelf model matches the one fine-tuned at source = target"
G = "(g) Sec. 5.3: ToCom's gain is smaller when target < source than when target > source"
H = "(h) Sec. 5.4: the CLS loss is comparable to KD where target > source, worse only where target < source"
I = "(i) Sec. 5.5: EViT is far worse than ToMe, especially on Structured"
J = "(j) Sec. 4.1: the LoRA modules are about 0.1 % of the model's parameters"
ABOUT = (0.05, 0.15)            # % : "about 0.1 %" at one significant digit
TEXT_RULES = (f"(g)-(i) under the claims-at-scale item's rules, Holm's family being their own tests: **holds**: in "
              f"the paper's direction with the Holm-adjusted Wilcoxon p < {ALPHA:g}; **does not hold**: Holm p < "
              f"{ALPHA:g} in the opposite direction; **not significant**: otherwise, and always with fewer than "
              f"{MIN_PAIRS} pairs; (f) and (j) as the caption says.")


def not_worse(claim: Claim, diffs: pd.Series | None, absent: str) -> Claim:
    """"Matches, or better": does not hold when significantly negative (Wilcoxon p < ALPHA); holds with enough
    pairs when the mean difference is above −INSENSITIVE_MAX; not significant otherwise."""
    if diffs is None or diffs.dropna().empty:
        claim.reason = absent
        return claim
    t = claim.test = pair_test(diffs)
    p = t["p_wilcoxon"]
    if t["too_few"]:
        claim.verdict, claim.reason = NS, f"too few pairs: {t['n_pairs']}"
    elif not math.isnan(p) and p < ALPHA and t["mean"] < 0:
        claim.verdict, claim.reason = FAILS, "significantly below source = target"
    elif t["mean"] > -INSENSITIVE_MAX:
        claim.verdict = HOLDS
    else:
        claim.verdict = NS
        claim.reason = f"no significant difference, but {t['mean']:.2f} ≤ −{INSENSITIVE_MAX:g} point"
    return claim


def matches_source_equals_target(ctx: Ctx) -> list[Claim]:
    ev, variant = ctx.evals("main"), ctx.plugin("main")
    source = ctx.report["degrees"]["fig5_source"]
    out = []
    for label, datasets in (("CIFAR-100 + FGVC", list(ctx.report["cifar_fgvc"])), ("VTAB-1k", ctx.vtab_all())):
        for target in sorted(int(t) for t in ctx.report["degrees"]["inference"]["targets"] if t != source):
            c = Claim(F, f"{label}: + ToCom {r_pair(source, target)} − plain {r_pair(target, target)}", "≥ 0 (≈)")
            d = pair_diffs(select(ev, target, target, None, datasets), select(ev, source, target, variant, datasets))
            out.append(not_worse(c, d, f"no ToCom results at {r_pair(source, target)} with plain results at "
                                       f"{r_pair(target, target)} on the {label} datasets"))
    return out


def smaller_gain_going_down(ctx: Ctx) -> Claim:
    ev, variant = ctx.evals("main"), ctx.plugin("main")
    low, high = 0, int(max(ctx.report["degrees"]["inference"]["targets"]))
    datasets = list(dict.fromkeys([*ctx.report["cifar_fgvc"], *ctx.vtab_all()]))

    def gain(s, t):
        return pair_diffs(select(ev, s, t, None, datasets), select(ev, s, t, variant, datasets))

    c = Claim(G, f"gain at {r_pair(high, low)} − gain at {r_pair(low, high)}", "< 0")
    return directional(c, (gain(high, low) - gain(low, high)).dropna(),
                       f"no plain and ToCom results at both {r_pair(low, high)} and {r_pair(high, low)}")


def cls_loss(ctx: Ctx) -> list[Claim]:
    ev, ours = ctx.evals("main"), ctx.plugin("main")
    tasks = ctx.vtab_all()
    cls = [v for v in ctx.report.get("variants", {}).get("ablation", [])
           if variant_settings(ctx, "main", v)["loss"] == "cls"]
    pairs = [tuple(p) for p in ctx.report["degrees"]["ablation"]]
    up, down = [p for p in pairs if p[0] < p[1]], [p for p in pairs if p[0] > p[1]]
    if not cls:
        return [directional(Claim(H, "—", "> 0"), None, "`report.variants.ablation` lists no plugin with loss cls")]

    def diffs(sel):
        return averaged_over_pairs([pair_diffs(select(ev, s, t, cls[0], tasks), select(ev, s, t, ours, tasks))
                                    for s, t in sel])

    absent = f"no results of `{cls[0]}` and `{ours}` at the ablation pairs on the VTAB-1k tasks"
    c_up = Claim(H, f"ToCom − CLS loss (`{cls[0]}`), mean over {', '.join(r_pair(*p) for p in up) or '—'}", "≈ 0")
    d = diffs(up) if up else None
    out = [insensitive(c_up, {"CLS loss": pair_test(d)} if d is not None and len(d) else {}, absent, None)]
    c_down = Claim(H, f"ToCom − CLS loss (`{cls[0]}`), mean over {', '.join(r_pair(*p) for p in down) or '—'}",
                   "> 0")
    out.append(directional(c_down, diffs(down) if down else None, absent))
    return out


def evit_vs_tome(ctx: Ctx) -> Claim:
    pairs = [tuple(p) for p in ctx.report["degrees"]["other"]]
    main, evit = ctx.evals("main"), ctx.evals("evit") if ctx.role("evit") else None

    def diffs(datasets):
        if evit is None:
            return None
        return averaged_over_pairs([pair_diffs(select(main, s, t, None, datasets), select(evit, s, t, None, datasets))
                                    for s, t in pairs])

    where = ", ".join(r_pair(*p) for p in pairs)
    c = Claim(I, f"EViT − ToMe, plain, Structured tasks, mean over {where}", "< 0")
    c = directional(c, diffs(ctx.vtab()["structured"]),
                    "no plain results of both the `evit` and the `main` role at `degrees.other` on Structured tasks")
    for g in ("natural", "specialized"):
        d = diffs(ctx.vtab()[g])
        if d is not None and len(d):
            c.details.append(Claim(I, f"EViT − ToMe, plain, {GROUPS[g]} tasks, mean over {where}", "(< 0)",
                                   pair_test(d), ""))
    return c


def lora_share(ctx: Ctx) -> Claim:
    role = ctx.role("main")
    pl, models = ctx.table("plugins"), ctx.table("models")
    c = Claim(J, "one degree step's LoRA (the plugin's parameters / its groups) / the fine-tuned model's (%)",
              f"{ABOUT[0]:g}–{ABOUT[1]:g} %")
    mine = pl[(pl.backbone_key == role["backbone"]) & (pl.method == role["method"])
              & (pl.variant == ctx.plugin("main"))] if len(pl) else pl
    have = models[models.backbone_key == role["backbone"]] if "params" in models else models.iloc[0:0]
    have = have[have.params.notna()] if len(have) else have
    if mine.empty or have.empty:
        c.reason = ("plugins.csv has no main plugin" if mine.empty else
                    "models.csv has no parameter count of a main-role model (`params`)")
        return c
    full = have[have["mode"] == "full"] if "mode" in have and (have["mode"] == "full").any() else have
    total, plugin = float(full.params.min()), mine.iloc[0]
    per_group = 100.0 * float(plugin.params) / float(plugin.groups) / total
    c.test = {"mean": per_group, "ci": math.nan, "n_pairs": 0, "n_tasks": 0, "n_seeds": 0, "p_wilcoxon": math.nan,
              "p_ttest": math.nan, "too_few": False}
    c.verdict = HOLDS if ABOUT[0] <= per_group < ABOUT[1] else FAILS
    if c.verdict == FAILS:
        c.reason = f"{per_group:.3f} % is not about 0.1 %"
    whole = 100.0 * float(plugin.params) / total
    c.details.append(Claim(J, f"the whole plugin ({int(plugin.groups)} groups, {int(plugin.params):,} parameters) / "
                              f"the model's {int(total):,} (%)", "(negligible)",
                           dict(c.test, mean=whole), ""))
    return c


def text_claims(ctx: Ctx) -> list[Claim]:
    judged = [smaller_gain_going_down(ctx), *cls_loss(ctx), evit_vs_tome(ctx)]    # (g)-(i): their own Holm family
    judge_all(judged)
    return matches_source_equals_target(ctx) + judged + [lora_share(ctx)]


def verdict_rows(claims: list[Claim]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(display, CSV rows: kind claim / detail, with expected, verdict and reason) of the text's claims."""
    show, rows = [], [x for claim in claims for x in (claim, *claim.details)]
    for c in rows:
        t, paired = c.test or {}, bool(c.test and c.test.get("n_pairs"))
        digits = 3 if c.block == J else 2
        verdict = c.verdict + (f" ({c.reason})" if c.reason and c.verdict != ABSENT else "")
        show.append({"claim": c.block, "comparison": ("↳ " if not c.verdict else "") + c.row, "paper": c.expected,
                     "this run": fmt(t["mean"], digits, c.block != J, t.get("ci", math.nan)) if t else "—",
                     "pairs (tasks × seeds)": f"{t['n_pairs']} ({t['n_tasks']} × {t['n_seeds']})" if paired else "—",
                     "Wilcoxon p": fmt_p(t.get("p_wilcoxon")) if paired else "—",
                     "verdict": verdict if c.verdict else ""})
    disp = pd.DataFrame(show)
    disp["claim"] = disp["claim"].where(disp["claim"] != disp["claim"].shift(), "")
    return disp, frame(rows)[CSV_COLUMNS + ["expected", "verdict", "reason"]]


def make(ctx: Ctx, item: Item) -> None:
    t = Table(ctx, item, f"Each number the paper states in its text, beside this run's (role "
                         f"{ctx.role_label('main')}); gains are ToCom (s chosen on val) minus the same model "
                         "without it, test top-1 points.")
    t.notes += max_gains(ctx, t) + average_gains(ctx, t) + training_cost(ctx, t) + plugin_costs(ctx, t)
    claims = text_claims(ctx)
    disp, rows = verdict_rows(claims)
    caption = (f"The text's qualitative claims, each with a verdict (role {ctx.role_label('main')}; (i) against the "
               f"EViT role): test top-1 points, paired tests across tasks × seeds ({PAIRING}). (f) holds when ToCom "
               f"is not significantly below source = target and within {INSENSITIVE_MAX:g} point of it; (j) holds "
               f"when one degree step's share rounds to 0.1 % ({ABOUT[0]:g}–{ABOUT[1]:g} %).")
    absent = [f"- {c.block}: not in this run: {c.reason}." for c in claims if c.verdict == ABSENT]
    md = "\n".join([t.markdown(), "", "#### The text's qualitative claims: verdicts", "", caption, "",
                     f"Verdicts — {TEXT_RULES}", "", markdown_table(disp), "", *absent, ""])
    write_text(md, ctx.out(item.stem, ".md"))
    write_text(latex(t.display(), f"{item.title}. {t.caption}")
               + latex(disp, f"{item.title}: verdicts. {caption}"), ctx.out(item.stem, ".tex"))
    write_csv(pd.concat([t.frame(), rows], ignore_index=True), ctx.out(item.stem, ".csv"))


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
