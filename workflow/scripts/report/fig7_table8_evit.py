"""Fig. 7 and Table 8: ToCom on EViT (token pruning, r tokens per layer): CIFAR-100 + FGVC at the Fig. 5
source r, and VTAB-1k group means at the paper's settings (0 → 16, 16 → 0)."""
from common import Ctx, compensation_figure, group_table

FIG, TABLE = "fig7_evit", "table8_evit"


def make(ctx: Ctx) -> None:
    deg = ctx.report["degrees"]
    compensation_figure(ctx, "evit", FIG, "Fig. 7: ToCom on EViT, source r below target r", deg["fig5_source"], True)
    group_table(ctx, "evit", TABLE, "Table 8: ToCom on EViT, VTAB-1k", "EViT prunes r tokens per layer.", "Table 8",
                [tuple(p) for p in deg["other"]])


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
