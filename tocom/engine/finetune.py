"""Supervised training with token compression active: downstream fine-tuning at a source degree
(full, or AdaptFormer PET with the backbone frozen) and the tiny backbone's pretraining.

Fine-tuning at source r is what produces the paper's "off-the-shelf" models M_r^D; the training
recipe defaults are the paper's Table 13 (see `RECIPES`). Mixup/CutMix follow the DeiT recipe
through timm's `Mixup` when enabled.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import add_adapters
from ..compress import max_r, patch, set_r
from ..errors import TocomError
from ..models import save_model
from .common import Fit, Runtime, finish, fit, loader, runtime, seed_everything

# Paper Table 13 (fine-tuning columns); learning rate = base lr x batch / 512 as in DeiT. FGVC searches
# its base lr in {5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4}; 1e-3 is the default here.
RECIPES = {
    "cifar": dict(epochs=100, batch_size=1024, lr=5e-5 * 1024 / 512, weight_decay=0.05, warmup_epochs=10,
                  label_smoothing=0.1, drop_path=0.1, mixup=0.8, cutmix=1.0, mode="full"),
    "fgvc": dict(epochs=30, batch_size=64, lr=1e-3 * 64 / 512, weight_decay=0.05, warmup_epochs=5,
                 label_smoothing=0.1, drop_path=0.1, mixup=0.8, cutmix=1.0, mode="full"),
    "vtab": dict(epochs=100, batch_size=64, lr=1e-3, weight_decay=1e-4, warmup_epochs=0,
                 label_smoothing=0.0, drop_path=0.1, mixup=0.0, cutmix=0.0, mode="adaptformer"),
}
MODES = ("full", "adaptformer", "linear")


class Classification(nn.Module):
    """forward(images, labels) -> cross-entropy (with label smoothing, or soft targets under mixup)."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0):
        super().__init__()
        self.model = model
        self.mixup = None
        self.label_smoothing = label_smoothing
        if mixup > 0 or cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                               num_classes=model.num_classes)

    def forward(self, images, labels):
        if self.mixup is not None and self.training:
            images, soft = self.mixup(images, labels)
            logits = self.model(images).float()
            return torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(self.model(images).float(), labels, label_smoothing=self.label_smoothing)


def train_classifier(model: nn.Module, train_set, out: str | Path, meta: dict, method: str = "tome", r: int = 0,
                     mode: str = "full", adapter_dim: int = 32, adapter_scale: float = 0.1, epochs: int = 30,
                     batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.05, warmup_epochs: float = 0,
                     label_smoothing: float = 0.1, drop_path: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0,
                     seed: int = 0, device: str | None = None, amp: bool = True, workers: int = 0,
                     progress: bool = True, rt: Runtime | None = None) -> nn.Module:
    """Train `model` on `train_set` with `method` at degree `r`; save it (weights + recipe) to `out`."""
    if mode not in MODES:
        raise TocomError(f"unknown fine-tuning mode {mode!r}; choose one of {', '.join(MODES)}")
    patch(model, method)
    if r > max_r(model):
        raise TocomError(f"r={r} exceeds what the backbone carries (max r = {max_r(model)} for "
                         f"{model.patch_embed.num_patches} patch tokens over {len(model.blocks)} blocks)")
    set_r(model, r)
    rt = rt or runtime(device, amp)
    seed_everything(seed)
    if drop_path:
        rates = torch.linspace(0, drop_path, len(model.blocks)).tolist()   # stochastic depth, DeiT-style
        from timm.layers import DropPath

        for blk, rate in zip(model.blocks, rates):
            blk.drop_path1 = blk.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()
    if mode != "full":
        for p in model.parameters():
            p.requires_grad_(False)
        if mode == "adaptformer":
            add_adapters(model, adapter_dim, adapter_scale)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
    model.to(rt.device)
    job = Fit(Classification(model, label_smoothing, mixup, cutmix), epochs=epochs, lr=lr,
              weight_decay=weight_decay, warmup_epochs=warmup_epochs, desc=f"train r={r}")
    fit(job, loader(train_set, batch_size, rt, train=True, seed=seed, workers=workers), out, rt, seed, progress)
    meta = {**meta, "num_classes": model.num_classes, "method": method, "source_r": r, "mode": mode,
            "adapter": {"hidden": adapter_dim, "scale": adapter_scale} if mode == "adaptformer" else None,
            "epochs": epochs, "seed": seed}
    for blk in model.blocks:      # inference-time models carry no stochastic depth
        blk.drop_path1 = blk.drop_path2 = nn.Identity()
    finish(Path(out), rt, lambda: save_model(model, out, meta), record=meta)
    return model
