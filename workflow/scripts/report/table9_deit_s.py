"""Table 9: ToCom on a smaller backbone (paper: DeiT-S), VTAB-1k group means at 0 → 16 and 16 → 0."""
from common import Ctx, group_table

STEM = "table9_deit_s"


def make(ctx: Ctx) -> None:
    group_table(ctx, "small", STEM, "Table 9: ToCom on a smaller backbone (DeiT-S role), VTAB-1k",
                "Plugin distilled for this backbone as for the main one.", "Table 9",
                [tuple(p) for p in ctx.report["degrees"]["other"]])


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
