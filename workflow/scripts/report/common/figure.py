"""Figures: matplotlib (Agg) panels, error-bar lines, and saving as PNG and PDF with fixed metadata (so a
rerun on the same results writes the same bytes)."""
from __future__ import annotations

import math

from common.stats import Stat
from tocom.io import save_figure as write_figure


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


def save_figure(ctx, fig, stem: str) -> None:
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
