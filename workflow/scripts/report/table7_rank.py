"""Table 7: ToCom's LoRA rank h (paper: 1, 2 (ours), 4, 8) on VTAB-1k at the ablation settings, with each
plugin's parameter count read from its safetensors header (plugins.csv)."""
from common.builders import ablation_table, variant_settings
from common.ctx import Ctx, run
from common.stats import Stat
from items import Item


def make(ctx: Ctx, item: Item) -> None:
    variants, ours = [], ctx.plugin("main")
    for v in [ours, *ctx.report["variants"]["rank"]]:
        h = variant_settings(ctx, "main", v)["rank"]
        variants.append((v, f"h = {h}" + (" (ours)" if v == ours else ""), f"h{h}"))
    variants.sort(key=lambda x: variant_settings(ctx, "main", x[0])["rank"])
    t = ablation_table(ctx, item, "Plugins with different LoRA ranks h; # params = R groups × depth × (q, v) × "
                                  "(A, B) × width × h, in millions.", variants, "Table 7")
    plugins, role = ctx.table("plugins"), ctx.role("main")
    for v, label, pvar in variants:
        rows = plugins[(plugins.backbone_key == role["backbone"]) & (plugins.method == role["method"])
                       & (plugins.variant == v)] if len(plugins) else plugins
        params = Stat(rows.params.iloc[0] / 1e6, n=1) if len(rows) else Stat()
        paper = ctx.paper_value("Table 7", "main", "", None, None, 1, pvar, "params_M")
        t.put("", label, "# params (M)", params, paper, digits=2 if ctx.scale == "paper" else 3)
    t.finish("no VTAB-1k-role evaluation of the main role at the ablation settings")


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
