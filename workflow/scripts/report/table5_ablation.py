"""Table 5: ablations of ToCom (shared LoRA, CLS loss, no inversion) on VTAB-1k at the ablation settings
(paper: 0 → 16, 0 → 12, 16 → 0)."""
from common import Ctx, ablation_label, ablation_table, stub

STEM, TITLE = "table5_ablation", "Table 5: ablation of ToCom's components"



def make(ctx: Ctx) -> None:
    variants = [(v, ablation_label(ctx, v), v) for v in ctx.report["variants"]["ablation"]]
    variants.append((ctx.plugin("main"), "ToCom (ours)", "tocom"))
    t = ablation_table(ctx, STEM, TITLE, "Shared LoRA: one LoRA for every degree pair; CLS loss: cross-entropy on "
                                         "labels instead of self-distillation; No inversion: separate groups for "
                                         "moving up and down.", variants, "Table 5")
    if not t.has_data():
        return stub(ctx, STEM, TITLE, "no VTAB-1k-role evaluation of the main role at the ablation settings")
    t.write()


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
