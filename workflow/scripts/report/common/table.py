"""A reproduced table: cells of means over seeds beside the paper's values, paired tests, and its files
(Markdown, LaTeX, CSV); tables of settings without statistics; stubs for items a run does not produce.

Every item writes one tidy CSV (columns CSV_COLUMNS): `kind=cell` rows are the numbers of the table or figure
(mean over seeds, 95 % t half-width, seeds, tasks, the paper's value and ours − paper when the run's scale is
`paper`); `kind=test` rows are paired tests of a gain across tasks × seeds (each (dataset, seed) one pair;
`n_pairs` pairs, mean difference ± 95 % t half-width over the pairs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from common.ctx import Ctx
from common.figure import new_figure, save_figure
from common.fmt import NOT_IN_GRID, fmt, fmt_p, latex, markdown_table
from common.stats import PAIRING, Stat, pair_diffs, pair_test
from items import FIGURE, Item
from tocom.io import write_csv, write_text

CSV_COLUMNS = ["kind", "block", "row", "column", "mean", "ci", "n_seeds", "n_tasks", "paper", "diff_paper",
               "p_wilcoxon", "p_ttest", "n_pairs"]


@dataclass
class Table:
    """A reproduced table: cells (block, row, column) -> Stat, the paper's value beside, paired tests."""
    ctx: Ctx
    item: Item
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
        self.tests.append((block, row, pair_test(pair_diffs(base, other))))

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
        title = self.item.title
        lines = [f"### {title}", ""] + ([f"![{title}]({image})", ""] if image else [])
        seeds = f" {self.ctx.seed_note()}" if self.seeded else ""
        lines += [f"{self.caption} {self.ctx.scale_note()}{seeds}", ""]
        disp = self.display()
        lines += [markdown_table(disp) if len(disp) else f"*No rows: {NOT_IN_GRID}.*", ""]
        missing = self.missing_rows()
        notes = self.notes + ([f"Rows {NOT_IN_GRID}: {'; '.join(missing)}."] if missing else [])
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
        return "\n".join(lines + self.tests_markdown())

    def write(self) -> None:
        """A table's Markdown, LaTeX and CSV; a figure's Markdown (with the image) and CSV."""
        stem = self.item.stem
        figure = self.item.kind == FIGURE
        write_text(self.markdown(self.ctx.fig_link(stem) if figure else None), self.ctx.out(stem, ".md"))
        if not figure:
            write_text(latex(self.display(), f"{self.item.title}. {self.caption}"), self.ctx.out(stem, ".tex"))
        write_csv(self.frame(), self.ctx.out(stem, ".csv"))

    def finish(self, reason: str) -> None:
        """Write the table, or a stub giving `reason` when no cell has a result."""
        if not self.has_data():
            return stub(self.ctx, self.item, reason)
        self.write()


def stub(ctx: Ctx, item: Item, reason: str) -> None:
    """An item this run's config does not produce: labelled, never silently missing."""
    title, stem = item.title, item.stem
    text = f"### {title}\n\n> **Not in this run's grid** ({ctx.name}, scale `{ctx.scale}`): {reason}\n"
    write_text(text, ctx.out(stem, ".md"))
    write_csv(pd.DataFrame(columns=CSV_COLUMNS), ctx.out(stem, ".csv"))
    if item.kind == FIGURE:
        fig, ax = new_figure(1)
        ax[0].text(0.5, 0.5, f"{title}\nnot in this run's grid:\n{reason}", ha="center", va="center", wrap=True)
        ax[0].axis("off")
        save_figure(ctx, fig, stem)
    else:
        write_text(f"% {title}: not in this run's grid: {reason}\n", ctx.out(stem, ".tex"))


def write_plain(ctx: Ctx, item: Item, caption: str, df: pd.DataFrame) -> None:
    """A table of settings (no statistics): Markdown, LaTeX and CSV."""
    df = df.map(lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else
                (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)))
    write_text(f"### {item.title}\n\n{caption}\n\n{markdown_table(df)}\n", ctx.out(item.stem, ".md"))
    write_text(latex(df, f"{item.title}. {caption}"), ctx.out(item.stem, ".tex"))
    write_csv(df, ctx.out(item.stem, ".csv"))
