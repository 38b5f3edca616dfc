"""Small real datasets that ship with packages on this machine, so real-data runs need no download.

- Fashion-MNIST from the Debian package `dataset-fashion-mnist` (IDX files, parsed here with
  numpy because torchvision's reader expects its own folder layout).
- scikit-learn's bundled 8x8 `load_digits`.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from .base import DEFAULT_SPLIT_SEED, ArrayDataset, data_error, holdout_positions, stratified_pick

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"   # where Debian's dataset-fashion-mnist puts the IDX files
FASHION_HOW = "install it with 'apt-get install dataset-fashion-mnist' (files land in /usr/share/datasets/fashion-mnist) or pass root= a folder with the four IDX files"

# IDX type codes (3rd magic byte) -> numpy big-endian dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x0000TTNN, NN big-endian int32 dims, then data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise data_error(path, "a readable IDX file", f"the file is corrupt ({type(e).__name__}); {FASHION_HOW}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise data_error(path, "an IDX file (magic 0x0000TTNN)", FASHION_HOW)
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise data_error(path, f"an IDX header with {ndim} dimensions", FASHION_HOW)
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    n = int(np.prod(shape)) if shape else 1
    if len(raw) - header != n * dtype.itemsize:
        raise data_error(path, f"{n * dtype.itemsize} data bytes for shape {shape}, found {len(raw) - header}", FASHION_HOW)
    return np.frombuffer(raw, dtype=dtype, count=n, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def idx_path(root: str, stem: str) -> str:
    """root/stem, else root/stem.gz: the IDX files come plain or gzipped."""
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise data_error(os.path.join(root, stem + "(.gz)"), "a Fashion-MNIST IDX file", FASHION_HOW)


def build_fashion_mnist(spec, root: str, split: str, seed: int, split_seed: int = DEFAULT_SPLIT_SEED):
    """train-*/t10k-* IDX files; val = stratified 10 % of the 60k train images (fixed split seed)."""
    prefix = "t10k" if split == "test" else "train"
    img_path = idx_path(root, f"{prefix}-images-idx3-ubyte")
    lbl_path = idx_path(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise data_error(img_path, f"uint8 images of shape (N, 28, 28), found {images.dtype} {images.shape}", FASHION_HOW)
    if labels.ndim != 1 or len(labels) != len(images):
        raise data_error(lbl_path, f"{len(images)} labels (one per image), found shape {labels.shape}", FASHION_HOW)
    ds = ArrayDataset(spec.name, split, images, labels.astype(np.int64), spec.num_classes)
    ds.classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return ds if split == "test" else ds.restrict(holdout_positions(ds.targets, split, split_seed))


DIGITS_TEST_FRACTION = 0.2


def build_digits(spec, root, split: str, seed: int, split_seed: int = DEFAULT_SPLIT_SEED):
    """sklearn's 1797 8x8 digits (values 0..16, rescaled to 0..255).

    test = stratified 20 %; the other 80 % is "trainval", split 90/10 into train/val
    (both with the fixed split seed, so no run can leak test images into training).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    targets = d.target.astype(np.int64)
    test = stratified_pick(targets, int(round(DIGITS_TEST_FRACTION * len(targets))), split_seed)
    ds = ArrayDataset(spec.name, split, images, targets, spec.num_classes)
    if split == "test":
        return ds.restrict(test)
    ds.restrict(np.setdiff1d(np.arange(len(targets)), test))
    return ds.restrict(holdout_positions(ds.targets, split, split_seed + 1))
