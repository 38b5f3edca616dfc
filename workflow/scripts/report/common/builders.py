"""The tables and figures several items share: a VTAB-1k row (Tables 2-4 and the group tables), the group
tables (Tables 8-10, IdleViT), the compensation figures (Figs. 5-7, IdleViT), the ablation tables (Tables
5-7) and the plugin settings they are labelled with."""
from __future__ import annotations

import pandas as pd

from common.ctx import GROUPS, Ctx, missing_note, paper_dataset, present, select
from common.figure import new_figure, plot_line, save_figure
from common.fmt import NOT_IN_GRID, r_pair, short
from common.stats import gain_of, mean_of
from common.table import Table, stub
from items import Item


def vtab_row(ctx: Ctx, t: Table, name: str, block, row, source, target, tocom: bool, groups,
             per_task: bool = False, paper_source: str | None = None, paper_pair: tuple | None = None) -> None:
    """One row of a VTAB-1k table: per-task top-1 (optional), group means and, for a ToCom row (the role's
    plugin), the gain over the plain model at the same source/target (Δ), with a paired test across tasks.
    `paper_pair`: the (source, target) the paper's numbers are filed under, when not this row's (another
    reading of an inferred block)."""
    ev, vt = ctx.evals(name), ctx.vtab()
    variant, pvar = (ctx.plugin(name), "tocom") if tocom else (None, "")
    evaluated = set(ev.dataset)
    paper_source_r, paper_target_r = paper_pair or (source, target)

    def paper(dataset, metric="top1"):
        if paper_source:
            return ctx.paper_value(paper_source, name, dataset, paper_source_r, paper_target_r, int(tocom), pvar,
                                   metric)

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


def group_table(ctx: Ctx, item: Item, name: str, caption: str, paper_source: str | None) -> None:
    """Tables 8-10 and IdleViT: VTAB-1k group means per (source, target) of `degrees.other`, plain and + ToCom.
    The paper's block labels are inferred (reference/README.md): each `report.degrees.other_readings` entry [pair,
    other] adds a block at `other`, beside the paper's numbers filed under `pair`, when this run has results there."""
    role = ctx.role(name)
    if role is None or ctx.evals(name).empty:
        why = "no such role in the config's `report` section" if role is None else \
            f"no evaluation of {ctx.role_label(name)} in this run"
        return stub(ctx, item, why)
    t = Table(ctx, item, f"{caption} Role {ctx.role_label(name)}; VTAB-1k group means of test top-1 (%).")
    ev, pairs = ctx.evals(name), [tuple(p) for p in ctx.report["degrees"]["other"]]
    readings = [(tuple(other), tuple(pair)) for pair, other in ctx.report["degrees"].get("other_readings", [])
                if tuple(pair) in pairs and len(select(ev, *other, None, ctx.vtab_all()))]
    for (source, target), paper_pair in [(p, p) for p in pairs] + readings:
        block = f"source r = {source} → target r = {target}"
        if paper_pair != (source, target):
            block += f" (the other reading of the paper's {r_pair(*paper_pair)} block)"
        for label, tocom in ((f"source r = {source}", False), ("+ ToCom", True)):
            vtab_row(ctx, t, name, block, label, source, target, tocom, GROUPS, paper_source=paper_source,
                     paper_pair=paper_pair)
    for (source, target), paper_pair in readings:
        t.notes.append(f"The paper's block labels are lost (reference/README.md): the block filed as "
                       f"{r_pair(*paper_pair)} may be {r_pair(source, target)}; this run evaluates both, and each "
                       "block shows that block's paper numbers.")
    t.notes += group_notes(ctx, name)
    t.finish(f"no result of {ctx.role_label(name)} at {pairs}")


def group_notes(ctx: Ctx, name: str) -> list[str]:
    ev = ctx.evals(name)
    notes = [f"{GROUPS[g]}: {', '.join(ds) or '—'}" for g, ds in ctx.vtab().items()]
    missing = [d for d in ctx.vtab_all() if d not in set(ev.dataset)]
    if missing:
        notes.append(f"VTAB-1k tasks of this role {NOT_IN_GRID} (left out of the means): {', '.join(missing)}.")
    return ["Groups — " + "; ".join(notes[:3]) + "."] + notes[3:]


def compensation_figure(ctx: Ctx, item: Item, name: str, source: int, above: bool,
                        paper_source: str | None = None) -> None:
    """Figs. 5, 6, 7 (and IdleViT): CIFAR-100 + FGVC top-1 vs target r at one source r, plain and + ToCom,
    with the model fine-tuned at source = target as reference; one panel per dataset and their mean."""
    ev = ctx.evals(name)
    ds = present(ctx.report["cifar_fgvc"], ev[ev.source_r == source])
    targets = sorted({int(x) for x in ev[(ev.source_r == source) & ev.dataset.isin(ds)].target_r
                      if (x > source if above else x < source)})
    if ctx.role(name) is None or not ds or not targets:
        return stub(ctx, item, f"no CIFAR-100/FGVC-role evaluation of role `{name}` at source r = {source} "
                               f"with targets {'above' if above else 'below'} it")
    t = Table(ctx, item, f"Role {ctx.role_label(name)}; test top-1 (%) of models fine-tuned at source "
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
        ax.set_title(d, fontsize=9)
        ax.set(xlabel="target r", ylabel="top-1 (%)", xticks=targets)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"{item.title}: {ctx.name} run", fontsize=9)
    save_figure(ctx, fig, item.stem)
    t.notes += missing_note(ctx.report["cifar_fgvc"], ds)
    t.write()


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


def ablation_table(ctx: Ctx, item: Item, caption: str, variants, paper_source: str) -> Table:
    """Tables 5-7: VTAB-1k mean over all tasks per (source, target) of the config's ablation settings;
    `variants` are (variant key, label, paper variant name)."""
    ev, tasks = ctx.evals("main"), ctx.vtab_all()
    need = [d for d in tasks if d in set(ev.dataset)]
    pairs = [tuple(p) for p in ctx.report["degrees"]["ablation"]]
    t = Table(ctx, item, f"{caption} Role {ctx.role_label('main')}; mean test top-1 (%) over the "
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
