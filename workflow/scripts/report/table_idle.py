"""IdleViT in the form of Fig. 7 and Table 8 (not in the paper): CIFAR-100 + FGVC at the Fig. 5 source r and
VTAB-1k group means at the EViT settings."""
from common.builders import compensation_figure, group_table
from common.ctx import Ctx, run
from items import Item


def figure(ctx: Ctx, item: Item) -> None:
    compensation_figure(ctx, item, "idle", ctx.report["degrees"]["fig5_source"], True)


def table(ctx: Ctx, item: Item) -> None:
    group_table(ctx, item, "idle", "IdleViT keeps idle tokens aside at each layer; no paper numbers exist.", None)


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
