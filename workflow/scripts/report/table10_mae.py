"""Table 10: ToCom on a backbone pre-trained without labels (paper: MAE ViT-B; plugin distilled with an L1
loss on the final features), VTAB-1k group means at 0 → 16 and 16 → 0."""
from common.builders import group_table, variant_settings
from common.ctx import Ctx, run
from items import Item


def make(ctx: Ctx, item: Item) -> None:
    loss = variant_settings(ctx, "mae", ctx.plugin("mae"))["loss"] if ctx.role("mae") else "—"
    group_table(ctx, item, "mae", f"Plugin distilled with the `{loss}` loss.", "Table 10")


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
