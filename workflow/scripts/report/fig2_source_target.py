"""Fig. 2: the mismatch problem. Test top-1 vs target r of models fine-tuned at different source r, without
ToCom, on the CIFAR-100 + FGVC role datasets (one panel each, and their mean)."""
from common import Ctx, Table, mean_of, missing_note, new_figure, plot_line, present, save_figure, select, stub

STEM, TITLE = "fig2_source_target", "Fig. 2: accuracy vs target r for each source r (no ToCom)"


def make(ctx: Ctx) -> None:
    ev = ctx.evals("main")
    ds = present(ctx.report["cifar_fgvc"], ev)
    if not ds:
        return stub(ctx, STEM, TITLE, "no CIFAR-100/FGVC-role evaluation of the main role", figure=True)
    ev = ev[ev.dataset.isin(ds)]
    have = {d: set(ev[ev.dataset == d].source_r) for d in ds}      # sources fine-tuned per dataset
    targets = sorted(int(x) for x in ev.target_r.unique())
    t = Table(ctx, STEM, TITLE, f"Role {ctx.role_label('main')}; test top-1 (%) of the plain model fine-tuned at "
                                "each source r (rows) and evaluated at each target r (columns).")
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
    fig.suptitle(f"{TITLE}: {ctx.name} run", fontsize=9)
    save_figure(ctx, fig, STEM)
    t.notes += missing_note(ctx.report["cifar_fgvc"], ds)
    t.write(figure=STEM)


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
