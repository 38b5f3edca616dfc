"""Training ToCom by self-distillation on the pre-training data (paper Sec. 4.2, Eq. 8-9).

Teacher and student are the same frozen pre-trained model (classification head included); only
the plugin trains. Each step draws two different degrees m != n, uniformly over ordered pairs.

Which side is which: in the authors' released code the *student* runs at the target degree n with
the plugin's m -> n delta and the *teacher* is the plain model at the source degree m, i.e. the
plugin learns to make a model run at n behave as it does at m (``teacher_side="source"``, our
default). The paper's Eq. 8 is written the other way round (student = model at m plus the m -> n
plugin, teacher = model at n); ``teacher_side="target"`` runs that reading.

Losses: ``kd`` (KL between temperature-softened class distributions, Eq. 9), ``cls`` (cross-entropy
on the labels instead, the "CLS loss" ablation of Table 5) and ``features`` (L1 between the final
pooled features, for backbones without a classification head such as MAE, Sec. 5.6).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import max_r, patch, set_r
from ..errors import TocomError
from ..plugin import ToCom, compensate
from .common import Fit, Runtime, finish, fit, loader, runtime, seed_everything

LOSSES = ("kd", "cls", "features")
TEACHER_SIDES = ("source", "target")


def draw_pair(r_max: int) -> tuple[int, int]:
    """Uniform over ordered pairs (m, n) in [0, r_max]^2 with m != n (uses the global torch RNG)."""
    m = int(torch.randint(0, r_max + 1, ()).item())
    n = int(torch.randint(0, r_max, ()).item())
    return m, n + (n >= m)


class SelfDistillation(nn.Module):
    """forward(images, labels) -> loss for one randomly drawn degree pair."""

    def __init__(self, model: nn.Module, plugin: ToCom, loss: str, scale: float, teacher_side: str, temperature: float):
        super().__init__()
        self.model, self.plugin = model, plugin
        self.loss, self.scale, self.teacher_side, self.temperature = loss, scale, teacher_side, temperature
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _output(self, images: torch.Tensor) -> torch.Tensor:
        if self.loss == "features":
            return self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        return self.model(images)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m, n = draw_pair(self.plugin.r_max)
        student_r, teacher_r = (n, m) if self.teacher_side == "source" else (m, n)
        self.model.eval()      # frozen backbone: no dropout / drop-path in either branch
        with compensate(self.model, self.plugin, m, n, scale=self.scale, merge=False, set_degree=False):
            set_r(self.model, student_r)
            student = self._output(images)
        if self.loss == "cls":
            return F.cross_entropy(student.float(), labels)
        with torch.no_grad():
            set_r(self.model, teacher_r)
            teacher = self._output(images)
        if self.loss == "features":
            return F.l1_loss(student.float(), teacher.float())
        t = self.temperature
        return F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                        reduction="batchmean", log_target=True) * t * t


def distill(model: nn.Module, train_set, out: str | Path, method: str = "tome", r_max: int = 16, rank: int = 2,
            variant: str = "tocom", loss: str = "kd", scale: float = 0.1, teacher_side: str = "source",
            temperature: float = 1.0, epochs: int = 10, batch_size: int = 1024, lr: float = 1e-3,
            weight_decay: float = 0.05, warmup_epochs: float = 0.0, seed: int = 0, device: str | None = None,
            amp: bool = True, workers: int = 0, progress: bool = True, record: dict | None = None,
            rt: Runtime | None = None) -> ToCom:
    """Train a ToCom plugin for `model` (frozen) on `train_set`; write it to `out` (safetensors)."""
    if loss not in LOSSES:
        raise TocomError(f"unknown distillation loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if teacher_side not in TEACHER_SIDES:
        raise TocomError(f"teacher_side must be one of {', '.join(TEACHER_SIDES)}, got {teacher_side!r}")
    if loss != "features" and getattr(model, "num_classes", 0) == 0:
        raise TocomError("this backbone has no classification head; distill with loss='features' (as the paper does for MAE)")
    patch(model, method)
    if r_max > max_r(model):
        raise TocomError(f"r_max={r_max} exceeds what the backbone carries (max r = {max_r(model)} for "
                         f"{model.patch_embed.num_patches} patch tokens over {len(model.blocks)} blocks)")
    rt = rt or runtime(device, amp)
    seed_everything(seed)
    plugin = ToCom.for_model(model, r_max=r_max, rank=rank, variant=variant)
    model.to(rt.device)
    plugin.to(rt.device)
    job = Fit(SelfDistillation(model, plugin, loss, scale, teacher_side, temperature), epochs=epochs, lr=lr,
              weight_decay=weight_decay, warmup_epochs=warmup_epochs, desc=f"distill {variant}")
    fit(job, loader(train_set, batch_size, rt, train=True, seed=seed, workers=workers), out, rt, seed, progress)
    info = {"loss": loss, "train_scale": scale, "teacher_side": teacher_side, "temperature": temperature,
            "epochs": epochs, "seed": seed, **(record or {})}
    finish(Path(out), rt, lambda: plugin.save(out, extra=info), record=info)
    return plugin
