"""IdleViT in the form of Fig. 7 and Table 8 (not in the paper): CIFAR-100 + FGVC at the Fig. 5 source r and
VTAB-1k group means at the EViT settings."""
from common import Ctx, compensation_figure, group_table

FIG, TABLE = "fig_idle", "table_idle"


def make(ctx: Ctx) -> None:
    deg = ctx.report["degrees"]
    compensation_figure(ctx, "idle", FIG, "IdleViT figure (not in the paper): source r below target r",
                        deg["fig5_source"], True)
    group_table(ctx, "idle", TABLE, "IdleViT table (not in the paper): VTAB-1k",
                "IdleViT keeps idle tokens aside at each layer; no paper numbers exist.", None,
                [tuple(p) for p in deg["other"]])


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
