"""Table 1: is the gap between source degrees transferable across tasks? M_0^B against the task-arithmetic
model M_high^A − M_0^A + M_0^B, both evaluated on D_B at the target r (transfer.csv)."""
from common.ctx import Ctx, paper_dataset, run
from common.stats import gain_of, mean_of
from common.table import Table, stub
from items import Item


def make(ctx: Ctx, item: Item) -> None:
    tr = ctx.transfer()
    if tr.empty:
        return stub(ctx, item, "the config's `transfer` section is empty")
    t = Table(ctx, item, "Test top-1 (%) on D_B at the target r; Δ = task arithmetic − M_0^B.")
    keys = ["backbone_key", "method", "a", "high_r", "target_r"]
    for (bk, method, a, high, target), rows in tr.groupby(keys, sort=False):
        block = f"`{bk}`/{method}, D_A = {a}, target r = {target}"
        for b in rows.dataset.unique():
            plain, arith = rows[(rows.dataset == b) & ~rows.arith], rows[(rows.dataset == b) & rows.arith]
            t.put(block, b, "M_0^B", mean_of(plain), ctx.paper_value("Table 1", None, paper_dataset(b), 0, target))
            t.put(block, b, f"M_{high}^A − M_0^A + M_0^B", mean_of(arith),
                  ctx.paper_value("Table 1", None, paper_dataset(b), high, target, 0, "task_arithmetic"))
            t.put(block, b, "Δ", gain_of(plain, arith), signed=True)
        t.test(block, "task arithmetic vs M_0^B", rows[~rows.arith], rows[rows.arith])
    t.write()


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
