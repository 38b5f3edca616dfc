"""Table 4: VTAB-1k group means for models fine-tuned at a high source r (paper: 16, 12) evaluated at lower
targets (paper: 0, 4), plain and with ToCom, and target = source as reference."""
from common.builders import group_notes, vtab_row
from common.ctx import GROUPS, Ctx, run
from common.table import Table
from items import Item


def make(ctx: Ctx, item: Item) -> None:
    deg = ctx.report["degrees"]["training"]
    t = Table(ctx, item, f"Role {ctx.role_label('main')}; VTAB-1k group means of test top-1 (%); Δ = gain of "
                         "ToCom over the same model without it.")
    for s in deg["sources"]:
        block = f"source r = {s}" + ctx.speed_note(s, "train", "Table 4")
        for target in deg["targets"]:
            for label, tocom in ((f"target r = {target}", False), (f"target r = {target} + ToCom", True)):
                vtab_row(ctx, t, "main", block, label, s, target, tocom, GROUPS, paper_source="Table 4")
        vtab_row(ctx, t, "main", block, f"target r = {s}", s, s, False, GROUPS, paper_source="Table 4")
    t.notes += group_notes(ctx, "main")
    t.finish("no VTAB-1k-role evaluation of the main role at these degrees")


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
