"""Fig. 3: throughput vs r, measured for training and inference (bench.csv), beside the analytic FLOPs ratio."""
from common.ctx import Ctx, run
from common.figure import new_figure, save_figure
from common.stats import Stat
from common.table import Table, stub
from items import Item

PAPER = {("infer", 2): "Sec. 5.2 text", ("infer", 12): "Table 2", ("infer", 16): "Sec. 5.2 text",
         ("train", 12): "Table 4", ("train", 16): "Table 4"}


def make(ctx: Ctx, item: Item) -> None:
    b, role = ctx.throughput(), ctx.role("main")
    if not b.empty:
        mine = b[(b.backbone_key == role["backbone"]) & (b.method == role["method"])]
        b = mine if len(mine) else b
    if b.empty:
        return stub(ctx, item, "the config's `bench` section is empty")
    bk, method, model = b.backbone_key.iloc[0], b.method.iloc[0], b.model.iloc[0]
    b = b[(b.backbone_key == bk) & (b.method == method)]
    first = b.iloc[0]
    t = Table(ctx, item, f"`{bk}` ({model}), {method}, on {first.device} with {first.threads} thread(s), "
                         f"batch {first.batch_size}, median of {first.repeats} repeats (± std); speed-up = "
                         "images/s over r = 0; FLOPs ratio = GFLOPs(0) / GFLOPs(r), analytic.", seeded=False)
    fig, axes = new_figure(2)
    for ax, mode in zip(axes, ("infer", "train")):
        rows = b[b["mode"] == mode].sort_values("r")
        name = {"infer": "inference", "train": "training"}[mode]
        for row in rows.itertuples():
            label = f"r = {int(row.r)}"   # bench.csv also holds plugin rows, so r is read as float
            t.put(name, label, "GFLOPs", Stat(row.gflops, n=1), digits=3)
            t.put(name, label, "FLOPs ratio", Stat(row.flops_ratio, n=1), digits=2)
            t.put(name, label, "images/s", Stat(row.images_per_s, n=1))
            metric = "inference_speedup" if mode == "infer" else "training_speedup"
            src = PAPER.get((mode, int(row.r)))
            paper = ctx.paper_value(src, "main", "", None if mode == "infer" else row.r,
                                    row.r if mode == "infer" else None, 0, "", metric) if src else None
            t.put(name, label, "speed-up", Stat(row.speedup, n=1), paper, digits=2)
        if len(rows):
            ax.errorbar(rows.r, rows.images_per_s, yerr=rows.images_per_s_std, marker="o", capsize=2,
                        label="images/s (measured)")
            ax2 = ax.twinx()
            ax2.plot(rows.r, rows.flops_ratio, "k:", label="FLOPs ratio (analytic)")
            ax2.set_ylabel("FLOPs ratio (×)")
            handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
            ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper left")
        ax.set(title=f"{name} ({model}, {method})", xlabel="r", ylabel="images / s")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    save_figure(ctx, fig, item.stem)
    t.write()


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
