"""Fig. 6: training-time acceleration. CIFAR-100 + FGVC, fine-tuned at a high source r (paper: 16) and
evaluated at every lower target r, plain and with ToCom, plus source = target."""
from common.builders import compensation_figure
from common.ctx import Ctx, run
from items import Item


def make(ctx: Ctx, item: Item) -> None:
    compensation_figure(ctx, item, "main", ctx.report["degrees"]["fig6_source"], above=False)


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
