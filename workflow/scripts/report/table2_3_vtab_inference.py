"""Tables 2 and 3: VTAB-1k per task and per group, targets (paper: 16, 12) x sources (paper: 0, 4), plain and
with ToCom, and source = target as reference. Table 2: Natural + Specialized; Table 3: Structured."""
from common.builders import group_notes, vtab_row
from common.ctx import Ctx, run
from common.table import Table
from items import Item


def natural_specialized(ctx: Ctx, item: Item) -> None:
    vtab_table(ctx, item, ["natural", "specialized"], "Table 2")


def structured(ctx: Ctx, item: Item) -> None:
    vtab_table(ctx, item, ["structured"], "Table 3")


def vtab_table(ctx: Ctx, item: Item, groups: list[str], paper_source: str) -> None:
    deg = ctx.report["degrees"]["inference"]
    t = Table(ctx, item, f"Role {ctx.role_label('main')}; test top-1 (%) per task and group mean; "
                         "Δ = gain of ToCom over the same model without it.")
    for target in deg["targets"]:
        block = f"target r = {target}" + ctx.speed_note(target, "infer", "Table 2")
        for s in deg["sources"]:
            vtab_row(ctx, t, "main", block, f"source r = {s}", s, target, False, groups, True, paper_source)
            vtab_row(ctx, t, "main", block, f"source r = {s} + ToCom", s, target, True, groups, True, paper_source)
        vtab_row(ctx, t, "main", block, f"source r = {target}", target, target, False, groups, True, paper_source)
    t.notes += group_notes(ctx, "main")
    t.finish("no VTAB-1k-role evaluation of the main role at these degrees")


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
