"""Tables 2 and 3: VTAB-1k per task and per group, targets (paper: 16, 12) x sources (paper: 0, 4), plain and
with ToCom, and source = target as reference. Table 2: Natural + Specialized; Table 3: Structured."""
from common import Ctx, Table, group_notes, stub, vtab_row

ITEMS = {"table2_vtab_natural_specialized": ("Table 2: VTAB-1k Natural and Specialized, source r below target r",
                                             ["natural", "specialized"]),
         "table3_vtab_structured": ("Table 3: VTAB-1k Structured, source r below target r", ["structured"])}


def make(ctx: Ctx) -> None:
    deg = ctx.report["degrees"]["inference"]
    for stem, (title, groups) in ITEMS.items():
        source = "Table 2" if stem.startswith("table2") else "Table 3"
        t = Table(ctx, stem, title, f"Role {ctx.role_label('main')}; test top-1 (%) per task and group mean; "
                                    "Δ = gain of ToCom over the same model without it.")
        for target in deg["targets"]:
            block = f"target r = {target}" + ctx.speed_note(target, "infer", "Table 2")
            for s in deg["sources"]:
                vtab_row(ctx, t, "main", block, f"source r = {s}", s, target, False, groups, True, source)
                vtab_row(ctx, t, "main", block, f"source r = {s} + ToCom", s, target, True, groups, True, source)
            vtab_row(ctx, t, "main", block, f"source r = {target}", target, target, False, groups, True, source)
        t.notes += group_notes(ctx, "main")
        if not t.has_data():
            stub(ctx, stem, title, "no VTAB-1k-role evaluation of the main role at these degrees")
        else:
            t.write()


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
