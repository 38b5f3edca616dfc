"""Fig. 5: inference-time acceleration of off-the-shelf models. CIFAR-100 + FGVC, fine-tuned at source r
(paper: 0) and evaluated at every higher target r, plain and with ToCom, plus source = target."""
from common.builders import compensation_figure
from common.ctx import Ctx, run
from items import Item


def make(ctx: Ctx, item: Item) -> None:
    compensation_figure(ctx, item, "main", ctx.report["degrees"]["fig5_source"], above=True,
                        paper_source="Sec. 5.2 text")


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
