"""Fig. 5: inference-time acceleration of off-the-shelf models. CIFAR-100 + FGVC, fine-tuned at source r
(paper: 0) and evaluated at every higher target r, plain and with ToCom, plus source = target."""
from common import Ctx, compensation_figure

STEM, TITLE = "fig5_inference", "Fig. 5: ToCom on off-the-shelf models, source r below target r"


def make(ctx: Ctx) -> None:
    compensation_figure(ctx, "main", STEM, TITLE, ctx.report["degrees"]["fig5_source"], above=True,
                        paper_source="Sec. 5.2 text")


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
