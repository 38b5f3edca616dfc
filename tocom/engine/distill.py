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

Teacher outputs computed once (DistillSettings.teacher = "once"): the teacher is the plain frozen model in
eval mode, so on images that are not augmented (no mixup/cutmix, a deterministic transform) its output
depends only on the image and the degree. Each (image, degree) is then computed at most once
(`TeacherOutputs`): the first time a step needs it, or by `teacher_outputs` for every plugin distilled
from the same model, method and images (the workflow does this where two or more plugins share them:
tocom/experiments.py). The same losses as computing the teacher every step, up to float rounding; a
distillation step costs about a quarter less.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..compress import max_r, patch, set_r
from ..errors import TocomError
from ..io import header_json, read_safetensors, read_safetensors_header, write_safetensors
from ..lineage import comparable, data_entry
from ..plugin import ToCom, compensate
from ..settings import DistillSettings, RunSettings
from .common import Fit, finish, fit, loader, runtime, seed_everything, set_drop_path


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


def plain_output(model: nn.Module, images: torch.Tensor, loss: str) -> torch.Tensor:
    """What the loss compares: the logits, or the pooled features for the `features` loss."""
    return model.forward_head(model.forward_features(images), pre_logits=True) if loss == "features" else model(images)


class TeacherOutputs:
    """The plain model's outputs per image (its position in the dataset) and degree (its place on the ladder
    0, r_step, ..., r_max), each computed at most once (DistillSettings.teacher = "once"): filled from a file
    `teacher_outputs` wrote for several plugins, or computed the first time a step asks for them and kept."""

    MAX_BYTES = 2 ** 31              # kept in memory: refuse what would not fit comfortably

    def __init__(self, n: int, degrees: int, table: torch.Tensor | None = None):
        self.n, self.degrees, self.table = n, degrees, table
        self.known = torch.full((n, degrees), table is not None)
        self.computed = 0            # (image, degree) outputs this process computed

    @torch.no_grad()
    def __call__(self, model: nn.Module, images: torch.Tensor, index: torch.Tensor, degree: int, r: int,
                 loss: str) -> torch.Tensor:
        index = index.cpu()
        missing = ~self.known[index, degree]
        if missing.any():
            was = model.training
            model.eval()
            set_r(model, r)
            out = plain_output(model, images[missing.to(images.device)], loss).float().cpu()
            model.train(was)
            if self.table is None:
                if self.n * self.degrees * out.shape[-1] * 4 > self.MAX_BYTES:
                    raise TocomError(f"the teacher's outputs on {self.n} images at {self.degrees} degrees would not "
                                     "fit in memory; distil with teacher live")
                self.table = torch.zeros(self.n, self.degrees, out.shape[-1])
            self.table[index[missing], degree] = out
            self.known[index[missing], degree] = True
            self.computed += int(missing.sum())
        return self.table[index, degree].to(images.device)


class SelfDistillation(nn.Module):
    """forward(images, labels) -> loss for one randomly drawn degree pair.

    teacher: the teacher's outputs computed once (`TeacherOutputs`); the second item of a batch is then each
    image's position in the dataset (`Indexed`), not its label."""

    def __init__(self, model: nn.Module, plugin: ToCom, s: DistillSettings, num_classes: int | None = None,
                 teacher: TeacherOutputs | None = None):
        super().__init__()
        self.model, self.plugin, self.s, self.teacher = model, plugin, s, teacher
        # The mixed labels are one-hot over the *data's* classes: a headless backbone (MAE) has no head
        # to size them, and only the `cls` loss reads them at all.
        self.mix = mixer(s, num_classes or getattr(model, "num_classes", 0))
        if teacher is not None and (self.mix is not None or s.loss == "cls"):
            raise TocomError("teacher outputs computed once serve only unmixed images and a teacher's loss: set "
                             "mixup and cutmix to 0 and use loss kd or features, or distil with teacher live")
        self.model.requires_grad_(False)

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
            student = plain_output(self.model, images, s.loss).float()
        if s.loss == "cls":
            if soft is not None:
                return torch.sum(-soft * F.log_softmax(student, dim=-1), dim=-1).mean()
            return F.cross_entropy(student, labels)
        if self.teacher is not None:        # labels are the images' positions; eval mode draws no randomness
            teacher = self.teacher(self.model, images, labels, teacher_r // step, teacher_r, s.loss)
        else:
            self.model.eval()               # teacher: the plain model, deterministic
            with torch.no_grad():
                set_r(self.model, teacher_r)
                teacher = plain_output(self.model, images, s.loss).float()
        if s.loss == "features":
            return F.l1_loss(student, teacher)
        t = s.temperature
        kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="sum", log_target=True)
        return kl * t * t / student.numel()


class Indexed(Dataset):
    """(image, its position) items, so a step finds each image's teacher outputs computed once."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds[i][0], i


TEACHER_HEADER = "teacher_outputs"


def teacher_fields(s: DistillSettings, dataset, seed: int) -> dict:
    """What makes two plugins' teachers the same: the settings of DistillSettings.TEACHER_KEYS, the images
    (dataset, the seed that drew `limit` of them, how many) and what is compared (logits, or features)."""
    return {**{k: getattr(s, k) for k in DistillSettings.TEACHER_KEYS}, "dataset": getattr(dataset, "name", ""),
            "seed": seed, "output": "features" if s.loss == "features" else "logits", "n": len(dataset)}


def check_unaugmented(dataset) -> None:
    if getattr(dataset, "augments", False):
        raise TocomError(f"{getattr(dataset, 'name', 'the dataset')} '{getattr(dataset, 'split', '')}' is read with "
                         "random augmentations, so its teacher's outputs change every epoch and cannot be computed "
                         "once; distil with teacher live")


@torch.no_grad()
def teacher_outputs(model: nn.Module, dataset, out: str | Path, s: DistillSettings | None = None,
                    run: RunSettings | None = None, record: dict | None = None) -> torch.Tensor:
    """The plain model's outputs for every image of `dataset` at every degree of the plugin's ladder
    (0, r_step, ..., r_max), in eval mode, as SelfDistillation's teacher computes them: written to `out` as
    (images, degrees, outputs) with the images' labels and `teacher_fields` in the header, for the plugins that
    share them (`distill(..., teacher=...)`, DistillSettings.teacher = "once")."""
    s, run = s or DistillSettings(), run or RunSettings()
    check_unaugmented(dataset)
    patch(model, s.method)
    if s.r_max > max_r(model) or s.r_max % s.r_step:
        raise TocomError(f"r_max={s.r_max} with r_step={s.r_step} does not fit the backbone (max r = {max_r(model)})")
    device = runtime(run.device, run.precision).device
    model.to(device).eval()
    rows = []
    for images, _ in DataLoader(dataset, batch_size=s.batch_size, shuffle=False):    # every image, in order
        images, per_degree = images.to(device), []
        for r in range(0, s.r_max + 1, s.r_step):
            set_r(model, r)
            per_degree.append(plain_output(model, images, s.loss).float().cpu())
        rows.append(torch.stack(per_degree, 1))
    outputs = torch.cat(rows)
    targets = torch.as_tensor(getattr(dataset, "targets", []), dtype=torch.long)
    write_safetensors({"outputs": outputs, "targets": targets}, out,
                      {TEACHER_HEADER: {**teacher_fields(s, dataset, run.seed), **(record or {})}})
    return outputs


def read_teacher_outputs(path: str | Path, dataset, s: DistillSettings, seed: int,
                         made_from: dict | None = None) -> torch.Tensor:
    """The outputs `teacher_outputs` wrote, after checking they were computed for these images, degrees and
    loss, and from the model `made_from` names (its `checkpoint`; one TocomError line naming what differs)."""
    fix = "recompute them (tocom teacher-outputs with this plugin's settings) or distil without --teacher-outputs"
    meta, _ = read_safetensors_header(path, fix)
    made = header_json(path, meta, TEACHER_HEADER, "teacher-outputs header", fix)
    if made is None:
        raise TocomError(f"{path} holds no teacher outputs (no '{TEACHER_HEADER}' header); {fix}")
    want = {**teacher_fields(s, dataset, seed), **(made_from or {})}
    differ = [f"{k} {made.get(k)!r} (this plugin: {v!r})" for k, v in want.items() if made.get(k) != v]
    if differ:
        raise TocomError(f"{path} was computed for {', '.join(differ)}; {fix}")
    tensors = read_safetensors(path, fix)
    if tensors["targets"].tolist() != list(getattr(dataset, "targets", [])):
        raise TocomError(f"{path} was computed for other images than this dataset's (their labels differ); {fix}")
    return tensors["outputs"]


def distill(model: nn.Module, train_set, out: str | Path, s: DistillSettings | None = None,
            run: RunSettings | None = None, record: dict | None = None, lineage: dict | None = None,
            teacher: torch.Tensor | None = None) -> ToCom:
    """Train a ToCom plugin for `model` (frozen) on `train_set`; write it to `out` (safetensors).

    `lineage` (tocom/lineage.py: the backbone it is distilled on, the checkpoint it was read from) goes into
    the plugin's `extra` with the data's entry added, and its content into the resume fingerprint.
    With s.teacher "once", `teacher` holds the plain model's outputs on `train_set` computed for several plugins
    (`read_teacher_outputs`); without it, each is computed the first time a step needs it and kept."""
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
    rt = runtime(run.device, run.precision)
    seed_everything(run.seed)
    plugin = ToCom.for_model(model, r_max=s.r_max, rank=s.rank, variant=s.variant, r_step=s.r_step)
    set_drop_path(model, s.drop_path)
    model.to(rt.device)
    plugin.to(rt.device)
    once = s.teacher == "once" and s.loss != "cls"         # the cls loss has no teacher
    if teacher is not None and not once:
        raise TocomError("teacher outputs computed once are read with teacher once (and a loss with a teacher); "
                         "set it or drop them")
    if once:
        check_unaugmented(train_set)
        teacher = TeacherOutputs(len(train_set), s.r_max // s.r_step + 1, teacher)
    job = Fit(SelfDistillation(model, plugin, s, getattr(train_set, "num_classes", None), teacher), epochs=s.epochs,
              lr=s.effective_lr, weight_decay=s.weight_decay, warmup_epochs=s.warmup_epochs, min_lr=s.min_lr,
              desc=f"distill {s.variant}")
    fingerprint = {**s.fingerprint(), "seed": run.seed, **(record or {})}
    lineage = {**(lineage or {}), "data": data_entry(train_set)}
    data = Indexed(train_set) if once else train_set
    fit(job, loader(data, s.batch_size, rt, train=True, seed=run.seed, workers=run.workers, repeats=s.repeated_aug),
        out, rt, run.seed, not run.quiet, fingerprint=fingerprint, inputs=comparable(lineage))
    set_drop_path(model, 0.0)
    info = {"settings": s.asdict(), "train_scale": s.scale, "seed": run.seed, **(record or {}), "lineage": lineage}
    finish(Path(out), rt, lambda: plugin.save(out, extra=info), record=info)
    return plugin
