"""Claims at this scale: each qualitative claim of the paper, tested on this run, with a verdict.

Every claim is a paired comparison over tasks × seeds (common.pair_test: each (dataset, seed) one pair,
Wilcoxon signed-rank two-sided with zero differences dropped, paired t, mean difference ± 95 % t interval over
the pairs). The cells come from the config's `report` section: the roles (`report.main`, `evit`, `idle`), the
dataset lists (`cifar_fgvc` and `vtab_groups`, together "the role's datasets") and `degrees`:
  low r = 0 (no compression), high r = max(`degrees.inference.targets`) (paper 16), the middle target = the
  target evaluated at source 0 strictly between 0 and high r closest to high r / 2 (paper 8),
  the ablation pairs = `degrees.ablation` (paper 0 → 16, 0 → 12, 16 → 0), with the plugins of
  `report.variants.ablation` / `.rank` / `.scale` against the role's plugin (`report.main.variant`, default tocom),
  on the role's datasets that have them (the paper: its VTAB-1k tasks, as Tables 5-7); a (dataset, seed) pair
  is averaged over the ablation pairs first.
The verdicts are decided together (`judge_all`): the Wilcoxon p-values of every test a verdict rests on are
adjusted by Holm's method over that family (common.stats.holm), so that across the whole table a truly null
effect gets "holds" or "does not hold" by chance in at most ALPHA of runs. Verdicts (VERDICT_RULES) are about the
direction and significance of an effect, never the paper's magnitudes. Reads tables/eval.csv and
tables/transfer.csv only.
"""

import math
from dataclasses import dataclass, field

import pandas as pd

from common.builders import ablation_label, variant_settings
from common.ctx import Ctx, run, select
from common.fmt import fmt, fmt_p, latex, markdown_table, r_pair
from common.stats import ALPHA, MIN_PAIRS, PAIRING, holm, pair_diffs, pair_test
from common.table import CSV_COLUMNS
from items import ROLES, Item
from tocom import layout
from tocom.io import write_csv, write_text
from tocom.settings import METHODS

HOLDS, FAILS, NS, ABSENT = "holds", "does not hold", "not significant", "not in this run"
INSENSITIVE_MAX = 1.0          # points: the largest |difference| an "insensitive" claim tolerates
FAMILY = (f"every paired test a verdict rests on that has at least {MIN_PAIRS} pairs: each directional claim's test "
          "and each variant's test of the insensitivity claims")
VERDICT_RULES = (
    f"every p below is a two-sided Wilcoxon signed-rank p adjusted by Holm's method over one family, {FAMILY} "
    f"(the Holm p column), at α = {ALPHA:g}: across the whole table, a truly null effect is declared \"holds\" or "
    f"\"does not hold\" by chance in at most {ALPHA:.0%} of runs. "
    f"**holds**: the mean difference is in the paper's direction and the Holm p < {ALPHA:g}; "
    f"**does not hold**: Holm p < {ALPHA:g} with the mean difference in the opposite direction; "
    f"**not significant**: otherwise, and always with fewer than {MIN_PAIRS} (dataset, seed) pairs (too few pairs); "
    "**not in this run**: the results are absent (the note says which config section adds them). "
    f"Insensitivity claims (7): **holds** when every variant has at least {MIN_PAIRS} pairs, no variant's "
    f"difference from the main plugin has Holm p < {ALPHA:g}, and every variant's 95 % interval of the mean "
    f"difference lies within ±{INSENSITIVE_MAX:g} point (so the run could have seen a {INSENSITIVE_MAX:g}-point "
    f"difference); **does not hold** when any variant with at least {MIN_PAIRS} pairs differs with Holm "
    f"p < {ALPHA:g}; **not significant** otherwise (too few pairs, or no significant difference but an interval "
    f"reaching ±{INSENSITIVE_MAX:g} point).")
CSV_EXTRA = ["key", "p_holm", "expected", "verdict", "reason"]
TRANSFER_TABLE = layout.TABLE.format(table="transfer")
IN_THE_PAPER = {"evit": "Sec. 5.5, Fig. 7, Table 8"}     # where the paper claims 8 for a method (IdleViT: not)


@dataclass
class Claim:
    block: str                   # the claim, as the paper states it
    row: str                     # the comparison: what minus what, where
    expected: str                # "> 0", "< 0", "≈ 0"
    test: dict | None = None     # common.pair_test, None when the rows are absent
    verdict: str = ABSENT
    reason: str = ""
    details: list = field(default_factory=list)      # insensitivity: one Claim per variant (its test)
    key: str = ""                # a short name that stays the same from run to run (compare_run.py matches on it)
    absent: str = ""             # why the results are absent (the note), when they are
    note: str = ""               # added to the reason whatever the verdict (e.g. variants without results)


def directional(claim: Claim, diffs: pd.Series | None, absent: str) -> Claim:
    """An effect the paper says is positive (`expected` "> 0") or negative ("< 0"): its paired test, or why it
    is absent; `judge` gives the verdict once the family's p-values are adjusted."""
    if diffs is None or diffs.dropna().empty:
        claim.absent = absent
    else:
        claim.test = pair_test(diffs)
    return claim


def insensitive(claim: Claim, tests: dict[str, dict], absent: str, spread: float | None) -> Claim:
    """"Not sensitive to this setting": each variant's paired test against the main plugin (`tests`, by name;
    `claim.details` holds one Claim per variant), summarised on the claim's own row."""
    if not tests:
        claim.absent = absent
        return claim
    largest = max(tests, key=lambda k: abs(tests[k]["mean"]))
    claim.row += f"; largest absolute Δ: {largest}"
    if spread is not None:
        claim.row += f"; spread (max − min) of the means, ours included: {spread:.2f}"
    if not claim.details:                 # called with bare tests: one detail per variant
        claim.details = [Claim(claim.block, name, "≈ 0", t, "", key=name) for name, t in tests.items()]
    claim.test = summary(claim.details)
    return claim


def summary(details: list[Claim]) -> dict:
    """An insensitivity claim's row: the test of the variant with the largest |Δ|, with the smallest p (raw and
    Holm) of any variant."""
    tests = {d.key: d.test for d in details}
    largest = max(tests, key=lambda k: abs(tests[k]["mean"]))
    smallest = {k: min((t[k] for t in tests.values() if not math.isnan(t.get(k, math.nan))), default=math.nan)
                for k in ("p_wilcoxon", "p_ttest", "p_holm")}
    return dict(tests[largest], **smallest)


def p_of(t: dict) -> float:
    """The p a verdict uses: Holm-adjusted once `judge_all` has run (a test outside the family, with too few
    pairs, has none), else the raw Wilcoxon p (a claim judged on its own)."""
    return t.get("p_holm", t["p_wilcoxon"])


def significant(t: dict) -> bool:
    return not t["too_few"] and not math.isnan(p_of(t)) and p_of(t) < ALPHA


def judge(claim: Claim) -> Claim:
    """The verdict of a claim from its test(s) (VERDICT_RULES), with its note."""
    _judge(claim)
    if claim.note and claim.verdict != ABSENT:
        claim.reason = "; ".join(x for x in (claim.reason, claim.note) if x)
    return claim


def _judge(claim: Claim) -> Claim:
    if claim.test is None:
        claim.verdict, claim.reason = ABSENT, claim.absent
        return claim
    claim.reason = ""
    if claim.expected == "≈ 0":
        return judge_insensitive(claim)
    t, sign = claim.test, 1 if claim.expected == "> 0" else -1
    if t["too_few"]:
        claim.verdict, claim.reason = NS, f"too few pairs: {t['n_pairs']} < {MIN_PAIRS}"
    elif significant(t) and sign * t["mean"] > 0:
        claim.verdict = HOLDS
    elif significant(t) and sign * t["mean"] < 0:
        claim.verdict, claim.reason = FAILS, "significant in the opposite direction"
    else:
        claim.verdict = NS
        if not math.isnan(t["p_wilcoxon"]) and t["p_wilcoxon"] < ALPHA:
            claim.reason = f"Wilcoxon p {t['p_wilcoxon']:.3f} < {ALPHA:g} before Holm's adjustment"
    return claim


def judge_insensitive(claim: Claim) -> Claim:
    tests = {d.key: d.test for d in claim.details}
    differ = [k for k, t in tests.items() if significant(t)]
    few = [k for k, t in tests.items() if t["too_few"]]
    wide = {k: abs(t["mean"]) + (0.0 if math.isnan(t["ci"]) else t["ci"]) for k, t in tests.items()}
    widest = max(wide, key=wide.get)
    largest = max(tests, key=lambda k: abs(tests[k]["mean"]))
    if differ:
        claim.verdict, claim.reason = FAILS, f"significant difference: {', '.join(differ)}"
    elif few:
        claim.verdict, claim.reason = NS, f"too few pairs: {', '.join(few)} (< {MIN_PAIRS})"
    elif abs(tests[largest]["mean"]) >= INSENSITIVE_MAX:
        claim.verdict, claim.reason = NS, (f"no significant difference, but the absolute Δ of {largest} is "
                                           f"{abs(tests[largest]['mean']):.2f} ≥ {INSENSITIVE_MAX:g} point")
    elif wide[widest] >= INSENSITIVE_MAX:
        claim.verdict, claim.reason = NS, (f"no significant difference, but the 95 % interval of {widest} reaches "
                                           f"{wide[widest]:.2f} ≥ {INSENSITIVE_MAX:g} point")
    else:
        claim.verdict = HOLDS
    return claim


def rests_on_details(c: Claim) -> bool:
    """An insensitivity claim rests on its variants' tests; a directional claim's details only inform."""
    return c.expected == "≈ 0" and bool(c.details)


def family(claims: list[Claim]) -> list[dict]:
    """The tests the verdicts rest on (FAMILY), each once."""
    out = []
    for c in claims:
        for t in ([d.test for d in c.details] if rests_on_details(c) else [c.test]):
            if t is not None and not t["too_few"] and not math.isnan(t["p_wilcoxon"]):
                out.append(t)
    return out


def judge_all(claims: list[Claim]) -> int:
    """Holm over the family (each test gains `p_holm`), then every verdict; returns the family's size."""
    tests = family(claims)
    for t, p in zip(tests, holm([t["p_wilcoxon"] for t in tests]), strict=True):
        t["p_holm"] = p
    for c in claims:
        if rests_on_details(c):
            c.test = summary(c.details)
        judge(c)
    return len(tests)


# ---- the cells ------------------------------------------------------------------------------------
def degrees(ctx: Ctx) -> tuple[int, int]:
    return 0, int(max(ctx.report["degrees"]["inference"]["targets"]))


def role_datasets(ctx: Ctx) -> list[str]:
    return list(dict.fromkeys(list(ctx.report.get("cifar_fgvc", [])) + ctx.vtab_all()))


def gain_diffs(ctx: Ctx, name: str, source: int, target: int, datasets=None) -> pd.Series:
    """ToCom (the role's plugin, s chosen on val) − plain per (dataset, seed)."""
    ev, datasets = ctx.evals(name), datasets or role_datasets(ctx)
    return pair_diffs(select(ev, source, target, None, datasets),
                      select(ev, source, target, ctx.plugin(name), datasets))


def where(ctx: Ctx, name: str, cells: str) -> str:
    role = ctx.role(name)
    if role is None:
        return f"no `report.{name}` role in the config: add one, and a `studies` entry for it with {cells}"
    return (f"no results of {ctx.role_label(name)} with {cells}: add them to a `studies` set of backbone "
            f"`{role['backbone']}`, method {role['method']}")


def averaged_over_pairs(per_pair: list[pd.Series]) -> pd.Series | None:
    """One difference per (dataset, seed): the mean over the ablation degree pairs that have results, keeping the
    (dataset, seed) pairs present at every one of them."""
    present = [d for d in per_pair if len(d)]
    if not present:
        return None
    wide = pd.concat(present, axis=1).dropna()
    return wide.mean(axis=1) if len(wide) else None


def ablation_diffs(ctx: Ctx, variant: str, minus: str) -> pd.Series | None:
    """`variant` − `minus` (plugins of the main role, each at its s chosen on val) on the role's datasets that
    have both (the paper evaluates its ablations on VTAB-1k only; a CPU run on every task it fine-tunes)."""
    ev, tasks = ctx.evals("main"), role_datasets(ctx)
    return averaged_over_pairs([pair_diffs(select(ev, s, t, minus, tasks), select(ev, s, t, variant, tasks))
                                for s, t in (tuple(p) for p in ctx.report["degrees"]["ablation"])])


def ablation_where(ctx: Ctx, kind: str, variants) -> str:
    if not variants:
        return f"`report.variants.{kind}` lists no plugin (define them under `variants` and list them there)"
    return (f"no results of {', '.join(variants)} with the main plugin at {pairs_text(ctx)} on the role's datasets: "
            "add them to the `variants` of a `studies` set of the main role with those degree pairs")


# ---- the claims -----------------------------------------------------------------------------------
def mismatch(ctx: Ctx) -> list[Claim]:
    low, high = degrees(ctx)
    ev, ds = ctx.evals("main"), role_datasets(ctx)
    out = []
    for source, target in ((low, high), (high, low)):
        d = pair_diffs(select(ev, target, target, None, ds), select(ev, source, target, None, ds))
        c = Claim("1 Mismatched source and target degrees lose accuracy (Sec. 3.1, Fig. 2)",
                  f"plain {r_pair(source, target)} − plain {r_pair(target, target)}", "< 0",
                  key=f"1 plain {r_pair(source, target)}")
        out.append(directional(c, d, where(ctx, "main", f"plain results at {r_pair(source, target)} and "
                                                        f"{r_pair(target, target)}")))
    return out


def gain_claim(ctx: Ctx, name: str, source: int, target: int, block: str, key: str) -> Claim:
    """ToCom's gain over the plain model of a role at source → target (claims 2, 3 and 8)."""
    pair = r_pair(source, target)
    return directional(Claim(block, f"+ ToCom − plain, {pair}", "> 0", key=key),
                       gain_diffs(ctx, name, source, target) if ctx.role(name) else None,
                       where(ctx, name, f"plain and ToCom results at {pair}"))


def gains(ctx: Ctx) -> list[Claim]:
    low, high = degrees(ctx)
    return [gain_claim(ctx, "main", s, t, f"{n} ToCom improves an off-the-shelf model at {r_pair(s, t)} "
                       "(Secs. 5.2, 5.3)", f"{n} ToCom {r_pair(s, t)}")
            for n, (s, t) in ((2, (low, high)), (3, (high, low)))]


def middle_target(ctx: Ctx) -> int | None:
    low, high = degrees(ctx)
    ev = ctx.evals("main")
    here = ev[(ev.source_r == low) & (ev.tocom == 1) & (ev.variant == ctx.plugin("main"))]
    inside = sorted({int(x) for x in here.target_r if low < x < high})
    return min(inside, key=lambda x: (abs(x - high / 2), x)) if inside else None


def larger_gap(ctx: Ctx) -> Claim:
    low, high = degrees(ctx)
    mid = middle_target(ctx)
    c = Claim("4 The larger the gap between source and target, the larger ToCom's gain (Sec. 5.2, Fig. 5)",
              f"gain at {r_pair(low, high)} − gain at {r_pair(low, mid if mid is not None else '(middle)')}", "> 0",
              key="4 larger gap")
    if mid is None:
        return directional(c, None, where(ctx, "main", f"plain and ToCom results at source {low} and a target "
                                                       f"strictly between {low} and {high}"))
    d = (gain_diffs(ctx, "main", low, high) - gain_diffs(ctx, "main", low, mid)).dropna()
    return directional(c, d, where(ctx, "main", f"plain and ToCom results at {r_pair(low, high)} and "
                                                f"{r_pair(low, mid)} on the same datasets"))


def transfer(ctx: Ctx) -> Claim:
    tr = ctx.transfer()
    c = Claim("5 The source-degree gap transfers across tasks: M_high^A − M_0^A + M_0^B beats M_0^B on D_B at the "
              "target r (Sec. 3.2, Table 1)", "task arithmetic − M_0^B", "> 0", key="5 transfer")
    if tr.empty:
        return directional(c, None, f"the config's `transfer` section is empty ({TRANSFER_TABLE} has no rows)")
    keys = ["backbone_key", "method", "a", "high_r", "target_r"]
    per_block = [pair_diffs(rows[~rows.arith], rows[rows.arith]) for _, rows in tr.groupby(keys, sort=False)]
    blocks = tr.groupby(keys, sort=False).ngroups
    if blocks > 1:
        c.row += f" (mean over the {blocks} Table 1 blocks per (dataset, seed))"
    d = pd.concat([x for x in per_block if len(x)], axis=1).mean(axis=1) if any(len(x) for x in per_block) else None
    return directional(c, d, f"no pair of M_0^B and task-arithmetic results in {TRANSFER_TABLE}")


def ablations(ctx: Ctx) -> list[Claim]:
    ours, out = ctx.plugin("main"), []
    variants = list(ctx.report.get("variants", {}).get("ablation", []))
    for v in variants:
        c = Claim(f"6 The full ToCom beats its ablation: {ablation_label(ctx, v)} (Sec. 5.4, Table 5)",
                  f"ToCom − {ablation_label(ctx, v)}, mean over {pairs_text(ctx)}", "> 0", key=f"6 ToCom − {v}")
        out.append(directional(c, ablation_diffs(ctx, ours, v), ablation_where(ctx, "ablation", [v, ours])))
    if not variants:
        out.append(directional(Claim("6 The full ToCom beats its ablations (Sec. 5.4, Table 5)", "—", "> 0",
                                     key="6 ablations"), None,
                               ablation_where(ctx, "ablation", [])))
    return out


def pairs_text(ctx: Ctx) -> str:
    return ", ".join(r_pair(*p) for p in ctx.report["degrees"]["ablation"])


def insensitivity(ctx: Ctx, kind: str) -> Claim:
    ours = ctx.plugin("main")
    variants = list(ctx.report.get("variants", {}).get(kind, []))
    what, key, paper, claim_key = (
        ("7a ToCom is insensitive to the LoRA rank h (Sec. 5.2, Table 7)", "rank", "h", "7a") if kind == "rank" else
        ("7b ToCom is insensitive to the training scale s (Sec. 5.2, Table 6)", "scale", "s", "7b"))

    def name(v):
        return f"{paper} = {variant_settings(ctx, 'main', v)[key]:g}"

    c = Claim(what, f"each of {', '.join(name(v) for v in variants) or '—'} − {name(ours)} (ours), mean over "
                    f"{pairs_text(ctx)}", "≈ 0", key=claim_key)
    tests, means = {}, {}
    for v in variants:
        d = ablation_diffs(ctx, v, ours)
        if d is not None and len(d):
            tests[name(v)] = t = pair_test(d)
            c.details.append(Claim(what, f"{name(v)} − {name(ours)} (ours)", "≈ 0", t, "", key=name(v)))
            means[name(v)] = t["mean"]
    spread = (max([0.0, *means.values()]) - min([0.0, *means.values()])) if means else None   # ours at 0
    missing = [v for v in variants if name(v) not in tests]
    claim = insensitive(c, tests, ablation_where(ctx, kind, variants), spread)
    if missing and tests:
        claim.note = f"no results of {', '.join(missing)}"
    return claim


def other_methods(ctx: Ctx) -> list[Claim]:
    low, high = degrees(ctx)
    return [gain_claim(ctx, name, low, high, f"8 ToCom improves {ROLES[name]} at {r_pair(low, high)} "
                       f"({IN_THE_PAPER.get(name, 'not in the paper; the same claim')})",
                       f"8 {name} {r_pair(low, high)}")
            for name in METHODS if name in ROLES]       # the other methods' roles are named after them


def claims(ctx: Ctx) -> tuple[list[Claim], int]:
    """Every claim with its verdict, and the size of the Holm family the verdicts were decided in."""
    out = (mismatch(ctx) + gains(ctx) + [larger_gap(ctx), transfer(ctx)] + ablations(ctx)
           + [insensitivity(ctx, "rank"), insensitivity(ctx, "scale")] + other_methods(ctx))
    return out, judge_all(out)


# ---- output ---------------------------------------------------------------------------------------
def frame(rows: list[Claim]) -> pd.DataFrame:
    recs = []
    for c in rows:
        t = c.test or {}
        recs.append({"kind": "claim" if c.verdict else "detail", "block": c.block, "row": c.row, "column": "effect",
                     "mean": t.get("mean"), "ci": t.get("ci"), "n_seeds": t.get("n_seeds", 0),
                     "n_tasks": t.get("n_tasks", 0), "p_wilcoxon": t.get("p_wilcoxon"),
                     "p_ttest": t.get("p_ttest"), "n_pairs": t.get("n_pairs", 0), "key": c.key,
                     "p_holm": t.get("p_holm"), "expected": c.expected, "verdict": c.verdict, "reason": c.reason})
    return pd.DataFrame(recs, columns=CSV_COLUMNS + CSV_EXTRA)


def display(rows: list[Claim]) -> pd.DataFrame:
    out, last = [], None
    for c in rows:
        t = c.test
        head = c.block if c.block != last else ""
        last = c.block
        pairs = "—" if not t else f"{t['n_pairs']} ({t['n_tasks']} × {t['n_seeds']})"
        verdict = c.verdict + (f" ({c.reason})" if c.reason and c.verdict != ABSENT else "")
        out.append({"claim": head, "comparison": ("↳ " if not c.verdict else "") + c.row, "paper": c.expected,
                    "this run (pts)": fmt(t["mean"], 2, True, t["ci"]) if t else "—", "pairs (tasks × seeds)": pairs,
                    "Wilcoxon p": fmt_p(t["p_wilcoxon"]) if t else "—",
                    "Holm p": fmt_p(t.get("p_holm")) if t else "—",
                    "paired t p": fmt_p(t["p_ttest"]) if t else "—", "verdict": verdict or ""})
    return pd.DataFrame(out)


def make(ctx: Ctx, item: Item) -> None:
    low, high = degrees(ctx)
    main, tested = claims(ctx)
    rows = [x for c in main for x in [c, *c.details]]
    caption = (f"Each qualitative claim of the paper, tested on this run (role {ctx.role_label('main')} unless "
               f"named); low r = {low}, high r = {high} (the largest `degrees.inference` target), middle target r = "
               f"{middle_target(ctx) if middle_target(ctx) is not None else '—'}; gains are ToCom at the s chosen on "
               "val minus the same model without it, test top-1 points; claims 1-4 on the role's datasets "
               "(`cifar_fgvc` and the VTAB-1k tasks), 6-7 on those of them with results of the ablation plugins (the "
               f"paper: its VTAB-1k tasks) averaged over the ablation pairs ({pairs_text(ctx)}) per (dataset, seed). "
               f"Paired tests across tasks × seeds ({PAIRING}). "
               "An insensitivity claim's row gives the variant with the largest absolute Δ and the smallest p of any "
               "variant. The verdict concerns the direction and significance of each effect, not the paper's "
               "magnitudes (those are in the items above and the tables).")
    lines = [f"### {item.title}", "", caption + " Rows marked ↳ are the variants behind it.", "",
             f"Verdicts — {VERDICT_RULES} The family in this run: {tested} tests.", "",
             markdown_table(display(rows)), ""]
    absent = [f"- Claim {c.block}: not in this run: {c.reason}." for c in main if c.verdict == ABSENT]
    lines += absent + ([""] if absent else [])
    write_text("\n".join(lines), ctx.out(item.stem, ".md"))
    write_text(latex(display(rows), f"{item.title}. {caption} Verdicts: {VERDICT_RULES.replace('**', '')} "
                                    f"The family in this run: {tested} tests."),
               ctx.out(item.stem, ".tex"))
    write_csv(frame(rows), ctx.out(item.stem, ".csv"))


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
