"""Throughput per compression degree (the data behind the paper's Fig. 3).

Images per second for inference (no grad) or training (forward, backward, SGD step) at each r,
with warm-up and repeats, beside the analytic FLOPs, so measured speed-ups can be read against
the FLOPs ratio. The model's weights are random: speed does not depend on them.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from tqdm import tqdm

from ..compress import flops, max_r, patch, set_r
from ..errors import TocomError
from ..io import write_csv
from ..models import create_backbone


def _step(model: torch.nn.Module, x: torch.Tensor, mode: str, optimizer) -> None:
    if mode == "infer":
        with torch.inference_mode():
            model(x)
    else:
        optimizer.zero_grad(set_to_none=True)
        model(x).float().logsumexp(dim=-1).mean().backward()
        optimizer.step()


def bench(model_name: str = "deit_base_patch16_224", method: str = "tome", rs: Sequence[int] = (0, 2, 4, 8, 12, 16),
          mode: str = "infer", batch_size: int = 8, warmup: int = 2, repeats: int = 5, device: str | None = None,
          amp: bool = False, threads: int | None = None, out: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Measure throughput at each r. Returns (and optionally writes) one row per (r, mode)."""
    if mode not in ("infer", "train"):
        raise TocomError(f"--mode must be 'infer' or 'train', got {mode!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    model = patch(create_backbone(model_name), method).to(device)
    model.train(mode == "train")
    too_big = [r for r in rs if r > max_r(model)]
    if too_big:
        raise TocomError(f"r {too_big} exceeds what {model_name} carries (max r = {max_r(model)} for "
                         f"{model.patch_embed.num_patches} patch tokens over {len(model.blocks)} blocks)")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6) if mode == "train" else None
    size = model.patch_embed.img_size
    x = torch.randn(batch_size, 3, *size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    # Warm up at every r before timing any (the first steps of a process, allocator growth, kernel
    # selection, autograd set-up, would otherwise be charged to the first r), then time the degrees
    # round-robin, so a slow spell of a shared machine hits every r alike instead of one.
    with autocast:
        for r in rs:
            set_r(model, r)
            for _ in range(warmup):
                _step(model, x, mode, optimizer)
    times = {r: [] for r in rs}
    with autocast:
        for _ in tqdm(range(repeats), desc=f"bench {model_name} {method} {mode}", disable=not progress):
            for r in rs:
                set_r(model, r)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                _step(model, x, mode, optimizer)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[r].append(time.perf_counter() - t0)
    rows = []
    for r in rs:
        ips = [batch_size / t for t in times[r]]
        rows.append(dict(model=model_name, method=method, r=r, mode=mode, device=device.type,
                         threads=torch.get_num_threads(), batch_size=batch_size, repeats=repeats,
                         images_per_s=statistics.median(ips), images_per_s_std=statistics.pstdev(ips),
                         gflops=flops(model, r)["gflops"]))
    df = pd.DataFrame(rows)
    base = df.loc[df.r == 0]
    if len(base):
        df["speedup"] = df.images_per_s / base.images_per_s.iloc[0]
        df["flops_ratio"] = base.gflops.iloc[0] / df.gflops
    if out:
        write_csv(df, out)
    return df
