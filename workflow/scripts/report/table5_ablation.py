"""Table 5: ToCom without each of its components (shared LoRA, CLS loss, no inversion) on VTAB-1k at the
ablation settings (paper: 0 → 16, 0 → 12, 16 → 0)."""
from common.builders import ablation_label, ablation_table
from common.ctx import Ctx, run
from items import Item


def make(ctx: Ctx, item: Item) -> None:
    variants = [(v, ablation_label(ctx, v), v) for v in ctx.report["variants"]["ablation"]]
    variants.append((ctx.plugin("main"), "ToCom (ours)", "tocom"))
    t = ablation_table(ctx, item, "Shared LoRA: one LoRA for every degree pair; CLS loss: cross-entropy on labels "
                                  "instead of self-distillation; No inversion: separate groups for moving up and "
                                  "down.", variants, "Table 5")
    t.finish("no VTAB-1k-role evaluation of the main role at the ablation settings")


if __name__ == "__main__":
    run(snakemake)  # noqa: F821
