"""Table 11: ToCom on semantic segmentation (paper: Segmenter Seg-B†-Mask/16 on ADE20K, tokens merged before each
FFN and unmerged after it; source r = 0, targets r = 256 / 384 / 512 inferred from the GFLOPs). Single-scale test
mIoU and analytic GFLOPs at each target, plain and + ToCom (s chosen on val), the Δ of ToCom, from tables/segment.csv;
under scale `paper` the paper's values beside ours."""
from common.ctx import Ctx, run
from common.stats import Stat, stat
from common.table import Table, stub
from items import Item
from tocom import layout


def paper(ctx: Ctx, target: int, tocom: int, metric: str) -> float | None:
    p = ctx.paper
    if p is None:
        return None
    rows = p[(p.source == "Table 11") & (p.target_r == str(target)) & (p.tocom == str(tocom)) & (p.metric == metric)]
    return float(rows.value.iloc[0]) if len(rows) else None


def make(ctx: Ctx, item: Item) -> None:
    seg = ctx.config.get("segmentation")
    if not seg:
        return stub(ctx, item, "the config has no `segmentation` section")
    df = ctx.table("segment")
    if df.empty:
        return stub(ctx, item, f"{layout.TABLE.format(table='segment')} holds no rows")
    df["variant"] = df["variant"].fillna("")
    df["selected"] = df["selected"].astype(str).str.lower().eq("true")
    variants = list(seg.get("variants", []))
    variant = "tocom" if "tocom" in variants else (variants[0] if variants else None)
    test = df[(df.split == "test") & (df.dataset == seg["dataset"])]
    bb = ctx.config["backbones"][seg["backbone"]]["timm"]
    t = Table(ctx, item, f"Segmenter on `{bb}` ({seg['backbone']}), {seg['dataset']}: single-scale test mIoU (%) "
                         f"and GFLOPs per image; + ToCom: plugin `{variant}` merged into W_q/W_v at the s chosen on "
                         "val (same cost).")
    gd = 1 if ctx.scale == "paper" else 3       # the tiny backbones' GFLOPs are ~0.1
    for source in sorted(int(s) for s in seg["sources"]):
        block = f"source r = {source}"
        for target in sorted(int(x) for x in seg["targets"]):
            rows = test[(test.source_r == source) & (test.target_r == target)]
            plain = rows[rows.tocom == 0]
            g = Stat(float(plain.gflops.iloc[0]), n=1) if len(plain) else Stat()
            t.put(block, f"target r = {target}", "mIoU", stat(plain.miou), paper(ctx, target, 0, "mIoU"))
            t.put(block, f"target r = {target}", "GFLOPs", g, paper(ctx, target, 0, "gflops"), digits=gd)
            if variant is None or target == source:
                continue
            comp = rows[(rows.tocom == 1) & (rows.variant == variant) & rows.selected]
            t.put(block, f"target r = {target} + ToCom", "mIoU", stat(comp.miou), paper(ctx, target, 1, "mIoU"))
            t.put(block, f"target r = {target} + ToCom", "GFLOPs",
                  Stat(float(comp.gflops.iloc[0]), n=1) if len(comp) else Stat(), paper(ctx, target, 1, "gflops"),
                  digits=gd)
            both = plain[["seed", "miou"]].merge(comp[["seed", "miou"]], on="seed", suffixes=("", "_c"))
            p0, p1 = paper(ctx, target, 0, "mIoU"), paper(ctx, target, 1, "mIoU")
            t.put(block, f"target r = {target} Δ", "mIoU", stat(both.miou_c - both.miou),
                  p1 - p0 if p0 is not None and p1 is not None else None, signed=True)
    t.notes += ["Paper's degrees inferred from its GFLOPs (reference/paper_results.csv); its encoder is the "
                "distilled DeiT-B/16-384 at 512 × 512 (1,024 patch tokens), r up to 512.",
                "GFLOPs in the paper's convention: one multiply-add per FLOP, the attention products q kᵀ and "
                "attention · v left out (as `tocom flops --head segmenter` counts them; with them DeiT-B/16-384's "
                "Segmenter at r = 0 would be 129.4)."]
    t.finish(f"no test rows at the configured degrees in {layout.TABLE.format(table='segment')}")


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
