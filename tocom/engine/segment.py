"""Semantic segmentation with token compression (the paper's appendix, Table 11).

`segment_finetune`: an off-the-shelf Segmenter (timm ViT encoder + Mask Transformer) fine-tuned on a
segmentation dataset at a source degree r with ToMe before each FFN / unmerged after it
(`tome_ffn`) active, by Segmenter's ADE20K recipe (`SegmentSettings`: SGD momentum 0.9, poly decay
power 0.9, no weight decay, batch 8, 160k iterations, 512 x 512 crops, cross-entropy ignoring 255).
Whole model trained; the encoder starts from the (ImageNet) backbone checkpoint. It runs the same
`common.fit` loop as the classification engines, with a per-pixel cross-entropy as the loss and SGD /
poly / a step budget as the recipe, so it resumes after a kill from the last finished epoch (state
from other settings is discarded with one line), holds `<out>.lock` against a second writer, trains
under DDP when launched by torchrun and under autocast at the run's precision (`RunSettings.precision`).

`segment_evaluate`: single-scale mIoU at every target r, plain and with each ToCom plugin (applied to
the encoder, merged into W_q/W_v), the plugin's s chosen per target on a held-out split the model
never trained on (`val`: disjoint from `train`), then reported on the other splits. One tidy CSV,
like `tocom evaluate`'s, with `miou` instead of `top1` and the analytic GFLOPs of each target in Table 11's
convention (no attention products; `tocom flops --head segmenter` prints the same numbers).

The plugins are the classification backbone's, distilled by `tocom distill --method tome_ffn` (the
paper distils on ImageNet at 512 x 512 for 2 epochs with KD on the classifier): the Segmenter's
encoder starts from that backbone, so the plugin's m -> n moves apply to it as they do to any
model fine-tuned from it.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..compress import max_r, patch, set_r
from ..errors import TocomError
from ..io import header_json, read_safetensors_header, write_safetensors
from ..lineage import comparable, data_entry
from ..models import check_header_values
from ..plugin import ToCom
from ..segment import TABLE11_ATTENTION_MATMULS, MeanIoU, create_segmenter, segmenter_flops
from ..settings import DENSE_METHODS, EvalSettings, RunSettings, SegmentSettings, splits_overlap
from .common import Fit, Runtime, evaluate_targets, finish, fit, loader, loading, runtime, seed_everything, write_table

METHOD = DENSE_METHODS[0]   # ToMe before each FFN, unmerged after (Table 11)
HEADER = "tocom_segmenter"
COLUMNS = ["dataset", "backbone", "method", "source_r", "target_r", "tocom", "variant", "s", "split", "seed",
           "miou", "pixel_acc", "n", "gflops", "selected"]


# ---- model files ----------------------------------------------------------------------------------
def build_segmenter(backbone: str, n_cls: int, s: SegmentSettings, checkpoint: str | None = None,
                    pretrained: bool = False):
    """A Segmenter on `backbone` laid out for s.crop_size px, its encoder from `checkpoint` (ImageNet
    weights: an official .pth or a tocom .safetensors; the classification head is dropped)."""
    return create_segmenter(backbone, n_cls=n_cls, img_size=s.crop_size, checkpoint=checkpoint,
                            pretrained=pretrained, decoder_depth=s.decoder_depth, drop_path_rate=s.drop_path)


def save_segmenter(model: nn.Module, path: str | Path, meta: dict) -> None:
    write_safetensors(model.state_dict(), path, {HEADER: meta})


def load_segmenter(path: str | Path):
    """(Segmenter, meta) from a `segment_finetune` output, patched for tome_ffn at its source r."""
    path = Path(path)
    if not path.is_file():
        raise TocomError(f"no segmentation model at {path}; run `tocom segment-finetune` to make one or fix the path")
    fix = "re-run `tocom segment-finetune`"
    meta = header_json(path, read_safetensors_header(path, fix)[0], HEADER, f"'{HEADER}' header", fix)
    if meta is None:
        raise TocomError(f"{path} is not a Segmenter written by `tocom segment-finetune` (no '{HEADER}' header)")
    if not isinstance(meta.get("backbone"), str) or not meta["backbone"]:
        raise TocomError(f"{path}: its '{HEADER}' header names no backbone; {fix}")
    check_header_values(path, meta, f"'{HEADER}' header", fix,
                        required={"num_classes": 1, "img_size": 1, "decoder_depth": 0}, optional={"source_r": 0, "seed": 0})
    model = create_segmenter(meta["backbone"], n_cls=meta["num_classes"], img_size=meta["img_size"],
                             checkpoint=str(path), decoder_depth=meta["decoder_depth"], drop_path_rate=0.0)
    patch(model, METHOD)
    set_r(model, int(meta.get("source_r", 0)))
    return model, meta


# ---- training -------------------------------------------------------------------------------------
class PixelCrossEntropy(nn.Module):
    """forward(images, labels) -> Segmenter's loss: cross-entropy over the pixels, `ignore_index` skipped."""

    def __init__(self, model: nn.Module, ignore_index: int = 255):
        super().__init__()
        self.model, self.ignore_index = model, int(ignore_index)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(images).float(), labels, ignore_index=self.ignore_index)


def segment_job(model: nn.Module, s: SegmentSettings, batches_per_epoch: int, r: int = 0) -> Fit:
    """Segmenter's recipe as a `Fit`: SGD (momentum, no weight decay), poly decay to 0 over the run, no
    warm-up; `s.epochs` passes over the data, or else `s.iterations` steps (the last pass cut short)."""
    epochs, max_steps = (s.epochs, None) if s.epochs else (-(-s.iterations // batches_per_epoch), s.iterations)
    return Fit(PixelCrossEntropy(model, s.ignore_index), epochs=epochs, lr=s.lr, weight_decay=s.weight_decay,
               warmup_epochs=0.0, min_lr=0.0, optimizer="sgd", momentum=s.momentum, schedule="poly",
               poly_power=s.poly_power, max_steps=max_steps, desc=f"segment r={r}")


def segment_finetune(model: nn.Module, train_set, out: str | Path, r: int = 0, s: SegmentSettings | None = None,
                     run: RunSettings | None = None, record: dict | None = None,
                     lineage: dict | None = None) -> nn.Module:
    """Fine-tune a Segmenter (all weights) at source degree r with tome_ffn active; write it to `out`.

    Resumable per epoch like every `fit` run: rerunning the same command after a kill continues from the
    last finished epoch and ends with the weights of an uninterrupted run. `lineage` (tocom/lineage.py: the
    encoder's backbone and checkpoint) goes into the header with the data's entry added."""
    s, run = s or SegmentSettings(), run or RunSettings()
    patch(model, METHOD)
    if not 0 <= r <= max_r(model):
        raise TocomError(f"source r {r} is outside what the encoder carries (0..{max_r(model)} with tome_ffn)")
    set_r(model, r)
    rt = runtime(run.device, run.precision)
    seed_everything(run.seed)
    model.to(rt.device).train()
    data = loader(train_set, s.batch_size, rt, train=True, seed=run.seed, workers=run.workers)
    if len(data) == 0:
        raise TocomError(f"no training batch: {len(train_set)} images for batch size {s.batch_size}")
    job = segment_job(model, s, len(data), r)
    meta = {"backbone": (getattr(model.tocom_backbone, "pretrained_cfg", None) or {}).get("architecture", ""),
            "num_classes": model.n_cls, "img_size": model.img_size, "decoder_depth": len(model.decoder.blocks),
            "method": METHOD, "source_r": int(r), "split": s.split, "settings": s.asdict(), "seed": run.seed,
            "steps": job.max_steps or job.epochs * len(data), **(record or {}),
            "lineage": {**(lineage or {}), "data": data_entry(train_set)}}
    fingerprint = {**s.fingerprint(), "method": METHOD, "r": int(r), "seed": run.seed,
                   **{k: meta[k] for k in ("backbone", "num_classes", "img_size", "decoder_depth")}, **(record or {})}
    fit(job, data, out, rt, run.seed, not run.quiet, fingerprint=fingerprint, inputs=comparable(meta["lineage"]))
    model.eval()
    finish(Path(out), rt, lambda: save_segmenter(model, out, meta), record=meta)
    return model


# ---- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def miou(model: nn.Module, data, num_classes: int, ignore_index: int = 255, device=None) -> dict:
    """Single-scale mIoU: sliding-window logits (window = the encoder's resolution), upsampled to the labels."""
    metric = MeanIoU(num_classes, ignore_index)
    n = 0
    for images, labels in data:
        images = images.to(device, non_blocking=True) if device is not None else images
        logits = model.inference(images)
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        metric.update(logits.argmax(1), labels)
        n += images.shape[0]
    out = metric.compute()
    return {"miou": 100.0 * out["miou"], "pixel_acc": 100.0 * out["pixel_acc"], "n": n}


def _seg_loader(ds, batch_size: int, rt: Runtime, workers: int = 0):
    """Every image in order, unsharded (mIoU is not reduced over ranks); one at a time when sizes vary."""
    from ..data.segmentation import collate_segmentation

    fixed = getattr(ds.joint_transform(), "kind", "fixed") == "fixed"
    return torch.utils.data.DataLoader(ds, batch_size=batch_size if fixed else 1, shuffle=False,
                                       collate_fn=collate_segmentation, **loading(rt, workers))


def segment_evaluate(model: nn.Module, meta: dict, splits: dict, targets: Sequence[int],
                     plugins: dict[str, ToCom] | None = None, s: EvalSettings | None = None,
                     run: RunSettings | None = None, out: str | Path | None = None) -> pd.DataFrame:
    """mIoU of a Segmenter (fine-tuned at meta['source_r']) at each target r, plain and with each plugin.

    splits: {"val": dataset, "test": dataset}; s is chosen per target and plugin on `s.select_split`,
    which must be held out from the model's training split."""
    s, run = s or EvalSettings(), run or RunSettings()
    source = int(meta.get("source_r", 0))
    patch(model, METHOD)
    bad = [t for t in targets if not 0 <= t <= max_r(model)]
    if bad:
        raise TocomError(f"target r {bad} is outside what the encoder carries (0..{max_r(model)} with tome_ffn)")
    select = s.select_split
    if select not in splits:
        raise TocomError(f"selection split {select!r} is not among the evaluated splits {list(splits)}")
    trained = meta.get("split")
    if trained is None or splits_overlap(trained, select):
        raise TocomError(f"the model was trained on {trained!r}, which is not held out from the selection split "
                         f"{select!r}; choose s on a held-out split it never saw (val, never test)")
    n_cls = int(meta["num_classes"])
    for name, ds in splits.items():
        if getattr(ds, "num_classes", n_cls) != n_cls:
            raise TocomError(f"the model has {n_cls} classes but {ds.name} has {ds.num_classes}; evaluate it on the "
                             "dataset it was fine-tuned on")
    rt = runtime(run.device, run.precision)
    model.to(rt.device).eval()
    loaders = {name: _seg_loader(ds, s.batch_size, rt, run.workers) for name, ds in splits.items()}
    ignore = int((meta.get("settings") or {}).get("ignore_index", 255))
    gflops = {t: segmenter_flops(model, t, attention_matmuls=TABLE11_ATTENTION_MATMULS)["gflops"] for t in targets}

    def measure(split, target, variant, scale):
        with rt.autocast():
            res = miou(model, loaders[split], n_cls, ignore, rt.device)
        if not run.quiet:
            print(f"[segment] {split} r={target} {variant} s={scale}: mIoU {res['miou']:.2f}", file=sys.stderr)
        return {**res, "gflops": gflops[target]}

    base = dict(dataset=meta.get("dataset", ""), backbone=meta.get("backbone", ""), method=METHOD, source_r=source,
                seed=run.seed)
    rows = evaluate_targets([model.tocom_backbone], list(loaders), targets, source, plugins or {}, s, measure, "miou",
                            rt.device, base)
    set_r(model, source)
    return write_table(pd.DataFrame(rows, columns=COLUMNS), out)
