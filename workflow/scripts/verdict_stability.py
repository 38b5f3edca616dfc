"""How often would a claim's verdict come out differently in a second, independent run? A simulation of the
claims table's statistics, before paying for two full runs.

    python workflow/scripts/verdict_stability.py [--sims 400] [--tau 0.0] [--claims results/cpu/report/claims_at_scale.csv]

Each claim is modelled as independent (dataset, seed) differences, normal with the mean and spread a run
measured (sd = the 95 % half-width × √n / t(0.975, n − 1)); by default those of the run docs/results.md quoted
before the verdict rules changed (`LAST_RUN`), or those of a finished run's claims item (`--claims`). `--tau`
adds a per-run shift of every effect, normal with that sd (what re-training a plugin on another machine changes
beyond the pairs' own noise; the two runs of issue 20 differ by no more than the pairs' noise explains, except
7b's s = 1). Two runs are drawn per simulation and judged under each design (`DESIGNS`): the verdict rules as
they were (raw Wilcoxon p < 0.05, "insensitive" = nothing significant and |Δ| < 1) or as they are now
(claims_at_scale.judge_all: Holm over the table, the insensitivity interval rule), at the pair counts of each
design. Printed per claim: how often the two runs' verdicts differ ("flip"), and the most common verdict; then how
often a table of purely null effects gets any "holds"/"does not hold" verdict. Verdicts are treated as
independent across claims (they share models and plugins, which this leaves out).
Reads no run (unless --claims) and imports no model: seconds per hundred simulations.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent / "report"))
import claims_at_scale as cas  # noqa: E402  (the verdict rules themselves, not a copy)
from common.stats import ALPHA, pair_test  # noqa: E402


@dataclass(frozen=True)
class Effect:
    key: str
    expected: str                         # "> 0", "< 0"; "≈ 0" for an insensitivity claim's variant
    mean: float
    ci: float                             # 95 % t half-width over n pairs
    n: int
    group: str = ""                       # insensitivity claims: the claim the variant belongs to

    @property
    def sd(self) -> float:
        from scipy import stats

        return self.ci * math.sqrt(self.n) / stats.t.ppf(0.975, self.n - 1) if self.n > 1 else 0.0


#: The run docs/results.md quoted before the rules changed (main e4e5fff, seeds 0-2): claims 6-7 on 2 tasks.
LAST_RUN = [
    Effect("1 plain 0 → 4", "< 0", -0.14, 0.58, 18), Effect("1 plain 4 → 0", "< 0", -1.01, 0.79, 18),
    Effect("2 ToCom 0 → 4", "> 0", 0.11, 0.35, 18), Effect("3 ToCom 4 → 0", "> 0", 0.26, 0.38, 18),
    Effect("4 larger gap", "> 0", 0.20, 0.34, 18), Effect("5 transfer", "> 0", -1.13, 3.38, 3),
    Effect("6 ToCom − shared", "> 0", 0.06, 0.42, 6), Effect("6 ToCom − cls", "> 0", 0.11, 0.81, 6),
    Effect("6 ToCom − no_inversion", "> 0", 0.19, 0.52, 6),
    Effect("h = 1", "≈ 0", 0.08, 0.38, 6, "7a"), Effect("h = 4", "≈ 0", 0.10, 0.54, 6, "7a"),
    Effect("h = 8", "≈ 0", -0.01, 0.44, 6, "7a"),
    Effect("s = 1", "≈ 0", -0.39, 0.17, 6, "7b"), Effect("s = 0.01", "≈ 0", -0.02, 0.71, 6, "7b"),
    Effect("8 evit 0 → 4", "> 0", 1.89, 1.80, 9), Effect("8 idle 0 → 4", "> 0", 1.02, 1.36, 9),
]
ABLATION = ("6 ", "h = ", "s = ")


def pairs_of(e: Effect, design: dict) -> int:
    """Pairs of a claim under a design: tasks × seeds (the transfer check: its task pairs × seeds)."""
    seeds = design["seeds"]
    if e.key.startswith("5 "):
        return seeds
    if e.key.startswith(ABLATION):
        return design["ablation_tasks"] * seeds
    if e.key.startswith("8 "):
        return design["other_tasks"] * seeds
    return 6 * seeds


#: (name, rules, pair counts): the design of the run docs/results.md quoted, the new rules on it, and the
#: CPU default now (claims 6-8 on all 6 tasks); then what more seeds would buy.
DESIGNS = {
    "before (raw p, 6-7 on 2 tasks)": dict(rules="old", seeds=3, ablation_tasks=2, other_tasks=3),
    "Holm, same runs": dict(rules="new", seeds=3, ablation_tasks=2, other_tasks=3),
    "Holm, 6-7 on 4 VTAB tasks": dict(rules="new", seeds=3, ablation_tasks=4, other_tasks=3),
    "Holm, 6-7 on 6 tasks": dict(rules="new", seeds=3, ablation_tasks=6, other_tasks=3),
    "Holm, 6-8 on 6 tasks (now)": dict(rules="new", seeds=3, ablation_tasks=6, other_tasks=6),
    "now, 5 seeds": dict(rules="new", seeds=5, ablation_tasks=6, other_tasks=6),
}


def old_rules(effects: list[Effect], tests: dict[str, dict]) -> dict[str, str]:
    """The rules before Holm (for comparison): raw p; "insensitive" = nothing significant and |Δ| < 1."""
    out, groups = {}, {}
    for e in effects:
        t = tests[e.key]
        if e.group:
            groups.setdefault(e.group, []).append(t)
            continue
        sig = not t["too_few"] and not math.isnan(t["p_wilcoxon"]) and t["p_wilcoxon"] < ALPHA
        sign = 1 if e.expected == "> 0" else -1
        out[e.key] = (cas.NS if t["too_few"] or not sig else cas.HOLDS if sign * t["mean"] > 0 else cas.FAILS)
    for g, ts in groups.items():
        if any(not t["too_few"] and t["p_wilcoxon"] < ALPHA for t in ts):
            out[g] = cas.FAILS
        elif any(t["too_few"] for t in ts) or max(abs(t["mean"]) for t in ts) >= cas.INSENSITIVE_MAX:
            out[g] = cas.NS
        else:
            out[g] = cas.HOLDS
    return out


def new_rules(effects: list[Effect], tests: dict[str, dict]) -> dict[str, str]:
    claims, groups = [], {}
    for e in effects:
        if e.group:
            groups.setdefault(e.group, {})[e.key] = tests[e.key]
        else:
            claims.append(cas.Claim(e.key, "x", e.expected, dict(tests[e.key]), key=e.key))
    for g, ts in groups.items():
        claims.append(cas.insensitive(cas.Claim(g, "x", "≈ 0", key=g), {k: dict(t) for k, t in ts.items()}, "", None))
    cas.judge_all(claims)
    return {c.key: c.verdict for c in claims}


@lru_cache(maxsize=None)
def signed_rank_null(n: int) -> np.ndarray:
    """P(W+ <= w) for w = 0..n(n+1)/2 under the null: the exact distribution of the signed-rank statistic."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for k in range(1, n + 1):                  # rank k is positive or not
        counts[k:] = counts[k:] + counts[:-k].copy()
    return np.cumsum(counts) / counts.sum()


def quick_test(d: np.ndarray) -> dict:
    """common.stats.pair_test for differences without ties or zeros (normal draws), fast: the same mean,
    interval and two-sided exact Wilcoxon p (scipy's method for n <= 50), by a table instead of scipy per call."""
    from scipy import stats

    n = len(d)
    out = {"n_pairs": n, "n_tasks": 0, "n_seeds": 0, "mean": float(d.mean()), "p_ttest": math.nan,
           "ci": float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
           "p_wilcoxon": math.nan, "too_few": n < cas.MIN_PAIRS}
    if n >= 2:
        w = int(np.argsort(np.argsort(np.abs(d)))[d > 0].sum() + (d > 0).sum())    # sum of the positive ranks
        cdf = signed_rank_null(n)
        low, high = cdf[w], 1.0 - (cdf[w - 1] if w > 0 else 0.0)
        out["p_wilcoxon"] = min(1.0, 2 * min(low, high))
    return out


def one_run(effects: list[Effect], design: dict, rng: np.random.Generator, tau: float) -> dict[str, str]:
    tests = {}
    for e in effects:
        n = pairs_of(e, design)
        shift = rng.normal(0.0, tau) if tau else 0.0
        tests[e.key] = quick_test(rng.normal(e.mean + shift, e.sd, n))
    return (old_rules if design["rules"] == "old" else new_rules)(effects, tests)


def simulate(effects: list[Effect], sims: int, tau: float, seed: int = 0) -> pd.DataFrame:
    """Per design and claim: the flip rate between two independent runs and the modal verdict."""
    rows = []
    for name, design in DESIGNS.items():
        rng = np.random.default_rng(seed)
        flips, seen = Counter(), {}
        for _ in range(sims):
            a, b = one_run(effects, design, rng, tau), one_run(effects, design, rng, tau)
            for k in a:
                flips[k] += a[k] != b[k]
                seen.setdefault(k, Counter()).update([a[k], b[k]])
        for k, counts in seen.items():
            verdict, c = counts.most_common(1)[0]
            rows.append(dict(design=name, claim=k, flip=flips[k] / sims, modal=f"{verdict} ({c / (2 * sims):.0%})",
                             pairs=next(pairs_of(e, design) for e in effects if k in (e.key, e.group))))
    return pd.DataFrame(rows)


def chance_rate(effects: list[Effect], sims: int, seed: int = 1) -> pd.DataFrame:
    """Every effect null: how often some claim of the table gets "holds" or "does not hold" (insensitivity
    claims: "does not hold", their only chance verdict)."""
    null = [Effect(e.key, e.expected, 0.0, e.ci, e.n, e.group) for e in effects]
    rows = []
    for name, design in DESIGNS.items():
        rng = np.random.default_rng(seed)
        hits = 0
        for _ in range(sims):
            v = one_run(null, design, rng, 0.0)
            hits += any(verdict == cas.FAILS if k in ("7a", "7b") else verdict != cas.NS for k, verdict in v.items())
        rows.append(dict(design=name, chance=hits / sims))
    return pd.DataFrame(rows)


def from_claims_csv(path: Path) -> list[Effect]:
    """Effects measured by a finished run (its claims item's CSV: claims and the insensitivity variants)."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    out, group = [], ""
    for r in df.itertuples():
        if r.kind == "claim" and r.expected == "≈ 0":
            group = r.key
            continue
        if pd.isna(r.mean) or r.n_pairs < 2:
            continue
        out.append(Effect(r.key, r.expected, float(r.mean), float(r.ci), int(r.n_pairs),
                          group if r.kind == "detail" else ""))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=400, help="simulated pairs of runs per design")
    ap.add_argument("--tau", type=float, default=0.0, help="sd of a per-run shift of every effect (points)")
    ap.add_argument("--claims", type=Path, help="a finished run's report/claims_at_scale.csv (default: LAST_RUN)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(7)                 # the quick test is the report's test, on these samples
    for n in (6, 9, 18, 30):
        d = rng.normal(0.3, 1.0, n)
        fast, slow = quick_test(d), pair_test(pd.Series(d))
        assert all(math.isclose(fast[k], slow[k], rel_tol=1e-9) for k in ("mean", "ci", "p_wilcoxon")), (fast, slow)
    effects = from_claims_csv(args.claims) if args.claims else LAST_RUN
    flips = simulate(effects, args.sims, args.tau)
    table = flips.pivot(index="claim", columns="design", values="flip")[list(DESIGNS)]
    table = table.loc[list(dict.fromkeys(e.group or e.key for e in effects))]
    modal = flips.pivot(index="claim", columns="design", values="modal")[list(DESIGNS)].loc[table.index]
    print(f"Flip rate: how often two independent runs give a claim different verdicts ({args.sims} simulated pairs "
          f"of runs per design, tau = {args.tau:g}; Monte-Carlo sd ≤ {0.5 / math.sqrt(args.sims):.3f}):\n",
          table.to_markdown(floatfmt=".2f"),
          f"\nAny flip in the table: {', '.join(f'{d}: {v:.2f}' for d, v in table.sum().items())} "
          "(expected number of claims that flip)\n", "The most common verdict (share of simulated runs):\n",
          modal.to_markdown(), sep="\n")
    chance = chance_rate(effects, args.sims)
    print("\nEvery effect null: the share of runs in which some claim gets a verdict by chance:\n",
          chance.to_markdown(index=False, floatfmt=".3f"), sep="\n")


if __name__ == "__main__":
    main()
