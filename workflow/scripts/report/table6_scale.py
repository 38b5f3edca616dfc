"""Table 6: the LoRA scale s used when training ToCom (paper: 1, 0.1 (ours), 0.01), on VTAB-1k at the
ablation settings; s at inference is still chosen on val."""
from common import Ctx, ablation_table, stub, variant_settings

STEM, TITLE = "table6_scale", "Table 6: training scale s of ToCom"


def make(ctx: Ctx) -> None:
    variants = []
    ours = ctx.plugin("main")
    for v in [ours, *ctx.report["variants"]["scale"]]:
        s = variant_settings(ctx, "main", v)["scale"]
        variants.append((v, f"s = {s:g}" + (" (ours)" if v == ours else ""), f"s{s:g}"))
    variants.sort(key=lambda x: -variant_settings(ctx, "main", x[0])["scale"])
    t = ablation_table(ctx, STEM, TITLE, "Plugins trained with different LoRA scales s.", variants, "Table 6")
    if not t.has_data():
        return stub(ctx, STEM, TITLE, "no VTAB-1k-role evaluation of the main role at the ablation settings")
    t.write()


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
