"""Procedural image-classification tasks, generated on the fly with numpy (no files, no download).

Why: the pipeline must run end to end on a CPU-only machine without the paper's datasets. These
tasks mirror VTAB's groups and are built so that the label lives in *fine spatial detail*
(a few pixels: how many small blobs, where exactly a square sits, the angle of a thin bar, the
frequency of a texture, the outline of a shape). Merging or pruning patch tokens throws such
detail away, so token compression measurably costs accuracy here, as it does on real data.

Determinism: item `idx` of a split is rendered from a generator seeded with
(task name, seed, stream, idx). "train" and "val" are disjoint index ranges of one "trainval"
stream (so trainval == train ∪ val exactly) and "test" is a separate stream, so no two splits
share an image. Labels are `idx % num_classes` (balanced, known without rendering).

Images are rendered at `native_size` (default 32 px) as RGB; the "small" transform resizes them.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
from PIL import Image

from tocom.errors import TocomError

from .base import TocomDataset

# ----------------------------------------------------------------------------- drawing helpers


@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (n, n) float32."""
    c = np.arange(n, dtype=np.float32)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    for a in (yy, xx):
        a.setflags(write=False)
    return yy, xx


def _noisy(rng, n: int, colour, sigma: float) -> np.ndarray:
    return np.asarray(colour, np.float32)[None, None, :] + rng.normal(0.0, sigma, (n, n, 1)).astype(np.float32)


def _dark(rng, hi: float = 0.35) -> np.ndarray:
    return (rng.uniform(0.0, hi) * rng.uniform(0.6, 1.0, 3)).astype(np.float32)


def _bright(rng, lo: float = 0.7) -> np.ndarray:
    c = rng.uniform(0.3, 1.0, 3)
    c /= c.max()
    return (c * rng.uniform(lo, 1.0)).astype(np.float32)


def _paint(img: np.ndarray, mask: np.ndarray, colour) -> None:
    """Alpha-blend `colour` into `img` where `mask` (bool or [0,1] float) is set."""
    a = mask.astype(np.float32)[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, np.float32)


def _two_tone(rng, n: int, sigma: float, lo_range=(0.0, 0.35), hi_range=(0.65, 1.0)):
    """(noisy background image, foreground colour), two colours >= 0.3 apart in brightness, in random order."""
    lo = rng.uniform(*lo_range) * rng.uniform(0.6, 1.0, 3)
    hi = rng.uniform(*hi_range) * rng.uniform(0.7, 1.0, 3)
    pair = (lo.astype(np.float32), hi.astype(np.float32))
    bg, fg = pair if rng.random() < 0.5 else pair[::-1]
    return _noisy(rng, n, bg, sigma), fg


# ----------------------------------------------------------------------------- textures

TEXTURES = (
    "hstripes-wide", "hstripes-fine", "vstripes-wide", "vstripes-fine", "diag-45",
    "diag-135", "checker-fine", "checker-wide", "dots-grid", "dots-random",
)


def _texture_mask(rng, t: int, n: int) -> np.ndarray:
    """Binary pattern of texture class `t` with random phase and +-10 % frequency jitter."""
    yy, xx = _grid(n)
    f = n / 32.0
    j = rng.uniform(0.9, 1.1)
    if t in (0, 1, 2, 3, 4, 5):
        period = {0: 8, 1: 4, 2: 8, 3: 4, 4: 6, 5: 6}[t] * f * j
        coord = {0: yy, 1: yy, 2: xx, 3: xx, 4: (xx + yy) / np.sqrt(2), 5: (xx - yy) / np.sqrt(2)}[t]
        return np.mod(coord + rng.uniform(0, period), period) < period / 2
    if t in (6, 7):
        cell = (3 if t == 6 else 6) * f * j
        oy, ox = rng.uniform(0, 2 * cell, 2)
        return (np.floor((yy + oy) / cell) + np.floor((xx + ox) / cell)) % 2 == 0
    period, radius = 6 * f * j, 1.5 * f
    if t == 8:
        oy, ox = rng.uniform(0, period, 2)
        dy = np.mod(yy + oy, period) - period / 2
        dx = np.mod(xx + ox, period) - period / 2
        return dy * dy + dx * dx <= radius * radius
    # t == 9: as many dots as the grid has, at random positions
    k = int(round((n / period) ** 2))
    cy, cx = rng.uniform(0, n, (2, k, 1, 1))
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius).any(axis=0)


# ----------------------------------------------------------------------------- shapes

SHAPES = ("disk", "square", "triangle", "plus", "ring", "diamond", "x-cross", "hollow-square", "ellipse", "half-disk")


def _shape_mask(s: int, n: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = _grid(n)
    v, u = (yy - cy) / r, (xx - cx) / r
    au, av = np.abs(u), np.abs(v)
    rho2 = u * u + v * v
    return {  # SHAPES order
        0: lambda: rho2 <= 1.0,
        1: lambda: np.maximum(au, av) <= 0.85,
        2: lambda: (v >= -0.9) & (v <= 0.8) & (au <= (v + 0.9) * (0.95 / 1.7)),  # apex up (y grows downward)
        3: lambda: ((au <= 0.28) & (av <= 1.0)) | ((av <= 0.28) & (au <= 1.0)),
        4: lambda: (rho2 <= 1.0) & (rho2 >= 0.55**2),
        5: lambda: au + av <= 1.0,
        6: lambda: ((np.abs(u - v) <= 0.4) | (np.abs(u + v) <= 0.4)) & (np.maximum(au, av) <= 0.8),
        7: lambda: (np.maximum(au, av) <= 0.85) & (np.maximum(au, av) >= 0.5),
        8: lambda: u * u + (v / 0.5) ** 2 <= 1.0,
    }.get(s, lambda: (rho2 <= 1.0) & (v <= 0.0))()  # otherwise: half-disk, flat side down


def _random_shape(rng, s: int, n: int, r_range=(0.17, 0.3)) -> np.ndarray:
    r = rng.uniform(*r_range) * n
    cy, cx = rng.uniform(r + 1, n - 1 - r, 2)
    return _shape_mask(s, n, cy, cx, r)


def _clutter(rng, img: np.ndarray, k_range=(3, 9)) -> None:
    """Single pixels and short 1-px segments in random colours (distractors, not shapes)."""
    n = img.shape[0]
    for _ in range(rng.integers(*k_range)):
        y, x = rng.integers(0, n, 2)
        length = rng.integers(1, 4)
        colour = rng.uniform(0, 1, 3)
        if rng.random() < 0.5:
            img[y, x : x + length] = colour
        else:
            img[y : y + length, x] = colour


# ----------------------------------------------------------------------------- tasks


def render_count(rng, label: int, n: int) -> np.ndarray:
    """label+1 (1..8) small bright squares of mixed size (2-3 px) on a dark noisy background.

    Squares sit in distinct cells of an 8x8 grid with a >=1 px gap, so they never touch; mixed
    sizes make total brightness ambiguous, so the model must actually count.
    """
    img = _noisy(rng, n, _dark(rng), 0.05)
    cell = n // 8
    for c in rng.choice(64, size=label + 1, replace=False):
        size = int(rng.integers(max(2, cell // 2), max(3, cell)))
        gy, gx = divmod(int(c), 8)
        y = gy * cell + int(rng.integers(0, max(1, cell - size)))
        x = gx * cell + int(rng.integers(0, max(1, cell - size)))
        img[y : y + size, x : x + size] = _bright(rng)
    return img


def render_location(rng, label: int, n: int) -> np.ndarray:
    """A red square whose centre lies in cell `label` of a 4x4 grid (row-major), plus 0-3
    same-size green/blue distractor squares, on a grey noisy background."""
    img = _noisy(rng, n, rng.uniform(0.2, 0.5) * np.ones(3), 0.05)
    size = max(3, n // 10)
    cell = n / 4
    for _ in range(rng.integers(0, 4)):
        c = np.array([rng.uniform(0, 0.4), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)], np.float32)
        c[1 + rng.integers(0, 2)] = rng.uniform(0.8, 1.0)
        y, x = rng.integers(0, n - size + 1, 2)
        img[y : y + size, x : x + size] = c
    gy, gx = divmod(label, 4)
    cy = int(rng.integers(int(np.ceil(gy * cell)), int(np.ceil((gy + 1) * cell))))
    cx = int(rng.integers(int(np.ceil(gx * cell)), int(np.ceil((gx + 1) * cell))))
    # top-left so the centre pixel is (cy, cx); clipping at the border keeps it in the same cell
    y = min(max(cy - size // 2, 0), n - size)
    x = min(max(cx - size // 2, 0), n - size)
    img[y : y + size, x : x + size] = [rng.uniform(0.85, 1.0), rng.uniform(0, 0.15), rng.uniform(0, 0.15)]
    return img


def location_label(cy: float, cx: float, n: int) -> int:
    """The label `render_location` assigns to a target centred at pixel (cy, cx)."""
    return int(cy // (n / 4)) * 4 + int(cx // (n / 4))


def render_orientation(rng, label: int, n: int) -> np.ndarray:
    """A thin (~2 px, anti-aliased) bar at angle in [label, label+1) * 22.5 deg from the x axis
    (y pointing down), near the centre, plus a few 1-px clutter dots."""
    img, fg = _two_tone(rng, n, 0.05)
    theta = (label + rng.uniform(0, 1)) * np.pi / 8
    cy, cx = n / 2 - 0.5 + rng.uniform(-n / 8, n / 8, 2)
    half = rng.uniform(0.3, 0.42) * n
    yy, xx = _grid(n)
    dy, dx = yy - cy, xx - cx
    along = dx * np.cos(theta) + dy * np.sin(theta)
    across = np.abs(-dx * np.sin(theta) + dy * np.cos(theta))
    mask = np.clip(1.2 - across, 0.0, 1.0) * (np.abs(along) <= half)
    _paint(img, mask, fg)
    for _ in range(rng.integers(0, 5)):
        y, x = rng.integers(0, n, 2)
        img[y, x] = fg
    return img


def render_texture(rng, label: int, n: int) -> np.ndarray:
    """Texture class `label` of TEXTURES in two random contrasting colours."""
    img, fg = _two_tone(rng, n, 0.04)
    _paint(img, _texture_mask(rng, label, n), fg)
    return img


def render_shapes(rng, label: int, n: int) -> np.ndarray:
    """Shape class `label` of SHAPES, random colour/size/position, over noise and pixel clutter."""
    img, fg = _two_tone(rng, n, 0.06)
    _clutter(rng, img)
    _paint(img, _random_shape(rng, label, n), fg)
    return img


def render_pretrain(rng, label: int, n: int) -> np.ndarray:
    """label = shape * 10 + texture: a solid shape (very dark or very bright) over a mid-contrast
    texture background (100 classes, the CPU "ImageNet stand-in")."""
    shape, texture = divmod(label, 10)
    img, c1 = _two_tone(rng, n, 0.03, (0.3, 0.42), (0.58, 0.7))
    _paint(img, _texture_mask(rng, texture, n), c1)
    fg = rng.uniform(0.0, 0.12, 3) if rng.random() < 0.5 else rng.uniform(0.88, 1.0, 3)
    _paint(img, _random_shape(rng, shape, n, (0.2, 0.3)), fg)
    return img


# name -> (renderer, num_classes, group, default sizes (train, val, test))
VTAB_LIKE = (800, 200, 1000)
SYNTH_TASKS = {
    "synth/count": (render_count, 8, "structured", VTAB_LIKE),
    "synth/location": (render_location, 16, "structured", VTAB_LIKE),
    "synth/orientation": (render_orientation, 8, "structured", VTAB_LIKE),
    "synth/texture": (render_texture, 10, "natural", VTAB_LIKE),
    "synth/shapes": (render_shapes, 10, "natural", VTAB_LIKE),
    "synth/pretrain": (render_pretrain, 100, "synthetic", (20000, 2000, 5000)),
}

_STREAMS = {"trainval": 1, "test": 2}


class SyntheticDataset(TocomDataset):
    """One split of a procedural task; see the module docstring for the determinism contract."""

    def __init__(self, name: str, split: str, seed: int, n_train: int, n_val: int, n_test: int, native_size: int = 32):
        renderer, num_classes, _, _ = SYNTH_TASKS[name]
        if min(n_train, n_val, n_test) < 0:
            raise TocomError(f"{name}: n_train/n_val/n_test must be >= 0, got {n_train}/{n_val}/{n_test}")
        if native_size < 16:
            raise TocomError(f"{name}: native_size must be >= 16 px, got {native_size}")
        self.renderer, self.native_size, self.seed = renderer, int(native_size), int(seed)
        self.stream = "test" if split == "test" else "trainval"
        self.ids = {"train": range(0, n_train), "val": range(n_train, n_train + n_val),
                    "trainval": range(0, n_train + n_val), "test": range(0, n_test)}[split]
        super().__init__(name, split, [i % num_classes for i in self.ids], num_classes)

    @property
    def record_ids(self) -> list[int]:
        """Indices in the split's stream ("trainval" for train/val/trainval, "test" for test)."""
        return [self.ids[r] for r in self._records]

    def _rng(self, idx: int) -> np.random.Generator:
        key = [zlib.crc32(self.name.encode()), self.seed % 2**32, _STREAMS[self.stream], idx]
        return np.random.default_rng(key)

    def render(self, i: int) -> np.ndarray:
        """Item i (after any restriction) as a uint8 (native, native, 3) array, before the transform."""
        return self._render_id(self.ids[self._records[i]])

    def _render_id(self, idx: int) -> np.ndarray:
        img = self.renderer(self._rng(idx), idx % self.num_classes, self.native_size)
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def load(self, record: int) -> Image.Image:
        return Image.fromarray(self._render_id(self.ids[record]))


def make_builder(task: str):
    """Registry builder for `task`, accepting n_train/n_val/n_test/native_size overrides."""
    _, _, _, (d_train, d_val, d_test) = SYNTH_TASKS[task]

    def build(spec, root, split: str, seed: int, n_train: int = d_train, n_val: int = d_val,
              n_test: int = d_test, native_size: int = 32):
        return SyntheticDataset(spec.name, split, seed, int(n_train), int(n_val), int(n_test), int(native_size))

    build.__doc__ = f"Build a split of {task} (procedural; root is ignored)."
    return build
