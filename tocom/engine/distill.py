"""Training ToCom by self-distillation on the pre-training data (paper Sec. 4.2, Eq. 8-9).

Teacher and student are the same frozen pre-trained model (classification head included); only
the plugin trains. Each step draws two different degrees m != n, uniformly over ordered pairs.

Which side is which: in the authors' released code the *student* runs at the target degree n with
the plugin's m -> n delta and the *teacher* is the plain model at the source degree m, i.e. the
plugin learns to make a model run at n behave as it does at m (``teacher_side="source"``, our
default). The paper's Eq. 8 is written the other way round (student = model at m plus the m -> n
plugin, teacher = model at n); ``teacher_side="target"`` runs that reading.

The recipe is Table 13's ImageNet column as the authors' script runs it: the student branch is in
train mode (stochastic depth 0.1 on the frozen blocks, dropout 0.1 on the LoRA bottleneck), the
images are mixed by mixup 0.8 / cutmix 1.0 (RandAugment and random erasing come with the
dataset's training transform), the teacher branch runs in eval mode on the same mixed images, and
the learning rate is the base lr x batch / 512 (DeiT's rule).

Losses: ``kd`` (KL between temperature-softened class distributions, Eq. 9, normalised per logit
as DeiT's soft distillation does), ``cls`` (cross-entropy on the (mixed) labels instead, the "CLS
loss" ablation of Table 5) and ``features`` (L1 between the final pooled features, for backbones
without a classification head such as MAE, Sec. 5.6).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import max_r, patch, set_r
from ..errors import TocomError
from ..plugin import ToCom, compensate
from ..settings import DistillSettings, RunSettings
from .common import Fit, Runtime, finish, fit, loader, runtime, seed_everything, set_drop_path


# Not a setting: the smoothing DeiT's recipe gives the mixed labels. Only the `cls` loss (a Table 5 ablation)
# reads labels; the distillation itself (kd, features) uses none, as Table 13's "-" says.
MIXED_LABEL_SMOOTHING = 0.1


def draw_pair(r_max: int) -> tuple[int, int]:
    """Uniform over ordered pairs (m, n) in [0, r_max]^2 with m != n (uses the global torch RNG)."""
    m = int(torch.randint(0, r_max + 1, ()).item())
    n = int(torch.randint(0, r_max, ()).item())
    return m, n + (n >= m)


def mixer(s: DistillSettings, num_classes: int):
    """timm's Mixup/CutMix as DeiT configures it (its label smoothing for the soft labels), or None."""
    if s.mixup <= 0 and s.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=s.mixup, cutmix_alpha=s.cutmix, label_smoothing=MIXED_LABEL_SMOOTHING,
                 num_classes=max(1, num_classes))


class SelfDistillation(nn.Module):
    """forward(images, labels) -> loss for one randomly drawn degree pair."""

    def __init__(self, model: nn.Module, plugin: ToCom, s: DistillSettings, num_classes: int | None = None):
        super().__init__()
        self.model, self.plugin, self.s = model, plugin, s
        # The mixed labels are one-hot over the *data's* classes: a headless backbone (MAE) has no head
        # to size them, and only the `cls` loss reads them at all.
        self.mix = mixer(s, num_classes or getattr(model, "num_classes", 0))
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _output(self, images: torch.Tensor) -> torch.Tensor:
        if self.s.loss == "features":
            return self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        return self.model(images)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = self.s
        step = self.plugin.r_step          # degrees are multiples of the plugin's step (1: every r)
        m, n = (v * step for v in draw_pair(self.plugin.r_max // step))
        student_r, teacher_r = (n, m) if s.teacher_side == "source" else (m, n)
        soft = None
        if self.mix is not None and self.training:
            images, soft = self.mix(images, labels)
        self.model.train(self.training)     # student: stochastic depth and LoRA dropout while training
        with compensate(self.model, self.plugin, m, n, scale=s.scale, merge=False, set_degree=False,
                        dropout=s.lora_dropout if self.training else 0.0):
            set_r(self.model, student_r)
            student = self._output(images).float()
        if s.loss == "cls":
            if soft is not None:
                return torch.sum(-soft * F.log_softmax(student, dim=-1), dim=-1).mean()
            return F.cross_entropy(student, labels)
        self.model.eval()                   # teacher: the plain model, deterministic
        with torch.no_grad():
            set_r(self.model, teacher_r)
            teacher = self._output(images).float()
        if s.loss == "features":
            return F.l1_loss(student, teacher)
        t = s.temperature
        kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="sum", log_target=True)
        return kl * t * t / student.numel()


def distill(model: nn.Module, train_set, out: str | Path, s: DistillSettings | None = None,
            run: RunSettings | None = None, record: dict | None = None, rt: Runtime | None = None) -> ToCom:
    """Train a ToCom plugin for `model` (frozen) on `train_set`; write it to `out` (safetensors)."""
    s, run = s or DistillSettings(), run or RunSettings()
    if s.loss != "features" and getattr(model, "num_classes", 0) == 0:
        raise TocomError("this backbone has no classification head; distill with loss='features' (as the paper does for MAE)")
    patch(model, s.method)
    if s.r_max > max_r(model):
        raise TocomError(f"r_max={s.r_max} exceeds what the backbone carries (max r = {max_r(model)} for "
                         f"{model.patch_embed.num_patches} patch tokens over {len(model.blocks)} blocks)")
    if s.r_max % s.r_step:
        raise TocomError(f"r_step={s.r_step} does not divide r_max={s.r_max}; the plugin's degrees are multiples "
                         "of its step up to r_max")
    rt = rt or runtime(run.device, run.precision)
    seed_everything(run.seed)
    plugin = ToCom.for_model(model, r_max=s.r_max, rank=s.rank, variant=s.variant, r_step=s.r_step)
    set_drop_path(model, s.drop_path)
    model.to(rt.device)
    plugin.to(rt.device)
    job = Fit(SelfDistillation(model, plugin, s, getattr(train_set, "num_classes", None)), epochs=s.epochs, lr=s.effective_lr, weight_decay=s.weight_decay,
              warmup_epochs=s.warmup_epochs, min_lr=s.min_lr, desc=f"distill {s.variant}")
    fingerprint = {**s.fingerprint(), "seed": run.seed, **(record or {})}
    fit(job, loader(train_set, s.batch_size, rt, train=True, seed=run.seed, workers=run.workers,
                    repeats=s.repeated_aug), out, rt, run.seed,
        not run.quiet, fingerprint=fingerprint)
    set_drop_path(model, 0.0)
    info = {"settings": s.asdict(), "train_scale": s.scale, "seed": run.seed, **(record or {})}
    finish(Path(out), rt, lambda: plugin.save(out, extra=info), record=info)
    return plugin
