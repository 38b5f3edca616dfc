"""Fig. 6: training-time acceleration. CIFAR-100 + FGVC, fine-tuned at a high source r (paper: 16) and
evaluated at every lower target r, plain and with ToCom, plus source = target."""
from common import Ctx, compensation_figure

STEM, TITLE = "fig6_training", "Fig. 6: ToCom on models trained with compression, target r below source r"


def make(ctx: Ctx) -> None:
    compensation_figure(ctx, "main", STEM, TITLE, ctx.report["degrees"]["fig6_source"], above=False)


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
