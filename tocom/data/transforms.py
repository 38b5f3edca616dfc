"""The three preprocessing recipes a dataset can be read with.

- "deit":   the DeiT recipe. Training splits use timm's `create_transform` with RandAugment
            `rand-m9-mstd0.5-inc1`, color jitter 0.4 (which timm, like DeiT, does not apply while
            RandAugment is on), bicubic random-resized crop + flip, and random erasing 0.25 in
            pixel mode. Mixup/CutMix belong to the training engine, not here. Eval splits resize
            to img_size/0.875 and center-crop. ImageNet mean/std.
- "resize": the VTAB-1k protocol (paper's Table 13, as in VPT/NOAH): bicubic resize straight to
            img_size x img_size, no augmentation, ImageNet mean/std, for train and test alike.
- "small":  for tiny grayscale or procedural images: resize to img_size (nearest by default, so
            single-pixel detail stays crisp), replicate to 3 channels, normalize with mean/std 0.5,
            no augmentation.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T

from tocom.errors import TocomError

TRANSFORMS = ("deit", "resize", "small")
TRAIN_SPLITS = ("train", "trainval")

DEIT_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
DEIT_COLOR_JITTER = 0.4
DEIT_REPROB = 0.25
EVAL_CROP_PCT = 0.875

_INTERP = {mode: T.InterpolationMode[mode.upper()] for mode in ("nearest", "bilinear", "bicubic")}


class ToThreeChannels:
    """Replicate a 1-channel tensor to 3 channels (a class, not a lambda, so it pickles for workers)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(3, *x.shape[1:]) if x.shape[0] == 1 else x

    def __repr__(self) -> str:
        return "ToThreeChannels()"


def posterize_legacy(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Posterize as with the Pillow DeiT and the authors trained with: keeping 0 bits gives a black image.

    RandAugment's `PosterizeIncreasing` (the `inc1` of DeiT's `rand-m9-mstd0.5-inc1`) keeps 0 bits at
    magnitude 10, which the noisy magnitude reaches on ~2 % of its draws; Pillow >= 11 refuses 0 bits
    with a ValueError, which would stop an ImageNet or CIFAR epoch within its first few thousand images.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _legacy_posterize(transform):
    """Swap the posterize ops of a timm RandAugment (inside `transform`) for `posterize_legacy`."""
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if "Posterize" in getattr(op, "name", ""):
                op.aug_fn = posterize_legacy
    return transform


def augments(kind: str, train: bool) -> bool:
    """Whether a recipe draws random augmentations, so one image gives another tensor each time it is read
    (only DeiT's training recipe does); what decides whether outputs on a dataset may be computed once."""
    return kind == "deit" and train


def build_transform(kind: str, img_size: int, train: bool, interpolation: str | None = None):
    """Return a callable PIL.Image -> FloatTensor[3, img_size, img_size]."""
    if kind not in TRANSFORMS:
        raise TocomError(f"unknown transform {kind!r}; expected one of {', '.join(TRANSFORMS)} "
                         "(or None for the dataset's default)")
    if interpolation is not None and interpolation not in _INTERP:
        raise TocomError(f"unknown interpolation {interpolation!r}; expected one of {', '.join(_INTERP)}")
    img_size = int(img_size)
    if kind == "deit":
        common = dict(input_size=img_size, interpolation=interpolation or "bicubic", mean=IMAGENET_DEFAULT_MEAN,
                      std=IMAGENET_DEFAULT_STD)
        if train:
            return _legacy_posterize(create_transform(is_training=True, auto_augment=DEIT_AUTO_AUGMENT,
                                                      color_jitter=DEIT_COLOR_JITTER, re_prob=DEIT_REPROB,
                                                      re_mode="pixel", re_count=1, **common))
        return create_transform(is_training=False, crop_pct=EVAL_CROP_PCT, **common)
    small = kind == "small"
    mean, std = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if small else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    resize = T.Resize((img_size, img_size), interpolation=_INTERP[interpolation or ("nearest" if small else "bicubic")])
    return T.Compose([resize, T.ToTensor(), *([ToThreeChannels()] if small else []), T.Normalize(mean, std)])
