"""Assemble results/<name>/report.md from the items' Markdown fragments, in the paper's order. The report is
only ever assembled (rerun the workflow to change it), never edited."""
from common import Ctx, ROLE_TITLES, write_text

SECTIONS = [
    ("The paper's claims: in its text, and at this scale", ["claims", "claims_at_scale"]),
    ("3 Motivation: the mismatch, its cost, and its transferability",
     ["fig2_source_target", "fig3_throughput", "table1_transfer"]),
    ("5.2 Inference-time acceleration of off-the-shelf models",
     ["fig5_inference", "table2_vtab_natural_specialized", "table3_vtab_structured"]),
    ("5.3 Training-time acceleration", ["fig6_training", "table4_vtab_training"]),
    ("5.4 Ablation study", ["table5_ablation", "table6_scale", "table7_rank"]),
    ("5.5 Other token compression methods", ["fig7_evit", "table8_evit", "fig_idle", "table_idle"]),
    ("5.6 Other backbones", ["table9_deit_s", "table10_mae"]),
    ("Appendix: dense prediction", ["table11_segmentation"]),
    ("Appendix: set-up of this run", ["table12_backbones", "table13_hparams", "table13_search", "table14_datasets",
                                          "setup_degrees"]),
]
NOT_REPRODUCED = ("Not reproduced: Fig. 1 (teaser chart of Tables 2-4), Fig. 4 (method diagram) and Algorithm 1 "
                  "(pseudocode).")


def make(ctx: Ctx) -> str:
    roles = "; ".join(f"{ROLE_TITLES[r]}: {ctx.role_label(r)}" for r in ROLE_TITLES if ctx.role(r))
    lines = [f"# ToCom reproduction report: `{ctx.name}` run (scale `{ctx.scale}`)", "",
             "Jie et al., *Token Compensator: Altering Inference Cost of Vision Transformer without Re-Tuning*, "
             "ECCV 2024. Assembled by the workflow from the tidy results in "
             f"`results/{ctx.name}/tables/` and the config that ran; do not edit (rerun the workflow).", "",
             ctx.scale_note(), ctx.seed_note(), "", f"Roles: {roles}.", "", NOT_REPRODUCED, "", "## Contents", ""]
    lines += [f"- {title}" for title, _ in SECTIONS] + [""]
    for title, stems in SECTIONS:
        lines += [f"## {title}", ""]
        for stem in stems:
            lines += [ctx.out(stem, ".md").read_text().rstrip(), ""]
    text = "\n".join(lines)
    write_text(text, ctx.report_dir.parent / "report.md")
    return text


if __name__ == "__main__":
    make(Ctx.from_snakemake(snakemake))  # noqa: F821
