"""Shared helpers of the report scripts: the run's context, selecting results, statistics, tables,
figures and stubs.

Every report script reads result files only: the tidy tables under results/<name>/tables/, the
config that ran, and reference/paper_results.csv. Of the tocom package only torch-free modules are
imported: `tocom.io` (every file is written through its atomic, umask-honouring writers, so a killed
report job leaves no half-written item) and `tocom.settings` (the stages' field names and defaults).

Each script defines `make(ctx)` and ends with
    if __name__ == "__main__":
        make(Ctx.from_snakemake(snakemake))
so Snakemake's `script:` directive runs it and the tests call `make` on a fabricated results folder.

Every item writes one tidy CSV (columns CSV_COLUMNS): `kind=cell` rows are the numbers of the table
or figure (mean over seeds, 95 % t half-width, seeds, tasks, the paper's value and ours − paper when
the run's scale is `paper`); `kind=test` rows are paired tests of a gain across tasks × seeds (each
(dataset, seed) one pair; `n_pairs` pairs, mean difference ± 95 % t half-width over the pairs).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tocom.io import save_figure as write_figure
from tocom.io import write_csv, write_text

GROUPS = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}
NOT_IN_GRID = "not in this run's grid"
CSV_COLUMNS = ["kind", "block", "row", "column", "mean", "ci", "n_seeds", "n_tasks", "paper", "diff_paper",
               "p_wilcoxon", "p_ttest", "n_pairs"]
ROLE_TITLES = {"main": "main", "evit": "EViT", "idle": "IdleViT", "small": "DeiT-S role", "mae": "MAE role"}


# ---- statistics --------------------------------------------------------------------------------------
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


def paired_test(base: pd.DataFrame, other: pd.DataFrame) -> dict:
    """Paired test of (other − base) across tasks × seeds (pair_test of pair_diffs)."""
    return pair_test(pair_diffs(base, other))


# ---- formatting ----------------------------------------------------------------------------------
def fmt(value, digits: int = 1, signed: bool = False, ci: float = math.nan) -> str:
    if value is None or pd.isna(value):
        return "—"
    value = round(float(value), digits) + 0.0      # no "-0.0"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text if pd.isna(ci) else f"{text} ± {ci:.{digits}f}"


def show_number(x) -> str:
    """A setting's number, shortest exact form (0.1 * 10 -> 1, not 1.0000000000000002)."""
    return f"{round(float(x), 10):g}"


def fmt_p(p) -> str:
    return "—" if p is None or pd.isna(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def markdown_table(df: pd.DataFrame) -> str:
    """Cells exactly as formatted (no re-parsing of "+0.0"), labels left, numbers right."""
    number = re.compile(r"^([+-]?[\d.]+(e[+-]?\d+)?( ± [\d.]+)?|—|)$")
    align = ["right" if c not in ("setting", "") and all(number.match(str(v)) for v in df[c]) else "left"
             for c in df.columns]
    return df.to_markdown(index=False, disable_numparse=True, colalign=align)


def r_pair(source, target) -> str:
    return f"{source} → {target}"


def latex(df: pd.DataFrame, caption: str) -> str:
    def esc(s):
        s = str(s)
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("±", r"$\pm$"), ("→", r"$\to$"), ("−", "$-$"), ("Δ", r"$\Delta$"), ("—", "--"),
                     ("×", r"$\times$"), ("↳", ""), ("≈", r"$\approx$"), ("≥", r"$\geq$"), ("<", r"$<$"),
                     (">", r"$>$")):
            s = s.replace(a, b)
        return s

    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(caption)}}}",
             r"\begin{tabular}{" + "".join("l" if c in ("setting", "") else "r" for c in df.columns) + "}",
             r"\toprule", " & ".join(esc(c) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


# ---- the run's context ------------------------------------------------------------------------------
class Ctx:
    """What a report script may read: the config that ran, its tidy tables and the paper's numbers."""

    def __init__(self, config: dict, tables, report_dir, fig_dir, reference=None):
        self.config = config
        self.report = config["report"]
        self.name, self.scale = config["name"], config["scale"]
        self.tables, self.report_dir, self.fig_dir = Path(tables), Path(report_dir), Path(fig_dir)
        self.paper = None
        if self.scale == "paper" and reference:
            self.paper = pd.read_csv(reference, keep_default_na=False, dtype=str)
        self._cache: dict = {}

    @classmethod
    def from_snakemake(cls, sm) -> "Ctx":
        return cls(sm.params.config, sm.params.tables, sm.params.report_dir, sm.params.fig_dir,
                   sm.input.get("reference"))

    # tables
    def table(self, name: str) -> pd.DataFrame:
        if name not in self._cache:
            path = self.tables / f"{name}.csv"
            df = pd.read_csv(path) if path.exists() and path.stat().st_size else pd.DataFrame()
            if name == "eval" and len(df):
                df["selected"] = df["selected"].astype(str).str.lower().eq("true")
                df["variant"] = df["variant"].fillna("")
                df["checkpoint"] = df["checkpoint"].fillna("final") if "checkpoint" in df else "final"
            if name == "bench" and len(df):
                df["kind"] = df["kind"].fillna("throughput") if "kind" in df else "throughput"
            if name == "search" and len(df):
                df["chosen"] = df["chosen"].astype(str).str.lower().eq("true")
            self._cache[name] = df
        return self._cache[name]

    def throughput(self) -> pd.DataFrame:
        """bench.csv's Fig. 3 rows (`tocom bench`), without the plugin-check rows."""
        b = self.table("bench")
        return b[b.kind == "throughput"] if len(b) else b

    def plugin_checks(self) -> pd.DataFrame:
        """bench.csv's `tocom bench --plugin-check` rows (kind merged_throughput / switch); may be empty."""
        b = self.table("bench")
        return b[b.kind.isin(["merged_throughput", "switch"])] if len(b) else b

    def role(self, name: str) -> dict | None:
        return self.report.get(name)

    def plugin(self, name: str) -> str:
        """The plugin variant that is "ToCom" for a role (default `tocom`)."""
        return (self.role(name) or {}).get("variant", "tocom")

    def role_label(self, name: str) -> str:
        role = self.role(name)
        bb = self.config["backbones"][role["backbone"]]["timm"]
        return f"`{role['backbone']}` ({bb}), {role['method']}"

    def evals(self, name: str) -> pd.DataFrame:
        """Test-split rows of a role (backbone key and method); empty if the role or its rows are absent."""
        role, ev = self.role(name), self.table("eval")
        if role is None or ev.empty:
            return pd.DataFrame(columns=["dataset", "source_r", "target_r", "tocom", "variant", "split", "seed",
                                         "top1", "selected"])
        return ev[(ev.split == "test") & (ev.checkpoint == "final") & (ev.backbone_key == role["backbone"])
                  & (ev.method == role["method"])]

    def vtab(self) -> dict[str, list[str]]:
        return {g: list(self.report["vtab_groups"].get(g, [])) for g in GROUPS}

    def vtab_all(self) -> list[str]:
        return [d for ds in self.vtab().values() for d in ds]

    def seeds(self) -> list[int]:
        return list(self.config.get("seeds", [0]))

    # captions
    def scale_note(self) -> str:
        if self.scale == "paper":
            return ("Scale `paper`: the paper's reported numbers (reference/paper_results.csv) are shown beside "
                    "ours with ours − paper.")
        return (f"Scale `{self.scale}`: this run is not the paper's set-up, so it is not compared with the "
                "paper's numbers; it shows the same table at its own scale.")

    def seed_note(self) -> str:
        n = len(self.seeds())
        if n == 1:
            return "1 seed, no interval."
        return f"{n} seeds: mean ± half-width of the 95 % confidence interval (t distribution) over seeds."

    def speedup(self, name: str, r: int, mode: str = "infer") -> float | None:
        """Measured throughput ratio over r = 0 from bench.csv, for the role's backbone key and method."""
        b, role = self.throughput(), self.role(name)
        if b.empty or role is None:
            return None
        rows = b[(b.backbone_key == role["backbone"]) & (b.method == role["method"]) & (b["mode"] == mode)
                 & (b.r == r)]
        return float(rows.speedup.iloc[0]) if len(rows) else None

    def speed_note(self, r: int, mode: str, paper_source: str) -> str:
        """` (1.85× measured inference speed-up; paper 1.9×)` for a block header of Tables 2-4."""
        up, kind = self.speedup("main", r, mode), {"infer": "inference", "train": "training"}[mode]
        paper = self.paper_value(paper_source, "main", "", None if mode == "infer" else r,
                                 r if mode == "infer" else None, 0, "", f"{kind}_speedup")
        parts = ([f"{up:.2f}× measured {kind} speed-up"] if up else []) + ([f"paper {paper:g}×"] if paper else [])
        return f" ({'; '.join(parts)})" if parts else ""

    # the paper's numbers
    def paper_value(self, source: str, name: str = "main", dataset: str = "", source_r=None, target_r=None,
                    tocom: int = 0, variant: str = "", metric: str = "top1") -> float | None:
        if self.paper is None:
            return None
        role = self.role(name)
        p = self.paper
        keep = ((p.source == source) & (p.dataset == dataset) & (p.tocom == str(tocom)) & (p.variant == variant)
                & (p.metric == metric) & (p.source_r == ("" if source_r is None else str(source_r)))
                & (p.target_r == ("" if target_r is None else str(target_r))))
        if role is not None:
            keep &= (p.backbone == self.config["backbones"][role["backbone"]]["timm"]) & (p.method == role["method"])
        rows = p[keep]
        return float(rows.value.iloc[0]) if len(rows) else None

    # outputs
    def out(self, stem: str, ext: str) -> Path:
        path = self.report_dir / f"{stem}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def fig_path(self, stem: str, ext: str) -> Path:
        path = self.fig_dir / f"{stem}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def fig_link(self, stem: str) -> str:
        """Path of the PNG relative to results/<name>/report.md, where the fragments are assembled."""
        return os.path.relpath(self.fig_dir / f"{stem}.png", self.report_dir.parent)


def paper_dataset(name: str) -> str:
    """Our dataset name in the paper's naming (reference/README.md)."""
    if name.startswith("vtab/") and name[5:] not in ("natural", "specialized", "structured", "mean"):
        return name[5:]
    return "oxford_flowers102_fgvc" if name == "oxford_flowers102" else name


def select(ev: pd.DataFrame, source, target, variant: str | None = None, datasets=None) -> pd.DataFrame:
    """Test top-1 per dataset and seed: plain (variant None) or with a plugin at the s chosen on val."""
    rows = ev[(ev.source_r == source) & (ev.target_r == target)]
    if variant is None:
        rows = rows[rows.tocom == 0]
    else:
        rows = rows[(rows.tocom == 1) & (rows.variant == variant) & rows.selected.astype(bool)]
    if datasets is not None:
        rows = rows[rows.dataset.isin(list(datasets))]
    return rows[["dataset", "seed", "top1"]]


# ---- tables ---------------------------------------------------------------------------------------
@dataclass
class Table:
    """A reproduced table: cells (block, row, column) -> Stat, the paper's value beside, paired tests."""
    ctx: Ctx
    stem: str
    title: str
    caption: str
    notes: list = field(default_factory=list)
    cells: dict = field(default_factory=dict)
    tests: list = field(default_factory=list)
    columns: list = field(default_factory=list)
    seeded: bool = True     # cells are means over seeds (not, e.g., throughput)

    def put(self, block, row, column, value: Stat, paper: float | None = None, signed=False, digits=1) -> Stat:
        if column not in self.columns:
            self.columns.append(column)
        self.cells[(block, row, column)] = (value, paper, signed, digits)
        return value

    def test(self, block, row, base: pd.DataFrame, other: pd.DataFrame) -> None:
        self.tests.append((block, row, paired_test(base, other)))

    def has_data(self) -> bool:
        return any(v.ok for v, *_ in self.cells.values())

    def frame(self) -> pd.DataFrame:
        recs = []
        for (block, row, col), (v, paper, *_rest) in self.cells.items():
            recs.append({"kind": "cell", "block": block, "row": row, "column": col, "mean": v.mean, "ci": v.ci,
                         "n_seeds": v.n, "n_tasks": v.tasks, "paper": paper,
                         "diff_paper": v.mean - paper if paper is not None and v.ok else None})
        for block, row, t in self.tests:
            recs.append({"kind": "test", "block": block, "row": row, "column": "gain", "mean": t["mean"],
                         "ci": t["ci"], "n_seeds": t["n_seeds"], "n_tasks": t["n_tasks"],
                         "p_wilcoxon": t["p_wilcoxon"], "p_ttest": t["p_ttest"], "n_pairs": t["n_pairs"]})
        return pd.DataFrame(recs, columns=CSV_COLUMNS)

    def row_keys(self) -> list:
        return list(dict.fromkeys((block, row) for block, row, _ in self.cells))

    def missing_rows(self) -> list[str]:
        """Rows with no result at all: left out of the display and named in a note."""
        return [f"{b} / {r}" if b else r for b, r in self.row_keys()
                if not any(v.ok for (b2, r2, _), (v, *_x) in self.cells.items() if (b2, r2) == (b, r))]

    def display(self) -> pd.DataFrame:
        """Wide table of strings; under scale `paper` a `↳ paper` and `↳ ours − paper` row follow each row."""
        rows, seen = [], self.row_keys()
        with_blocks = any(b for b, _ in seen)
        last_block = None
        for block, row in seen:
            cells = {c: self.cells.get((block, row, c)) for c in self.columns}
            if not any(c and c[0].ok for c in cells.values()):
                continue
            head = [block if block != last_block else ""] if with_blocks else []
            last_block = block
            rows.append(head + [row] + [fmt(c[0].mean, c[3], c[2], c[0].ci) if c else "" for c in cells.values()])
            if self.ctx.paper is not None and any(c and c[1] is not None for c in cells.values()):
                blank = [""] if with_blocks else []
                rows.append(blank + ["↳ paper"] + [fmt(c[1], c[3], c[2]) if c and c[1] is not None else "—"
                                                  for c in cells.values()])
                rows.append(blank + ["↳ ours − paper"] + [
                    fmt(c[0].mean - c[1], c[3], True) if c and c[1] is not None and c[0].ok else "—"
                    for c in cells.values()])
        names = (["setting"] if with_blocks else []) + [""] + list(self.columns)
        return pd.DataFrame(rows, columns=names)

    def tests_markdown(self) -> list[str]:
        tests = [t for t in self.tests if t[2]["n_pairs"] >= 2]
        if not tests:
            return []
        df = pd.DataFrame([{"setting": b, "": r, "pairs": f"{t['n_pairs']}" + (" (too few)" if t["too_few"] else ""),
                            "tasks × seeds": f"{t['n_tasks']} × {t['n_seeds']}",
                            "mean gain": fmt(t["mean"], 2, True, t["ci"]),
                            "Wilcoxon p": fmt_p(t["p_wilcoxon"]), "paired t p": fmt_p(t["p_ttest"])}
                           for b, r, t in tests])
        return [f"Paired test of the gain across tasks × seeds ({PAIRING}; not reported in the paper):",
                "", markdown_table(df), ""]

    def markdown(self, image: str | None = None) -> str:
        lines = [f"### {self.title}", ""] + ([f"![{self.title}]({image})", ""] if image else [])
        seeds = f" {self.ctx.seed_note()}" if self.seeded else ""
        lines += [f"{self.caption} {self.ctx.scale_note()}{seeds}", ""]
        disp = self.display()
        lines += [markdown_table(disp) if len(disp) else f"*No rows: {NOT_IN_GRID}.*", ""]
        missing = self.missing_rows()
        notes = self.notes + ([f"Rows {NOT_IN_GRID}: {'; '.join(missing)}."] if missing else [])
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
        return "\n".join(lines + self.tests_markdown())

    def write(self, figure: str | None = None) -> None:
        """Markdown, LaTeX and CSV of a table; for a figure (its stem given), Markdown with the image and CSV."""
        write_text(self.markdown(self.ctx.fig_link(figure) if figure else None), self.ctx.out(self.stem, ".md"))
        if figure is None:
            write_text(latex(self.display(), f"{self.title}. {self.caption}"), self.ctx.out(self.stem, ".tex"))
        write_csv(self.frame(), self.ctx.out(self.stem, ".csv"))


def stub(ctx: Ctx, stem: str, title: str, reason: str, figure: bool = False) -> None:
    """An item this run's config does not produce: labelled, never silently missing."""
    text = f"### {title}\n\n> **Not in this run's grid** ({ctx.name}, scale `{ctx.scale}`): {reason}\n"
    write_text(text, ctx.out(stem, ".md"))
    write_csv(pd.DataFrame(columns=CSV_COLUMNS), ctx.out(stem, ".csv"))
    if figure:
        fig, ax = new_figure(1)
        ax[0].text(0.5, 0.5, f"{title}\nnot in this run's grid:\n{reason}", ha="center", va="center", wrap=True)
        ax[0].axis("off")
        save_figure(ctx, fig, stem)
    else:
        write_text(f"% {title}: not in this run's grid: {reason}\n", ctx.out(stem, ".tex"))


# ---- figures --------------------------------------------------------------------------------------
def new_figure(panels: int, width: float = 3.2, height: float = 2.8, cols: int | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = cols or min(panels, 3)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    return fig, list(axes.flat[:panels])


def save_figure(ctx: Ctx, fig, stem: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    write_figure(fig, ctx.fig_path(stem, ".png"), dpi=130, metadata={"Software": None})
    write_figure(fig, ctx.fig_path(stem, ".pdf"), metadata={"CreationDate": None, "Producer": None})
    plt.close(fig)


def plot_line(ax, xs, stats_: list[Stat], label: str, **kw) -> None:
    pts = [(x, s) for x, s in zip(xs, stats_) if s.ok]
    if not pts:
        return
    x = [p[0] for p in pts]
    y = [p[1].mean for p in pts]
    err = [0 if math.isnan(p[1].ci) else p[1].ci for p in pts]
    ax.errorbar(x, y, yerr=err if any(err) else None, label=label, marker="o", ms=3.5, capsize=2, **kw)


def present(datasets, ev: pd.DataFrame) -> list[str]:
    have = set(ev.dataset.unique()) if len(ev) else set()
    return [d for d in datasets if d in have]


def missing_note(role_datasets, used) -> list[str]:
    missing = [d for d in role_datasets if d not in used]
    return [f"Datasets of this role {NOT_IN_GRID}: {', '.join(missing)}."] if missing else []


def write_plain(ctx: Ctx, stem: str, title: str, caption: str, df: pd.DataFrame) -> None:
    """A table of settings (no statistics): Markdown, LaTeX and CSV."""
    df = df.map(lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else
                (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)))
    write_text(f"### {title}\n\n{caption}\n\n{markdown_table(df)}\n", ctx.out(stem, ".md"))
    write_text(latex(df, f"{title}. {caption}"), ctx.out(stem, ".tex"))
    write_csv(df, ctx.out(stem, ".csv"))


# ---- builders shared by several items -------------------------------------------------------------------
def short(dataset: str) -> str:
    return dataset.split("/", 1)[1] if "/" in dataset else dataset


def vtab_row(ctx: Ctx, t: Table, name: str, block, row, source, target, tocom: bool, groups,
             per_task: bool = False, paper_source: str | None = None) -> None:
    """One row of a VTAB-1k table: per-task top-1 (optional), group means and, for a ToCom row (the role's
    plugin), the gain over the plain model at the same source/target (Δ), with a paired test across tasks."""
    ev, vt = ctx.evals(name), ctx.vtab()
    variant, pvar = (ctx.plugin(name), "tocom") if tocom else (None, "")
    evaluated = set(ev.dataset)

    def paper(dataset, metric="top1"):
        if paper_source:
            return ctx.paper_value(paper_source, name, dataset, source, target, int(tocom), pvar, metric)

    for g in groups:  # columns in the paper's order: tasks, group mean, its Δ
        for col in ([short(d) for d in vt[g]] if per_task else []) + [GROUPS[g], f"{GROUPS[g]} Δ"]:
            if col not in t.columns:
                t.columns.append(col)
    all_rows, all_base = [], []
    for g in groups:
        rows = select(ev, source, target, variant, vt[g])
        if per_task:
            for d in vt[g]:
                t.put(block, row, short(d), mean_of(rows[rows.dataset == d]), paper(paper_dataset(d)))
        need = [d for d in vt[g] if d in evaluated]
        t.put(block, row, GROUPS[g], mean_of(rows, need), paper(f"vtab/{g}"))
        if variant is not None:
            base = select(ev, source, target, None, vt[g])
            t.put(block, row, f"{GROUPS[g]} Δ", gain_of(base, rows, need), paper(f"vtab/{g}", "delta"), signed=True)
            all_rows.append(rows)
            all_base.append(base)
    if variant is not None:
        t.test(block, row, pd.concat(all_base), pd.concat(all_rows))


def group_table(ctx: Ctx, name: str, stem: str, title: str, caption: str, paper_source: str | None,
                pairs) -> None:
    """Tables 8-10 and IdleViT: VTAB-1k group means per (source, target), plain and + ToCom."""
    role = ctx.role(name)
    if role is None or ctx.evals(name).empty:
        why = "no such role in the config's `report` section" if role is None else \
            f"no evaluation of {ctx.role_label(name)} in this run"
        return stub(ctx, stem, title, why)
    t = Table(ctx, stem, title, f"{caption} Role {ctx.role_label(name)}; VTAB-1k group means of test top-1 (%).")
    for source, target in pairs:
        block = f"source r = {source} → target r = {target}"
        for label, tocom in ((f"source r = {source}", False), ("+ ToCom", True)):
            vtab_row(ctx, t, name, block, label, source, target, tocom, GROUPS, paper_source=paper_source)
    t.notes += group_notes(ctx, name)
    if not t.has_data():
        return stub(ctx, stem, title, f"no result of {ctx.role_label(name)} at {pairs}")
    t.write()


def group_notes(ctx: Ctx, name: str) -> list[str]:
    ev = ctx.evals(name)
    notes = [f"{GROUPS[g]}: {', '.join(ds) or '—'}" for g, ds in ctx.vtab().items()]
    missing = [d for d in ctx.vtab_all() if d not in set(ev.dataset)]
    if missing:
        notes.append(f"VTAB-1k tasks of this role {NOT_IN_GRID} (left out of the means): {', '.join(missing)}.")
    return ["Groups — " + "; ".join(notes[:3]) + "."] + notes[3:]


def compensation_figure(ctx: Ctx, name: str, stem: str, title: str, source: int, above: bool,
                        paper_source: str | None = None) -> None:
    """Figs. 5, 6, 7 (and IdleViT): CIFAR-100 + FGVC top-1 vs target r at one source r, plain and + ToCom,
    with the model fine-tuned at source = target as reference; one panel per dataset and their mean."""
    ev = ctx.evals(name)
    ds = present(ctx.report["cifar_fgvc"], ev[ev.source_r == source])
    targets = sorted({int(x) for x in ev[(ev.source_r == source) & ev.dataset.isin(ds)].target_r
                      if (x > source if above else x < source)})
    if ctx.role(name) is None or not ds or not targets:
        return stub(ctx, stem, title, f"no CIFAR-100/FGVC-role evaluation of role `{name}` at source r = {source} "
                                      f"with targets {'above' if above else 'below'} it", figure=True)
    t = Table(ctx, stem, title, f"Role {ctx.role_label(name)}; test top-1 (%) of models fine-tuned at source "
                                f"r = {source}, evaluated at each target r, plain and with ToCom (s chosen on val); "
                                "`source = target` is the model fine-tuned at the target r (reference).")
    fig, axes = new_figure(len(ds) + 1)
    for ax, d in zip(axes, ds + ["mean"]):
        sel = ds if d == "mean" else [d]
        lines = {f"source r = {source}": [select(ev, source, x, None, sel) for x in targets],
                 "+ ToCom": [select(ev, source, x, ctx.plugin(name), sel) for x in targets],
                 "source = target": [select(ev, x, x, None, sel) for x in targets]}
        for (label, rows), style in zip(lines.items(), ("--", "-", ":")):
            stats_ = [t.put(d, label, f"r = {x}", mean_of(r, sel)) for x, r in zip(targets, rows)]
            plot_line(ax, targets, stats_, label, linestyle=style)
        for x, base, comp in zip(targets, lines[f"source r = {source}"], lines["+ ToCom"]):
            paper = ctx.paper_value(paper_source, name, "cifar100+fgvc/mean", source, x, 1, "tocom", "delta") \
                if paper_source and d == "mean" else None
            t.put(d, "Δ ToCom", f"r = {x}", gain_of(base, comp, sel), paper, signed=True)
            if d == "mean":
                t.test(f"target r = {x}", "+ ToCom vs plain", base, comp)
        ax.set_title("mean" if d == "mean" else d, fontsize=9)
        ax.set_xlabel("target r")
        ax.set_ylabel("top-1 (%)")
        ax.set_xticks(targets)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"{title}: {ctx.name} run", fontsize=9)
    save_figure(ctx, fig, stem)
    t.notes += missing_note(ctx.report["cifar_fgvc"], ds)
    t.write(figure=stem)


def variant_settings(ctx: Ctx, name: str, variant: str) -> dict:
    """A plugin's distillation settings as configured: DistillSettings' defaults, `distill`, the backbone's
    and the variant's overrides (the plugins' headers, plugins.csv, record what actually ran)."""
    from tocom.settings import DistillSettings     # torch-free: the defaults a config may leave out

    bb = ctx.config["backbones"][ctx.role(name)["backbone"]]
    return {**DistillSettings().asdict(), **ctx.config["distill"], **bb.get("distill", {}),
            **ctx.config["variants"].get(variant, {})}


def ablation_label(ctx: Ctx, variant: str) -> str:
    """Table 5's row name for an ablation plugin, from what it changes (Table 5 and the claims share it)."""
    s = variant_settings(ctx, "main", variant)
    parts = []
    if s["variant"] == "shared":
        parts.append(f"Shared LoRA (h = {s['rank']})")
    if s["variant"] == "no_inversion":
        parts.append("No inversion")
    if s["loss"] != "kd":
        parts.append(f"{s['loss'].upper()} loss")
    return " + ".join(parts) or variant


def ablation_table(ctx: Ctx, stem: str, title: str, caption: str, variants, paper_source: str) -> Table:
    """Tables 5-7: VTAB-1k mean over all tasks per (source, target) of the config's ablation settings;
    `variants` are (variant key, label, paper variant name)."""
    ev, tasks = ctx.evals("main"), ctx.vtab_all()
    need = [d for d in tasks if d in set(ev.dataset)]
    pairs = [tuple(p) for p in ctx.report["degrees"]["ablation"]]
    t = Table(ctx, stem, title, f"{caption} Role {ctx.role_label('main')}; mean test top-1 (%) over the "
                                f"{len(need)} VTAB-1k tasks evaluated; Δ = gain over the baseline.")

    def paper(source, target, tocom=0, variant="", metric="top1"):
        return ctx.paper_value(paper_source, "main", "vtab/mean", source, target, tocom, variant, metric)

    for source, target in pairs:
        col = r_pair(source, target)
        base = select(ev, source, target, None, tasks)
        t.put("", "Baseline", col, mean_of(base, need), paper(source, target))
        for key, label, pvar in variants:
            rows = select(ev, source, target, key, tasks)
            t.put("", label, col, mean_of(rows, need), paper(source, target, 1, pvar))
            t.put("", label, f"{col} Δ", gain_of(base, rows, need), paper(source, target, 1, pvar, "delta"),
                  signed=True)
            t.test(col, label, base, rows)
    missing = [k for k, *_ in variants if k not in set(ev.variant)]
    if missing:
        t.notes.append(f"Plugins {NOT_IN_GRID}: {', '.join(missing)}.")
    if len(need) < len(tasks):
        t.notes.append(f"VTAB-1k tasks {NOT_IN_GRID}: {', '.join(d for d in tasks if d not in need)}.")
    return t
