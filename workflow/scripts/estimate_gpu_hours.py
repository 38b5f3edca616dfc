"""Jobs per stage and an estimate of GPU-hours for a pipeline config (the README's paper-run budget).

    python workflow/scripts/estimate_gpu_hours.py config/paper.yaml

Cost model, anchored on the one GPU cost the paper measures: distilling ToCom for DeiT-B takes
1.8 h on 8 V100s (14.4 GPU-hours) for 10 ImageNet epochs (Sec. 5.1). A distillation image costs a
teacher forward (1 unit) plus a student forward and backward (3 units) at the sampled degrees (the
mean FLOPs fraction over the r ladder), which fixes the GPU-hours of one forward unit of DeiT-B.
Every other job is priced in the same units, scaled by its backbone's FLOPs and its degree's FLOPs
fraction: fine-tuning = 3 units per training image per epoch, evaluation = 1 unit per image per
pass. Dataset sizes are the paper's (reference/paper_datasets.csv). V100-hours; an estimate that
ignores data loading and assumes GPU throughput scales with FLOPs (Fig. 3 shows it roughly does).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import timm
import torch
import yaml

from tocom.compress import flops, patch
from tocom.experiments import Grid

REPO = Path(__file__).resolve().parents[2]
ANCHOR_GPU_HOURS, ANCHOR_IMAGES, ANCHOR_EPOCHS = 1.8 * 8, 1_281_167, 10


def gflops_table(timm_name: str, method: str, r_max: int) -> list[float]:
    with torch.device("meta"):
        model = patch(timm.create_model(timm_name, pretrained=False), method)
    return [flops(model, r)["gflops"] for r in range(r_max + 1)]


def main(config_path: str) -> None:
    config = yaml.safe_load(Path(config_path).read_text())
    grid = Grid(config, check_files=False)
    sizes = pd.read_csv(REPO / "reference/paper_datasets.csv").set_index("dataset")

    def size(name: str, split: str) -> int:
        key = name.split("/", 1)[1] if name.startswith("vtab/") else name
        key = "oxford_flowers102_fgvc" if key == "oxford_flowers102" and not name.startswith("vtab/") else key
        row = sizes.loc[key]
        if split == "train":
            return int(row.train) + (int(row.val) if name.startswith("vtab/") else 0)
        return int(row[split]) if pd.notna(row[split]) else int(0.1 * row.train)

    deit = gflops_table("deit_base_patch16_224", "tome", 16)
    unit = ANCHOR_GPU_HOURS / (ANCHOR_IMAGES * ANCHOR_EPOCHS * 4 * sum(deit) / len(deit))   # per DeiT-B GFLOP
    cache: dict = {}

    def cost(backbone: str, method: str, r: int) -> float:
        key = (config["backbones"][backbone]["timm"], method)
        if key not in cache:
            cache[key] = gflops_table(*key, grid.geometry(backbone)["max_r"])
        return cache[key][r] * unit

    rows = []
    for backbone, method, variant in grid.plugins:
        s = grid.distill_settings(backbone, variant)
        table = [cost(backbone, method, r) for r in range(s["r_max"] + 1)]
        rows.append(("distill", ANCHOR_IMAGES * s["epochs"] * 4 * sum(table) / len(table)))
    for run in grid.finetunes.values():
        recipe = config["recipes"][run.recipe]
        rows.append(("finetune", size(run.dataset, "train") * recipe["epochs"] * 3 * cost(run.backbone, run.method, run.source)))
    n_scales = len(config["scales"])
    for ev in grid.evals.values():
        ft = ev.finetune
        val, test = size(ft.dataset, "val"), size(ft.dataset, "test")
        total = sum((val + test) * cost(ft.backbone, ft.method, t) for t in ev.targets)
        total += sum(len(ev.variants) * (n_scales * val + test) * cost(ft.backbone, ft.method, t)
                     for t in ev.targets if t != ft.source)
        rows.append(("evaluate", total))
    for t in grid.transfers:
        rows.append(("transfer", 2 * size(t.b, "test") * cost(t.backbone, t.method, t.target_r)))
    for b in grid.benches:
        rows.append(("bench", 0.1))
    df = pd.DataFrame(rows, columns=["rule", "gpu_hours"]).groupby("rule").agg(jobs=("gpu_hours", "size"),
                                                                                gpu_hours=("gpu_hours", "sum"))
    df.loc["total"] = df.sum()
    df = df.assign(jobs=df.jobs.astype(int), gpu_hours=df.gpu_hours.round(1).astype(str))
    print(df.to_markdown())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "config/paper.yaml")
