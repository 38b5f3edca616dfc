"""Statistics of the report: a mean over seeds with its 95 % t interval, means and gains over tasks, and the
paired test of a gain across tasks × seeds (each (dataset, seed) one pair)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Stat:
    """A mean over seeds with the half-width of its 95 % t interval (nan with one seed)."""
    mean: float = math.nan
    ci: float = math.nan
    n: int = 0          # seeds
    tasks: int = 0      # datasets averaged per seed

    @property
    def ok(self) -> bool:
        return self.n > 0 and not math.isnan(self.mean)


def stat(values, tasks: int = 0) -> Stat:
    v = np.asarray([x for x in values if not pd.isna(x)], dtype=float)
    if len(v) == 0:
        return Stat(tasks=tasks)
    ci = math.nan
    if len(v) > 1:
        from scipy import stats

        ci = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return Stat(float(v.mean()), ci, len(v), tasks)


def by_task(rows: pd.DataFrame) -> pd.DataFrame:
    """dataset x seed table of top-1, keeping the datasets present for every seed."""
    if rows.empty:
        return pd.DataFrame()
    return rows.pivot_table(index="dataset", columns="seed", values="top1").dropna()


def complete(table: pd.DataFrame, need) -> bool:
    return len(table) > 0 and (need is None or set(need) <= set(table.index))


def mean_of(rows: pd.DataFrame, need=None) -> Stat:
    """Mean over datasets per seed, then mean and interval over seeds; nothing unless every dataset in
    `need` is there (so a mean is always over the same tasks)."""
    table = by_task(rows)
    return stat(table.mean(axis=0), len(table)) if complete(table, need) else Stat()


def gain_of(base: pd.DataFrame, other: pd.DataFrame, need=None) -> Stat:
    """(other − base), averaged over the datasets both have (all of `need`), per seed; then over seeds."""
    a, b = by_task(base), by_task(other)
    if a.empty or b.empty:
        return Stat()
    diff = (b - a).dropna(how="all").dropna(axis=1, how="all").dropna()
    return stat(diff.mean(axis=0), len(diff)) if complete(diff, need) else Stat()


MIN_PAIRS = 6        # fewer (dataset, seed) pairs: "too few pairs" (Wilcoxon cannot reach p < 0.05 below 6)
ALPHA = 0.05
PAIRING = ("each (dataset, seed) one pair: the same fine-tuned model with and without the change; Wilcoxon "
           "signed-rank (two-sided, zero differences dropped) and paired t over the pairs, mean difference ± "
           f"95 % t interval over the pairs; fewer than {MIN_PAIRS} pairs: too few pairs")


def pair_diffs(base: pd.DataFrame, other: pd.DataFrame) -> pd.Series:
    """(other − base) top-1 per (dataset, seed) present in both: the observations of a paired test."""
    if base.empty or other.empty:
        return pd.Series(dtype=float, index=pd.MultiIndex.from_tuples([], names=["dataset", "seed"]))
    a = base.groupby(["dataset", "seed"]).top1.mean()
    b = other.groupby(["dataset", "seed"]).top1.mean()
    return (b - a).dropna()


def pair_test(diffs: pd.Series) -> dict:
    """Paired test over tasks × seeds: `diffs` holds one difference per (dataset, seed) (index levels `dataset`,
    `seed`). Two-sided Wilcoxon signed-rank (zero_method "wilcox": zero differences dropped), paired t (a
    one-sample t of the differences), and the mean difference with the half-width of its 95 % t interval.
    `too_few`: fewer than MIN_PAIRS pairs. Not reported in the paper."""
    diffs = diffs.dropna()
    d = diffs.to_numpy(dtype=float)
    n = len(d)
    names = list(diffs.index.names) if n else []
    level = (lambda k: diffs.index.get_level_values(k).nunique() if k in names else 0)
    s = stat(d)
    out = {"n_pairs": n, "n_tasks": level("dataset"), "n_seeds": level("seed"), "mean": s.mean, "ci": s.ci,
           "p_wilcoxon": math.nan, "p_ttest": math.nan, "too_few": n < MIN_PAIRS}
    if n >= 2 and np.any(d != 0):
        import warnings

        from scipy import stats

        with warnings.catch_warnings():      # tiny samples: scipy warns; the p-value (or nan) stands
            warnings.simplefilter("ignore")
            out["p_wilcoxon"] = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
            if np.ptp(d) > 1e-9 * max(1.0, float(np.abs(d).max())):     # not constant up to rounding
                out["p_ttest"] = float(stats.ttest_1samp(d, 0.0).pvalue)
    return out


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order; nan stays nan and is not counted):
    the i-th smallest of m becomes max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting where the adjusted
    p < alpha keeps the chance of any false rejection in the family at most alpha, whatever the dependence."""
    ranked = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    out, running = [math.nan] * len(pvalues), 0.0
    for j, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - j) * p))
        out[i] = running
    return out
