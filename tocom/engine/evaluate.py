"""Cross-evaluation of a fine-tuned model at every target degree, with and without ToCom, and the
task-arithmetic transfer check of the paper's Table 1.

One call per checkpoint: the model is loaded once and moved between degrees (and plugin scales)
with the merged plugin's `switch`, never reloaded. The inference scale s is chosen per target on
the selection split (validation) from the paper's grid and reported on test; every evaluated s is
kept in the output so the choice can be audited.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from ..compress import max_r, method_of, patch, set_r
from ..errors import TocomError
from ..io import write_csv
from ..plugin import ToCom, compensate
from .common import accuracy, loader, runtime

SCALES = (0.01, 0.02, 0.05, 0.08, 0.1, 0.12, 0.15)   # paper Sec. 5.1
COLUMNS = ["dataset", "backbone", "method", "source_r", "target_r", "tocom", "variant", "s", "split", "seed",
           "top1", "n", "selected"]


def cross_evaluate(model: nn.Module, meta: dict, splits: dict, targets: Sequence[int],
                   plugins: dict[str, ToCom] | None = None, scales: Sequence[float] = SCALES,
                   select_split: str | None = "val", batch_size: int = 256, seed: int = 0,
                   device: str | None = None, progress: bool = True, out: str | Path | None = None) -> pd.DataFrame:
    """Top-1 of `model` (fine-tuned at meta['source_r']) at each target r, plain and with each plugin.

    splits: {"val": dataset, "test": dataset, ...}; plugins: {label: plugin} (the label fills the
    `variant` column, e.g. "tocom", "shared", "h4"). With a selection split every s is evaluated on
    it and only the best s (ties: the smaller) on the other splits; without one, every s everywhere.
    """
    method, source = meta.get("method") or method_of(model) or "tome", int(meta.get("source_r", 0))
    patch(model, method)
    too_big = [t for t in targets if t > max_r(model)]
    if too_big:
        raise TocomError(f"target r {too_big} exceeds what the backbone carries (max r = {max_r(model)})")
    scales = tuple(scales)
    rt = runtime(device, amp=True)
    model.to(rt.device).eval()
    loaders = {name: loader(ds, batch_size, rt, train=False, seed=seed) for name, ds in splits.items()}
    if select_split is not None and select_split not in loaders:
        raise TocomError(f"selection split {select_split!r} is not among the evaluated splits {list(loaders)}")
    base = dict(dataset=meta.get("dataset", ""), backbone=meta.get("backbone", ""), method=method,
                source_r=source, seed=seed)
    rows = []

    def run(split, target, variant="", s=None, selected=False):
        top1, n = accuracy(model, loaders[split], rt, progress, desc=f"{split} r={target} {variant} s={s}")
        rows.append({**base, "target_r": target, "tocom": int(bool(variant)), "variant": variant, "s": s,
                     "split": split, "top1": top1, "n": n, "selected": selected})
        return top1

    for target in targets:
        set_r(model, target)
        for split in loaders:
            run(split, target)
    for label, plugin in (plugins or {}).items():
        plugin.to(rt.device)
        comp = compensate(model, plugin, source, source, scale=scales[0], merge=True)
        try:
            for target in targets:
                if target == source:          # source == target needs no compensation
                    continue
                if select_split is None:
                    for s in scales:
                        comp.switch(target, s)
                        for split in loaders:
                            run(split, target, label, s)
                    continue
                scores = {}
                for s in scales:
                    comp.switch(target, s)
                    scores[s] = run(select_split, target, label, s)
                best = max(scales, key=lambda s: (scores[s], -s))
                rows[-len(scales) + scales.index(best)]["selected"] = True
                comp.switch(target, best)
                for split in loaders:
                    if split != select_split:
                        run(split, target, label, best, selected=True)
        finally:
            comp.remove()
    df = pd.DataFrame(rows, columns=COLUMNS)
    if out:
        write_csv(df, out)
    return df


def task_arithmetic(high_a: dict, low_a: dict, low_b: dict) -> dict:
    """M_high^A - M_low^A + M_low^B (paper Eq. 2/3) over the shared backbone; B keeps its own head."""
    out = {}
    for key, value in low_b.items():
        shared = key in high_a and key in low_a and high_a[key].shape == value.shape and not key.startswith(("head", "fc_norm"))
        out[key] = value + high_a[key] - low_a[key] if shared and value.is_floating_point() else value
    return out


def transfer(model_b: nn.Module, meta_b: dict, high_a: dict, low_a: dict, test_set, target_r: int = 16,
             batch_size: int = 256, seed: int = 0, device: str | None = None, progress: bool = True,
             out: str | Path | None = None) -> pd.DataFrame:
    """Table 1: top-1 on B at `target_r` of M_0^B and of M_16^A - M_0^A + M_0^B."""
    rt = runtime(device, amp=True)
    patch(model_b, meta_b.get("method", "tome"))
    set_r(model_b, target_r)
    model_b.to(rt.device).eval()
    data = loader(test_set, batch_size, rt, train=False, seed=seed)
    rows = []
    plain = {k: v.clone() for k, v in model_b.state_dict().items()}
    arith = task_arithmetic({k: v.to(rt.device) for k, v in high_a.items()},
                            {k: v.to(rt.device) for k, v in low_a.items()}, plain)
    for name, state in (("M0_B", plain), ("M16_A-M0_A+M0_B", arith)):
        model_b.load_state_dict(state)
        top1, n = accuracy(model_b, data, rt, progress, desc=name)
        rows.append(dict(dataset=meta_b.get("dataset", ""), backbone=meta_b.get("backbone", ""),
                         method=meta_b.get("method", "tome"), model=name, target_r=target_r, seed=seed, top1=top1, n=n))
    model_b.load_state_dict(plain)
    df = pd.DataFrame(rows)
    if out:
        write_csv(df, out)
    return df
