"""Semantic-segmentation datasets: ADE20K (official release) and a procedural Fashion-MNIST scene task.

Items are `(FloatTensor[3, H, W], LongTensor[H, W])`: a normalised image and its label map, with
`IGNORE_INDEX` (255) on pixels that carry no label. Both datasets are registered in
`tocom.data.registry` ("ade20k", "fashion_mnist_seg"), so `build_dataset` builds them and resolves
their roots like any other dataset; the registry's `build_segmentation_dataset` is the same with a
joint (image + label) augmentation switch.

ADE20K, the release of the MIT Scene Parsing benchmark (`ADEChallengeData2016.zip`):
root/ADEChallengeData2016/ (or root itself) with images/{training,validation}/*.jpg and
annotations/{training,validation}/*.png (same stem). Annotation value 0 is "other" and becomes the
ignore label 255; 1..150 become classes 0..149 (mmseg's `reduce_zero_label`). Splits as for the
other datasets without a separate val set: 'test' = the official validation set (2,000 images, what
Segmenter and the ToCom paper report), 'trainval' = official training (20,210), 'val' = a fixed 10 %
of it, 'train' = the other 90 %.

fashion_mnist_seg (procedural, CPU scale): Fashion-MNIST items (28 x 28, from Debian's
`dataset-fashion-mnist`) pasted onto a dark noise canvas (default 56 x 56 px, 1-3 items, later items
on top). A pixel belongs to an item where the item's own intensity is >= `FG_THRESHOLD`; it is
labelled with that item's Fashion-MNIST class (0..9), every other pixel with `BACKGROUND` (10), so
the label map is exact. Scene i of a split is drawn from a generator seeded with (name, seed,
split stream, i): the same arguments give the same scenes. The items come from disjoint pools:
'train' from the 90 % of Fashion-MNIST's train images that `fashion_mnist` also calls train,
'val' from the held-out 10 % (the same `split_seed` rule), 'test' only from Fashion-MNIST's t10k
images; 'trainval' = the train scenes followed by the val scenes. So train and val share neither a
scene nor an item, and no test scene contains an image of Fashion-MNIST's train split.
"""
from __future__ import annotations

import os
import zlib
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..errors import TocomError
from .base import DEFAULT_SPLIT_SEED, IMAGE_ERRORS, TocomDataset, data_error, holdout_positions, pil_rgb, require_dir
from .transforms import TRAIN_SPLITS

IGNORE_INDEX = 255

# ----------------------------------------------------------------------------- joint transforms

SEG_SCALE_RANGE = (0.5, 2.0)     # Segmenter / mmseg ADE20K: random rescale of the (4S, S) scale
SEG_CAT_MAX_RATIO = 0.75         # a random crop is redrawn (up to 10 times) while one class covers >= 75 %


def _to_tensor(img: Image.Image, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _resize_pair(img: Image.Image, lab: np.ndarray, size: tuple[int, int], image_mode=Image.BILINEAR):
    """size = (h, w); labels always nearest."""
    h, w = size
    return img.resize((w, h), image_mode), np.asarray(Image.fromarray(lab).resize((w, h), Image.NEAREST))


class SegTransform:
    """(PIL image, uint8 label map) -> (FloatTensor[3, H, W], LongTensor[H, W]).

    kind "fixed": image and labels resized to img_size x img_size (labels nearest), no augmentation.
    kind "segmenter": Segmenter's ADE20K recipe (the ToCom paper, Sec. 6.0.3: mean subtraction, random
    resizing, left-right flipping, random crops of large images and padding of small ones to S x S).
    Training: rescale so the image fits (4S, S) x U(0.5, 2.0) keeping its aspect ratio, a random
    S x S crop (redrawn while one class covers >= 75 % of it), a flip with probability 0.5, padding
    to S x S (image 0 after normalisation, labels 255). Evaluation: rescale to fit (4S, S) keeping the
    aspect ratio (short side S for usual photos); the label map stays at its original resolution,
    as mIoU is measured there: upsample the logits (e.g. of `Segmenter.inference`) to it.
    """

    def __init__(self, img_size: int, kind: str = "fixed", train: bool = False, mean=(0.5, 0.5, 0.5),
                 std=(0.5, 0.5, 0.5), image_mode=Image.BILINEAR):
        if kind not in ("fixed", "segmenter"):
            raise TocomError(f"unknown segmentation transform {kind!r}; expected 'fixed' or 'segmenter'")
        self.size, self.kind, self.train = int(img_size), kind, bool(train)
        self.mean, self.std, self.image_mode = tuple(mean), tuple(std), image_mode

    def __call__(self, img: Image.Image, lab: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.size
        if self.kind == "fixed":
            img, lab = _resize_pair(img, lab, (s, s), self.image_mode)
            return _to_tensor(img, self.mean, self.std), torch.from_numpy(lab.astype(np.int64))
        w, h = img.size
        if not self.train:
            f = min(4 * s / max(h, w), s / min(h, w))
            img = img.resize((max(1, round(w * f)), max(1, round(h * f))), self.image_mode)
            return _to_tensor(img, self.mean, self.std), torch.from_numpy(np.asarray(lab, dtype=np.int64))
        ratio = float(torch.empty(()).uniform_(*SEG_SCALE_RANGE))
        f = min(4 * s * ratio / max(h, w), s * ratio / min(h, w))
        img, lab = _resize_pair(img, lab, (max(1, round(h * f)), max(1, round(w * f))), self.image_mode)
        h, w = lab.shape
        for _ in range(10):
            y0 = int(torch.randint(0, max(h - s, 0) + 1, ()))
            x0 = int(torch.randint(0, max(w - s, 0) + 1, ()))
            crop = lab[y0:y0 + s, x0:x0 + s]
            _, counts = np.unique(crop[crop != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < SEG_CAT_MAX_RATIO:
                break
        img, lab = img.crop((x0, y0, min(x0 + s, w), min(y0 + s, h))), np.ascontiguousarray(crop)
        x, y = _to_tensor(img, self.mean, self.std), torch.from_numpy(lab.astype(np.int64))
        if float(torch.rand(())) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        ph, pw = s - y.shape[0], s - y.shape[1]
        if ph > 0 or pw > 0:
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            y = F.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
        return x, y


def build_seg_transform(kind: str, img_size: int, train: bool) -> SegTransform:
    """The joint transform behind each of `build_dataset`'s transform names, for segmentation sets.

    "small": fixed resize (nearest), mean/std 0.5. "resize": fixed resize (bilinear), ImageNet mean/std.
    "deit": Segmenter's recipe (augmented for training), ImageNet mean/std.
    """
    if kind == "small":
        return SegTransform(img_size, "fixed", train, image_mode=Image.NEAREST)
    if kind in ("resize", "deit"):
        recipe = "fixed" if kind == "resize" else "segmenter"
        return SegTransform(img_size, recipe, train, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    raise TocomError(f"unknown transform {kind!r} for a segmentation dataset; expected deit, resize or small")


# ----------------------------------------------------------------------------- dataset base


class SegmentationDataset(TocomDataset):
    """Items `(image, label map)`; `targets` hold one class per image (for `limit`'s stratified pick).

    The joint transform is `seg_transform` if set, else the one `build_seg_transform` makes from the
    `transform_name` and `img_size` that `build_dataset` records (augmented on train splits). The
    image-only `transform` that `build_dataset` also attaches is not used.
    """

    ignore_index = IGNORE_INDEX
    default_kind = "small"
    seg_transform: SegTransform | None = None

    def load_pair(self, record: int) -> tuple[Image.Image, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, record: int) -> Image.Image:
        return self.load_pair(record)[0]

    def joint_transform(self) -> SegTransform:
        if self.seg_transform is None:
            kind = getattr(self, "transform_name", None) or self.default_kind
            size = getattr(self, "img_size", None) or self.native_size
            self.seg_transform = build_seg_transform(kind, size, self.split in TRAIN_SPLITS)
        return self.seg_transform

    def __getitem__(self, i: int):
        return self.joint_transform()(*self.load_pair(self._records[i]))


# ----------------------------------------------------------------------------- ADE20K

ADE_HOW = ("download ADEChallengeData2016.zip (MIT Scene Parsing benchmark, "
           "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip) and extract it under root")
ADE_NUM_CLASSES = 150


def ade20k_labels(ann: np.ndarray) -> np.ndarray:
    """ADE20K annotation values -> training labels: 0 ("other") -> 255, 1..150 -> 0..149."""
    ann = np.asarray(ann)
    out = ann.astype(np.int16) - 1
    out[(ann == 0) | (ann == 255)] = IGNORE_INDEX
    return out.astype(np.uint8)


class ADE20KDataset(SegmentationDataset):
    default_kind = "deit"
    native_size = 512

    def __init__(self, name, split, images: list[str], annotations: list[str]):
        self.images, self.annotations = list(images), list(annotations)
        super().__init__(name, split, [0] * len(self.images), ADE_NUM_CLASSES)

    def load_pair(self, record: int):
        path = self.annotations[record]
        try:
            with Image.open(path) as a:
                ann = np.asarray(a)
        except IMAGE_ERRORS as e:
            raise data_error(path, "a readable ADE20K annotation PNG", f"the file is missing or corrupt "
                             f"({type(e).__name__}); re-extract ADEChallengeData2016.zip") from None
        if ann.ndim != 2:
            raise data_error(path, f"a single-channel annotation PNG, found shape {ann.shape}", ADE_HOW)
        return pil_rgb(self.images[record]), ade20k_labels(ann)


def build_ade20k(spec, root: str, split: str, seed: int, split_seed: int = DEFAULT_SPLIT_SEED):
    """The official release layout; see the module docstring for the splits."""
    base = os.path.join(root, "ADEChallengeData2016")
    base = base if os.path.isdir(base) else root
    part = "validation" if split == "test" else "training"
    img_dir = require_dir(os.path.join(base, "images", part), f"the ADE20K {part} images (*.jpg) of ADEChallengeData2016",
                          ADE_HOW)
    ann_dir = require_dir(os.path.join(base, "annotations", part),
                          f"the ADE20K {part} annotations (*.png, one per image)", ADE_HOW)
    stems = sorted(f[:-4] for f in os.listdir(img_dir) if f.lower().endswith(".jpg"))
    if not stems:
        raise data_error(img_dir, f"the ADE20K {part} images (*.jpg)", ADE_HOW)
    anns = {f[:-4] for f in os.listdir(ann_dir) if f.lower().endswith(".png")}
    missing = [s for s in stems if s not in anns]
    if missing:
        raise data_error(os.path.join(ann_dir, missing[0] + ".png"),
                         f"an annotation for every image ({len(missing)} of {len(stems)} missing)", ADE_HOW)
    ds = ADE20KDataset(spec.name, split, [os.path.join(img_dir, s + ".jpg") for s in stems],
                       [os.path.join(ann_dir, s + ".png") for s in stems])
    return ds if split == "test" else ds.restrict(holdout_positions(ds.targets, split, split_seed))


# ----------------------------------------------------------------------------- Fashion-MNIST scenes

FG_THRESHOLD = 48       # an item pixel is foreground where its own intensity is >= this (of 255)
BACKGROUND = 10         # label of every pixel no item covers
FASHION_SEG_CLASSES = 11
ITEM = 28
_SEG_STREAMS = {"train": 1, "val": 2, "test": 3}


def compose_scene(size: int, items, background: np.ndarray | None = None, threshold: int = FG_THRESHOLD,
                  background_label: int = BACKGROUND) -> tuple[np.ndarray, np.ndarray]:
    """Paste `items` [(uint8 image (h, w), class, top, left), ...] in order onto a canvas.

    Returns (image uint8 (size, size), labels uint8 (size, size)). Where an item's pixel is >=
    `threshold` it overwrites the image and the label (so later items cover earlier ones); elsewhere
    the canvas keeps `background` (default zeros) and `background_label`.
    """
    img = np.zeros((size, size), np.uint8) if background is None else np.array(background, np.uint8, copy=True)
    lab = np.full((size, size), background_label, np.uint8)
    for item, cls, top, left in items:
        item = np.asarray(item, np.uint8)
        h, w = item.shape
        if top < 0 or left < 0 or top + h > size or left + w > size:
            raise ValueError(f"compose_scene: a {h}x{w} item at ({top}, {left}) does not fit a {size}x{size} canvas")
        fg = item >= threshold
        img[top:top + h, left:left + w][fg] = item[fg]
        lab[top:top + h, left:left + w][fg] = cls
    return img, lab


@lru_cache(maxsize=2)
def _fashion_arrays(root: str):
    from .small import FASHION_HOW, idx_path, read_idx

    out = {}
    for prefix in ("train", "t10k"):
        images = read_idx(idx_path(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(idx_path(root, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or images.shape[1:] != (ITEM, ITEM) or len(labels) != len(images):
            raise data_error(root, f"Fashion-MNIST {prefix} IDX files with (N, 28, 28) images and N labels, found "
                             f"{images.shape} / {labels.shape}", FASHION_HOW)
        out[prefix] = (images, labels.astype(np.int64))
    return out


class FashionSegDataset(SegmentationDataset):
    """One split of fashion_mnist_seg; see the module docstring for the contract."""

    default_kind = "small"

    def __init__(self, name, split, root: str, seed: int, n_train: int, n_val: int, n_test: int,
                 native_size: int = 56, max_items: int = 3, split_seed: int = DEFAULT_SPLIT_SEED):
        if min(n_train, n_val, n_test) < 0:
            raise TocomError(f"{name}: n_train/n_val/n_test must be >= 0, got {n_train}/{n_val}/{n_test}")
        if native_size < ITEM:
            raise TocomError(f"{name}: native_size must be >= {ITEM} px (one Fashion-MNIST item), got {native_size}")
        if max_items < 1:
            raise TocomError(f"{name}: max_items must be >= 1, got {max_items}")
        arrays = _fashion_arrays(root)
        train_labels = arrays["train"][1]
        self.pools = {   # stream -> (Fashion-MNIST file, positions in it)
            "train": ("train", holdout_positions(train_labels, "train", split_seed)),
            "val": ("train", holdout_positions(train_labels, "val", split_seed)),
            "test": ("t10k", np.arange(len(arrays["t10k"][1]))),
        }
        self.arrays, self.name = arrays, name
        self.native_size, self.max_items, self.seed = int(native_size), int(max_items), int(seed)
        n_train, n_val, n_test = int(n_train), int(n_val), int(n_test)
        # record id -> (stream, scene index); train and val share one id space (trainval = both)
        train, val = [("train", i) for i in range(n_train)], [("val", i) for i in range(n_val)]
        self._scenes = {"train": train, "val": val, "trainval": train + val,
                        "test": [("test", i) for i in range(n_test)]}[split]
        self._offset = n_train if split == "val" else 0
        targets = [self.placements_of(*sc)[-1]["cls"] for sc in self._scenes]
        super().__init__(name, split, targets, FASHION_SEG_CLASSES)

    @property
    def record_ids(self) -> list[int]:
        """Scene ids: train scenes 0..n_train-1, val scenes n_train.., test scenes 0.. of their own stream."""
        return [r + self._offset for r in self._records]

    def _rng(self, stream: str, idx: int, part: int = 0) -> np.random.Generator:
        """part 0 draws the placements, part 1 the background noise."""
        key = [zlib.crc32(self.name.encode()), self.seed % 2**32, _SEG_STREAMS[stream], idx, part]
        return np.random.default_rng(key)

    def placements_of(self, stream: str, idx: int) -> list[dict]:
        """The items of scene `idx` of `stream`, bottom to top: source file, index in it, class, top, left."""
        rng = self._rng(stream, idx)
        source, positions = self.pools[stream]
        labels = self.arrays[source][1]
        out = []
        for _ in range(int(rng.integers(1, self.max_items + 1))):
            index = int(positions[rng.integers(len(positions))])
            top, left = (int(v) for v in rng.integers(0, self.native_size - ITEM + 1, size=2))
            out.append({"source": source, "index": index, "cls": int(labels[index]), "top": top, "left": left})
        return out

    def placements(self, i: int) -> list[dict]:
        """The items of item i (after any restriction) of this split."""
        return self.placements_of(*self._scenes[self._records[i]])

    def _render(self, stream: str, idx: int) -> tuple[np.ndarray, np.ndarray]:
        items = self.placements_of(stream, idx)
        background = self._rng(stream, idx, 1).integers(0, FG_THRESHOLD // 2, size=(self.native_size,) * 2).astype(np.uint8)
        return compose_scene(self.native_size, [(self.arrays[p["source"]][0][p["index"]], p["cls"], p["top"], p["left"])
                                                for p in items], background)

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item i as (uint8 image (S, S), uint8 labels (S, S)), before the transform."""
        return self._render(*self._scenes[self._records[i]])

    def load_pair(self, record: int):
        img, lab = self._render(*self._scenes[record])
        return Image.fromarray(img).convert("RGB"), lab


def build_fashion_seg(spec, root: str, split: str, seed: int, n_train: int = 2000, n_val: int = 500,
                      n_test: int = 1000, native_size: int = 56, max_items: int = 3,
                      split_seed: int = DEFAULT_SPLIT_SEED):
    """Scenes of Fashion-MNIST items; see the module docstring."""
    return FashionSegDataset(spec.name, split, root, seed, n_train, n_val, n_test, native_size, max_items, split_seed)


def collate_segmentation(batch):
    """Stack (image, labels) pairs of equal size; the 'segmenter' eval transform gives varied sizes (batch 1)."""
    xs, ys = zip(*batch)
    if len({tuple(x.shape) for x in xs}) > 1:
        raise TocomError("segmentation batch with images of different sizes (Segmenter's evaluation keeps each "
                         "image's aspect ratio); evaluate with batch_size=1")
    return torch.stack(xs), torch.stack(ys)


__all__ = ["ADE_HOW", "BACKGROUND", "FG_THRESHOLD", "IGNORE_INDEX", "SegTransform", "SegmentationDataset",
           "ade20k_labels", "build_ade20k", "build_fashion_seg", "build_seg_transform", "collate_segmentation",
           "compose_scene"]
