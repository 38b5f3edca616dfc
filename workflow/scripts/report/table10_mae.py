"""Table 10: ToCom on a backbone pre-trained without labels (paper: MAE ViT-B; plugin distilled with an L1
loss on the final features), VTAB-1k group means at 0 → 16 and 16 → 0."""
from common import Ctx, group_table, variant_settings

STEM = "table10_mae"


def make(ctx: Ctx) -> None:
    loss = variant_settings(ctx, "mae", ctx.plugin("mae"))["loss"] if ctx.role("mae") else "—"
    group_table(ctx, "mae", STEM, "Table 10: ToCom on a self-supervised backbone (MAE role), VTAB-1k",
                f"Plugin distilled with the `{loss}` loss.", "Table 10",
                [tuple(p) for p in ctx.report["degrees"]["other"]])


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
