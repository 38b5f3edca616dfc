"""Fig. 2: the mismatch problem. Test top-1 vs target r of models fine-tuned at different source r, without
ToCom, on the CIFAR-100 + FGVC role datasets (one panel each, and their mean)."""
from common.ctx import Ctx, missing_note, present, run, select
from common.figure import new_figure, plot_line, save_figure
from common.stats import mean_of
from common.table import Table, stub
from items import Item


def make(ctx: Ctx, item: Item) -> None:
    ev = ctx.evals("main")
    ds = present(ctx.report["cifar_fgvc"], ev)
    if not ds:
        return stub(ctx, item, "no CIFAR-100/FGVC-role evaluation of the main role")
    ev = ev[ev.dataset.isin(ds)]
    have = {d: set(ev[ev.dataset == d].source_r) for d in ds}      # sources fine-tuned per dataset
    targets = sorted(int(x) for x in ev.target_r.unique())
    t = Table(ctx, item, f"Role {ctx.role_label('main')}; test top-1 (%) of the plain model fine-tuned at each "
                         "source r (rows) and evaluated at each target r (columns).")
    fig, axes = new_figure(len(ds) + 1)
    colour = {s: f"C{i}" for i, s in enumerate(sorted(set.union(*have.values())))}    # one colour per source
    for ax, d in zip(axes, ds + ["mean"]):
        sel = ds if d == "mean" else [d]
        for s in sorted(set.intersection(*(have[x] for x in sel))):     # the mean: sources every dataset has
            stats_ = [t.put(d, f"source r = {s}", f"r = {x}", mean_of(select(ev, s, x, None, sel), sel))
                      for x in targets]
            plot_line(ax, targets, stats_, f"source r = {s}", color=colour[s])
        ax.set(title=d, xlabel="target r", ylabel="top-1 (%)", xticks=targets)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"{item.title}: {ctx.name} run", fontsize=9)
    save_figure(ctx, fig, item.stem)
    t.notes += missing_note(ctx.report["cifar_fgvc"], ds)
    t.write()


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
