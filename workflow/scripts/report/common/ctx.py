"""The run's context: what a report script may read (the config that ran, its tidy tables, the paper's
numbers), where its outputs go (tocom.layout), how results are selected, and how a script's items are made.

Each script defines one function per item it makes, `make(ctx, item)` (or the name items.py gives) and ends
with
    if __name__ == "__main__":
        run(snakemake)
so Snakemake's `script:` directive makes every item of the script and the tests call `make(script, ctx)` on
a fabricated results folder.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pandas as pd

import items as registry
from common.fmt import NOT_IN_GRID
from tocom import layout

GROUPS = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}


class Ctx:
    """What a report script may read: the config that ran, its tidy tables and the paper's numbers."""

    def __init__(self, config: dict, run_dir, fig_dir, reference=None):
        self.config = config
        self.report = config["report"]
        self.name, self.scale = config["name"], config["scale"]
        self.run_dir, self.fig_dir = Path(run_dir), Path(fig_dir)
        self.paper = pd.read_csv(reference, keep_default_na=False, dtype=str) \
            if self.scale == "paper" and reference else None
        self.reads: set | None = None       # the tables the item being made declares (items.py); None: any
        self._cache: dict = {}

    @classmethod
    def from_snakemake(cls, sm) -> "Ctx":
        return cls(sm.params.config, sm.params.run_dir, sm.params.fig_dir, sm.input.get("paper_results"))

    # tables
    def table_path(self, name: str) -> Path:
        return self.run_dir / layout.TABLE.format(table=name)

    def table(self, name: str) -> pd.DataFrame:
        if self.reads is not None and name not in self.reads:
            raise RuntimeError(f"this report item reads {self.table_path(name)}, which is not among its tables in "
                               "workflow/scripts/report/items.py (so Snakemake would not wait for it): add it there")
        if name not in self._cache:
            path = self.table_path(name)
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

    def transfer(self) -> pd.DataFrame:
        """transfer.csv with `arith`: the task-arithmetic model (M_high^A − M_0^A + M_0^B) rather than M_0^B."""
        tr = self.table("transfer")
        return tr.assign(arith=tr.model != "M0_B") if len(tr) else tr

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
            return (f"Scale `paper`: the paper's reported numbers ({registry.REFERENCES['paper_results']}) are "
                    "shown beside ours with ours − paper.")
        return (f"Scale `{self.scale}`: this run is not the paper's set-up, so it is not compared with the "
                "paper's numbers; it shows the same table at its own scale.")

    def seed_note(self) -> str:
        n = len(self.seeds())
        return "1 seed, no interval." if n == 1 else \
            f"{n} seeds: mean ± half-width of the 95 % confidence interval (t distribution) over seeds."

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
        role, p = self.role(name), self.paper
        keep = ((p.source == source) & (p.dataset == dataset) & (p.tocom == str(tocom)) & (p.variant == variant)
                & (p.metric == metric) & (p.source_r == ("" if source_r is None else str(source_r)))
                & (p.target_r == ("" if target_r is None else str(target_r))))
        if role is not None:
            keep &= (p.backbone == self.config["backbones"][role["backbone"]]["timm"]) & (p.method == role["method"])
        rows = p[keep]
        return float(rows.value.iloc[0]) if len(rows) else None

    # outputs
    def out(self, stem: str, ext: str) -> Path:
        path = self.run_dir / layout.REPORT_ITEM.format(item=stem, ext=ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def fig_path(self, stem: str, ext: str) -> Path:
        path = self.fig_dir / layout.FIGURE.format(item=stem, ext=ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def report_path(self) -> Path:
        return self.run_dir / layout.REPORT

    def fig_link(self, stem: str) -> str:
        """Path of the PNG relative to the assembled report, where the items' Markdown ends up."""
        return os.path.relpath(self.fig_dir / layout.FIGURE.format(item=stem, ext=".png"), self.report_path().parent)


# ---- selecting results -------------------------------------------------------------------------------
def paper_dataset(name: str) -> str:
    """Our dataset name in the paper's naming (reference/README.md)."""
    if name.startswith("vtab/") and name[5:] not in ("natural", "specialized", "structured", "mean"):
        return name[5:]
    return "oxford_flowers102_fgvc" if name == "oxford_flowers102" else name


def select(ev: pd.DataFrame, source, target, variant: str | None = None, datasets=None) -> pd.DataFrame:
    """Test top-1 per dataset and seed: plain (variant None) or with a plugin at the s chosen on val."""
    rows = ev[(ev.source_r == source) & (ev.target_r == target)]
    rows = rows[rows.tocom == 0] if variant is None else \
        rows[(rows.tocom == 1) & (rows.variant == variant) & rows.selected.astype(bool)]
    if datasets is not None:
        rows = rows[rows.dataset.isin(list(datasets))]
    return rows[["dataset", "seed", "top1"]]


def present(datasets, ev: pd.DataFrame) -> list[str]:
    have = set(ev.dataset.unique()) if len(ev) else set()
    return [d for d in datasets if d in have]


def missing_note(role_datasets, used) -> list[str]:
    missing = [d for d in role_datasets if d not in used]
    return [f"Datasets of this role {NOT_IN_GRID}: {', '.join(missing)}."] if missing else []


# ---- making a script's items ---------------------------------------------------------------------------
def make(script: str, ctx: Ctx, module=None) -> None:
    """Every item of `script` (items.py), each by its function, reading only the tables it declares."""
    module = module or importlib.import_module(script)
    for item in registry.scripts()[script]:
        ctx.reads = set(item.tables)
        try:
            getattr(module, item.make)(ctx, item)
        finally:
            ctx.reads = None


def run(sm, make_items=None) -> None:
    """A script under Snakemake's `script:` directive, which runs it as __main__ (with its own path as
    __file__; `params.script` names it). The job's log gets the files written, or the error that stopped it.
    `make_items(ctx)`: instead of the script's items (the assembly)."""
    import traceback

    from tocom.io import write_text

    try:
        ctx = Ctx.from_snakemake(sm)
        if make_items is None:
            make(sm.params.script, ctx, sys.modules["__main__"])
        else:
            make_items(ctx)
    except BaseException:
        write_text(traceback.format_exc(), sm.log[0])
        raise
    write_text("".join(f"wrote {path}\n" for path in sm.output), sm.log[0])
