"""Assemble results/<name>/report.md from the items' Markdown fragments, in the order of the registry's
sections (items.py). The report is only ever assembled (rerun the workflow to change it), never edited."""
from pathlib import Path

from common.ctx import Ctx, run
from items import ROLES, SECTIONS
from tocom import layout
from tocom.io import write_text

NOT_REPRODUCED = ("Not reproduced: Fig. 1 (teaser chart of Tables 2-4), Fig. 4 (method diagram) and Algorithm 1 "
                  "(pseudocode).")


def make(ctx: Ctx) -> str:
    roles = "; ".join(f"{ROLES[r]}: {ctx.role_label(r)}" for r in ROLES if ctx.role(r))
    lines = [f"# ToCom reproduction report: `{ctx.name}` run (scale `{ctx.scale}`)", "",
             "Jie et al., *Token Compensator: Altering Inference Cost of Vision Transformer without Re-Tuning*, "
             "ECCV 2024. Assembled by the workflow from the tidy results in "
             f"`{layout.run_dir(ctx.name)}/{Path(layout.TABLE).parent}/` and the config that ran; do not edit "
             "(rerun the workflow).", "",
             ctx.scale_note(), ctx.seed_note(), "", f"Roles: {roles}.", "", NOT_REPRODUCED, "", "## Contents", ""]
    lines += [f"- {title}" for title, _ in SECTIONS] + [""]
    for title, items in SECTIONS:
        lines += [f"## {title}", ""]
        for item in items:
            lines += [ctx.out(item.stem, ".md").read_text().rstrip(), ""]
    text = "\n".join(lines)
    write_text(text, ctx.report_path())
    return text


if __name__ == "__main__":
    run(snakemake, make)  # noqa: F821
