"""Supervised training with token compression active: downstream fine-tuning at a source degree
(full, or AdaptFormer PET with the backbone frozen) and the tiny backbone's pretraining.

Fine-tuning at source r is what produces the paper's "off-the-shelf" models M_r^D. Every setting
(Table 13's columns live in config/paper.yaml) arrives as a `FinetuneSettings`/`PretrainSettings`
and is written into the checkpoint's header, where the report reads it. Mixup/CutMix follow the
DeiT recipe through timm's `Mixup` when enabled.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import add_adapters
from ..compress import max_r, patch, set_r
from ..errors import TocomError
from ..lineage import comparable, data_entry
from ..models import save_model
from ..settings import METHODS, UNCOMPRESSED, FinetuneSettings, PretrainSettings, RunSettings
from .common import Fit, finish, fit, loader, runtime, seed_everything, set_drop_path


class Classification(nn.Module):
    """forward(images, labels) -> cross-entropy (with label smoothing, or soft targets under mixup)."""

    def __init__(self, model: nn.Module, label_smoothing: float, mixup: float, cutmix: float):
        super().__init__()
        self.model, self.label_smoothing, self.mixup = model, label_smoothing, None
        if mixup > 0 or cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                               num_classes=model.num_classes)

    def forward(self, images, labels):
        if self.mixup is not None and self.training:
            images, soft = self.mixup(images, labels)
            return torch.sum(-soft * F.log_softmax(self.model(images).float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(self.model(images).float(), labels, label_smoothing=self.label_smoothing)


def train_classifier(model: nn.Module, train_set, out: str | Path, meta: dict,
                     s: FinetuneSettings | PretrainSettings | None = None, run: RunSettings | None = None,
                     method: str = UNCOMPRESSED, r: int = 0, lineage: dict | None = None) -> nn.Module:
    """Train `model` on `train_set` with `method` at degree `r`; save it (weights + settings) to `out`.

    At r = 0 nothing is compressed, whatever `method` (UNCOMPRESSED included): the run is the same for
    every method and the checkpoint records method UNCOMPRESSED. `lineage` (tocom/lineage.py: the backbone
    and checkpoint it starts from) goes into the header with the training data's entry added, and its
    content into the resume fingerprint."""
    s, run = s or FinetuneSettings(), run or RunSettings()
    mode = s.mode
    if method == UNCOMPRESSED and r:
        raise TocomError(f"method {UNCOMPRESSED!r} trains uncompressed, at r = 0; got r={r}")
    patch(model, METHODS[0] if method == UNCOMPRESSED else method)
    method = UNCOMPRESSED if r == 0 else method
    if r > max_r(model):
        raise TocomError(f"r={r} exceeds what the backbone carries (max r = {max_r(model)} for "
                         f"{model.patch_embed.num_patches} patch tokens over {len(model.blocks)} blocks)")
    set_r(model, r)
    rt = runtime(run.device, run.precision)
    seed_everything(run.seed)
    set_drop_path(model, s.drop_path)
    if mode != "full":
        model.requires_grad_(False)
        if mode == "adaptformer":
            add_adapters(model, s.adapter_dim, s.adapter_scale)
        # What the pre-trained checkpoint lacks trains (AdaptFormer's rule): the head and, on MAE, its fresh fc_norm
        for p in [*model.get_classifier().parameters(), *getattr(model, "fc_norm", nn.Identity()).parameters()]:
            p.requires_grad_(True)
    model.to(rt.device)
    job = Fit(Classification(model, s.label_smoothing, s.mixup, s.cutmix), epochs=s.epochs, lr=s.effective_lr,
              weight_decay=s.weight_decay, warmup_epochs=s.warmup_epochs, min_lr=s.min_lr, desc=f"train r={r}")
    fingerprint = {**s.fingerprint(), "method": method, "r": r, "seed": run.seed, **meta}
    lineage = {**(lineage or {}), "data": data_entry(train_set)}
    data = loader(train_set, s.batch_size, rt, train=True, seed=run.seed, workers=run.workers, repeats=s.repeated_aug)
    fit(job, data, out, rt, run.seed, not run.quiet, fingerprint=fingerprint, inputs=comparable(lineage))
    meta = {**meta, "lineage": lineage, "num_classes": model.num_classes, "method": method, "source_r": r, "mode": mode,
            "split": s.split, "settings": {"stage": s.stage, **s.asdict()},
            "adapter": {"hidden": s.adapter_dim, "scale": s.adapter_scale} if mode == "adaptformer" else None,
            "epochs": s.epochs, "seed": run.seed}
    set_drop_path(model, 0.0)     # inference-time models carry no stochastic depth
    finish(Path(out), rt, lambda: save_model(model, out, meta), record=meta)
    return model
