"""Fig. 7 and Table 8: ToCom on EViT (token pruning, r tokens per layer): CIFAR-100 + FGVC at the Fig. 5
source r, and VTAB-1k group means at the paper's settings (0 → 16, 16 → 0)."""
from common.builders import compensation_figure, group_table
from common.ctx import Ctx, run
from items import Item


def figure(ctx: Ctx, item: Item) -> None:
    compensation_figure(ctx, item, "evit", ctx.report["degrees"]["fig5_source"], True)


def table(ctx: Ctx, item: Item) -> None:
    group_table(ctx, item, "evit", "EViT prunes r tokens per layer.", "Table 8")


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
