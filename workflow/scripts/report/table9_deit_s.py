"""Table 9: ToCom on a smaller backbone (paper: DeiT-S), VTAB-1k group means at 0 → 16 and 16 → 0."""
from common.builders import group_table
from common.ctx import Ctx, run
from items import Item


def make(ctx: Ctx, item: Item) -> None:
    group_table(ctx, item, "small", "Plugin distilled for this backbone as for the main one.", "Table 9")


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
