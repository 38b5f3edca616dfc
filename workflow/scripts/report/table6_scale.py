"""Table 6: the LoRA scale s used when training ToCom (paper: 1, 0.1 (ours), 0.01), on VTAB-1k at the
ablation settings. s at inference is still chosen on val, from the Sec. 5.1 grid scaled by each plugin's own
training s / `evaluate.grid_scale` (the evaluator reads the training s from the plugin's header), so the
s = 1 plugin is searched over 0.1-1.5 rather than over 1 % - 15 % of what it learned; the `chosen s` columns
show the (scaled) values picked, averaged over tasks."""
from common.builders import ablation_table, variant_settings
from common.ctx import Ctx, run, select
from common.fmt import r_pair, show_number
from common.stats import mean_of
from common.table import stub
from items import Item


def train_scale(ctx: Ctx, variant: str) -> float:
    """The plugin's training s: from its header (plugins.csv), else the config."""
    p, role = ctx.table("plugins"), ctx.role("main")
    if len(p) and "train_scale" in p:
        rows = p[(p.backbone_key == role["backbone"]) & (p.method == role["method"]) & (p.variant == variant)]
        rows = rows[rows.train_scale.notna()]
        if len(rows):
            return float(rows.train_scale.iloc[0])
    return float(variant_settings(ctx, "main", variant)["scale"])


def chosen_s(ctx: Ctx, source, target, variant, tasks):
    """Test rows of the plugin at the chosen s, with s in place of top-1 (to average it like accuracy)."""
    ev = ctx.evals("main")
    rows = ev[(ev.source_r == source) & (ev.target_r == target) & (ev.tocom == 1) & (ev.variant == variant)
              & ev.selected.astype(bool) & ev.dataset.isin(list(tasks))]
    return rows[["dataset", "seed", "s"]].rename(columns={"s": "top1"})


def make(ctx: Ctx, item: Item) -> None:
    ev_cfg = ctx.config.get("evaluate", {})
    grid, grid_scale = list(ev_cfg.get("scales", [])), float(ev_cfg.get("grid_scale", 0.1))
    ours = ctx.plugin("main")
    variants, grids = [], []
    for v in dict.fromkeys([ours, *ctx.report["variants"]["scale"]]):
        s = train_scale(ctx, v)
        variants.append((v, f"s = {s:g}" + (" (ours)" if v == ours else ""), f"s{s:g}"))
        scaled = [x * s / grid_scale for x in grid]
        if scaled:
            grids.append((s, f"s = {s:g}: {show_number(min(scaled))}–{show_number(max(scaled))}"))
    variants.sort(key=lambda x: -train_scale(ctx, x[0]))
    grids.sort(key=lambda g: -g[0])
    caption = ("Plugins trained with different LoRA scales s. Each plugin was evaluated on the Sec. 5.1 s grid "
               f"scaled by its own training s / {grid_scale:g} (the grid's reference), so its inference s is chosen "
               f"on val from {'; '.join(g for _, g in grids) or 'the grid'}; `chosen s` is the mean over tasks of "
               "the (scaled) s picked.")
    t = ablation_table(ctx, item, caption, variants, "Table 6")
    if not t.has_data():
        return stub(ctx, item, "no VTAB-1k-role evaluation of the main role at the ablation settings")
    ev, tasks = ctx.evals("main"), ctx.vtab_all()
    need = [d for d in tasks if d in set(ev.dataset)]
    for source, target in (tuple(p) for p in ctx.report["degrees"]["ablation"]):
        for key, label, _ in variants:
            rows = chosen_s(ctx, source, target, key, tasks)
            if len(rows) and len(select(ev, source, target, key, tasks)):
                t.put("", label, f"{r_pair(source, target)} chosen s", mean_of(rows, need), digits=4)
    t.write()


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
