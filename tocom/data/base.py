"""Shared pieces of every dataset: the dataset base class, deterministic splits, error helpers.

Every dataset in `tocom.data` is a `TocomDataset`: it knows all its labels up front
(`.targets`, so a sampler can stratify or count without decoding a single image) and
decodes one image lazily in `__getitem__`. Splitting and `limit` are done by *restricting*
the list of records, so the same code serves files on disk, arrays in memory and
procedurally generated images.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from tocom.errors import TocomError

#: Share of the official train split held out as "val" when a dataset has no official val split.
VAL_FRACTION = 0.1

#: Seed of held-out splits (val carved out of train, digits' test). Fixed, and deliberately *not*
#: the run seed: a model trained with seed 3 and evaluated by a script using seed 0 must still
#: see disjoint train/val/test images.
DEFAULT_SPLIT_SEED = 0


def data_error(path: str, expected: str, how: str) -> TocomError:
    """One-line error naming the path, what should be there, and how to get or fix it."""
    msg = f"{path}: expected {expected}; {how}"
    return TocomError(" ".join(msg.split()))


def require_file(path: str, expected: str, how: str, exists: Callable[[str], bool] = os.path.isfile) -> str:
    if not exists(path):
        raise data_error(path, expected, how)
    return path


def require_dir(path: str, expected: str, how: str) -> str:
    return require_file(path, expected, how, os.path.isdir)


class TocomDataset(Dataset):
    """Base class: `(image tensor, int label)` items with labels known without loading images.

    Subclasses implement `load(record) -> PIL.Image` where `record` is an integer id into the
    subclass's own storage (a file list, an array, a procedural index).
    """

    #: Files that decide which items the split holds (VTAB-1k's split lists): their digests go into the lineage
    #: of every output made from the split (tocom/lineage.py), the dataset's name and root for the others.
    split_files: tuple[str, ...] = ()

    def __init__(self, name: str, split: str, targets: Sequence[int], num_classes: int):
        self.name = name
        self.split = split
        self.num_classes = int(num_classes)
        self.targets: list[int] = [int(t) for t in targets]
        self._records: list[int] = list(range(len(self.targets)))
        self.transform: Callable | None = None
        bad = [t for t in self.targets if not 0 <= t < self.num_classes]
        if bad:
            raise TocomError(f"{name}: label {bad[0]} is outside 0..{self.num_classes - 1} in split "
                             f"'{split}'; the dataset files are malformed or belong to another dataset")

    def load(self, record: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int):
        img = self.load(self._records[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]

    @property
    def record_ids(self) -> list[int]:
        """Ids of the items in the underlying storage (file list / array / procedural stream) of
        the *official* split the items come from; equal ids = the same image. For checking that
        splits are disjoint without decoding images."""
        return list(self._records)

    def restrict(self, positions: Sequence[int]) -> "TocomDataset":
        """Keep only the items at `positions` (indices into the current item list), in order."""
        positions = [int(p) for p in positions]
        self._records = [self._records[p] for p in positions]
        self.targets = [self.targets[p] for p in positions]
        return self

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
                f"len={len(self)}, num_classes={self.num_classes})")


#: What PIL raises for a file it cannot decode; DecompressionBombError is an image whose header claims more
#: pixels than PIL's safety limit (Image.MAX_IMAGE_PIXELS x 2), refused before decoding.
IMAGE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def pil_rgb(path: str) -> Image.Image:
    """Open an image file as RGB; a broken file becomes a one-line TocomError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except IMAGE_ERRORS as e:
        raise data_error(path, "a readable image file", f"the file is missing, corrupt or too large "
                         f"({type(e).__name__}: {e}); re-extract the dataset") from None


class FileListDataset(TocomDataset):
    """Images listed as (path, label) pairs; paths are checked at construction time."""

    def __init__(self, name, split, paths, targets, num_classes, how_to_get: str, check_files: bool = True):
        self.paths = list(paths)
        if check_files:
            for p in self.paths:
                if not os.path.isfile(p):
                    raise data_error(p, f"an image file listed in the '{split}' split of {name}", how_to_get)
        super().__init__(name, split, targets, num_classes)

    def load(self, record: int) -> Image.Image:
        return pil_rgb(self.paths[record])


class ArrayDataset(TocomDataset):
    """Images held in memory as a uint8 array (N, H, W) grayscale or (N, H, W, 3) RGB."""

    def __init__(self, name, split, images: np.ndarray, targets, num_classes):
        self.images = images
        super().__init__(name, split, targets, num_classes)

    def load(self, record: int) -> Image.Image:
        # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
        return Image.fromarray(np.ascontiguousarray(self.images[record])).convert("RGB")


def stratified_pick(targets: Sequence[int], n_pick: int, seed: int) -> np.ndarray:
    """Sorted positions of `n_pick` items chosen at random but in proportion to class sizes.

    Each class gets floor(share) items and the leftover items go to the classes with the
    largest remainders (ties broken at random), so the total is exactly `n_pick` and every
    class with >= 1/frac items is represented. Deterministic given `seed`.
    """
    t = np.asarray(targets, dtype=np.int64)
    n = len(t)
    n_pick = int(min(max(n_pick, 0), n))
    if n_pick == 0:
        return np.zeros(0, dtype=np.int64)
    if n_pick == n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    order = np.argsort(t, kind="stable")
    classes, starts, counts = np.unique(t[order], return_index=True, return_counts=True)
    quota = counts * (n_pick / n)
    take = np.floor(quota).astype(np.int64)
    left = n_pick - int(take.sum())
    if left > 0:
        rank = np.lexsort((rng.random(len(classes)), -(quota - take)))
        take[rank[:left]] += 1
    picked = [rng.choice(order[s : s + c], size=k, replace=False) for s, c, k in zip(starts, counts, take) if k > 0]
    return np.sort(np.concatenate(picked))


def holdout_positions(targets: Sequence[int], split: str, seed: int, frac: float = VAL_FRACTION) -> np.ndarray:
    """Positions for split "train"/"val"/"trainval" of a pool that has no official val split.

    "val" = a stratified `frac` of the pool, "train" = the rest, "trainval" = the whole pool,
    so train and val are disjoint and train ∪ val == trainval.
    """
    n = len(targets)
    if split == "trainval":
        return np.arange(n)
    held = stratified_pick(targets, int(round(frac * n)), seed)
    if split == "val":
        return held
    if split == "train":
        return np.setdiff1d(np.arange(n), held)
    raise ValueError(f"holdout_positions: unexpected split {split!r}")
