"""Numbers and tables as text: one spelling of a mean ± interval, a p-value, a degree pair, a Markdown and a
LaTeX table."""
from __future__ import annotations

import math
import re

import pandas as pd

NOT_IN_GRID = "not in this run's grid"


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


def r_pair(source, target) -> str:
    return f"{source} → {target}"


def short(dataset: str) -> str:
    """A dataset's name without its benchmark prefix (vtab/dtd -> dtd)."""
    return dataset.split("/", 1)[1] if "/" in dataset else dataset


def markdown_table(df: pd.DataFrame) -> str:
    """Cells exactly as formatted (no re-parsing of "+0.0"), labels left, numbers right."""
    number = re.compile(r"^([+-]?[\d.]+(e[+-]?\d+)?( ± [\d.]+)?|—|)$")
    align = ["right" if c not in ("setting", "") and all(number.match(str(v)) for v in df[c]) else "left"
             for c in df.columns]
    return df.to_markdown(index=False, disable_numparse=True, colalign=align)


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
