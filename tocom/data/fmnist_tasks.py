"""Six VTAB-1k-style downstream tasks built from Fashion-MNIST's test split (`tocom make-tasks`).

Why: the CPU reproduction pre-trains its tiny backbone on Fashion-MNIST's *train* file, and the paper
evaluates token compression on downstream tasks of the three VTAB groups. These tasks are related
to the pre-training domain (the same kind of garment images) but have new label sets, and they are
built only from the t10k file, whose images the backbone never saw:

- natural (class-level, new label sets): `category` (4 garment families), `season` (warm/cold/any);
- specialized (fine detail that merged tokens can blur): `tops` (T-shirt/Pullover/Coat/Shirt on
  faint noise), `small` (the 10 classes, the item shrunk to a few 8x8 patches);
- structured (geometry): `count` (1..5 separate items), `orientation` (0/90/180/270 degrees).

Each task is written in the VTAB-1k folder layout that `tocom.data.folders.build_vtab` reads:
`<out>/<task>/images/<split>/<index:05d>.png` (56x56 8-bit grayscale, items bright on black) and the
split lists train800.txt, val200.txt, train800val200.txt (= train800 then val200) and test.txt, one
`relative/path label` per line. `sources.txt` beside them records the t10k index(es) each image was
drawn from (`relative/path idx[,idx...]`), so tests can check labels and leakage. `tocom-task.json`
(`TASK_MARKER`) says the folder was written by this step and with which settings: a rerun replaces a
folder carrying it, and refuses to touch anything else of that name (a user's folder or file).

No leakage: items of train800/val200 come from t10k indices [0, 5000), items of test from
[5000, 10000) (`SOURCE_RANGES`); within each range an item is reused only once all items of its
pool were used (never at the default sizes), so train and val share no source image either.
Deterministic: `seed` fixes every byte; task `t` draws from `SeedSequence([seed, TASKS[t].index])`
(one child stream for train/val, one for test, so test images do not depend on n_train/n_val).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from tocom.errors import TocomError
from tocom.settings import TaskSettings

from ..io import atomic_folder
from ..layout import GENERATED_FAMILY as FAMILY
from ..layout import VTAB_SPLIT_FILES
from .base import data_error
from .small import FASHION_HOW, FASHION_ROOT, idx_path, read_idx

CANVAS = 56  # px, square; items are pasted with np.maximum (Fashion-MNIST items are bright on black)

#: t10k index ranges items are drawn from: train800 + val200 from the first half, test from the second.
SOURCE_RANGES = {"trainval": (0, 5000), "test": (5000, 10000)}
#: split -> its list file (its images go to images/<split>/); train800val200.txt is train800 then val200.
SOURCES_FILE = "sources.txt"
#: Written into every task folder last: what made it. Only a folder carrying it is ever replaced.
TASK_MARKER = "tocom-task.json"
WRITER = "tocom make-tasks"

#: new label -> the Fashion-MNIST classes it groups
CATEGORY_GROUPS = ((0, 2, 4, 6), (1, 3), (5, 7, 9), (8,))      # upper body, legs/full body, footwear, bag
SEASON_GROUPS = ((0, 3, 5), (2, 4, 9), (1, 6, 7, 8))           # warm, cold, any
TOPS_CLASSES = (0, 2, 4, 6)                                    # T-shirt, Pullover, Coat, Shirt -> 0..3

WHOLE_SIZE = (32, 48)     # px, inclusive: category / season
TOPS_SIZE = (28, 36)
TOPS_NOISE = 32           # background noise of `tops`: uniform integers 0..TOPS_NOISE
SMALL_SIZE = (14, 20)
COUNT_SIZE = (14, 18)
COUNT_MAX = 5
COUNT_GAP = 1             # px of black at least between the bounding boxes of two `count` items
COUNT_BLACK = 16          # `count` items: pixels <= this become 0, so every item is one 8-connected blob
ORIENT_SIZE = (36, 44)
ORIENT_JITTER = 4         # px, either way from the centre


# --------------------------------------------------------------------------- drawing helpers


class _Pool:
    """Source indices handed out in a random order, each once before any is reused."""

    def __init__(self, indices: np.ndarray, rng: np.random.Generator):
        self.indices, self.rng, self.left = indices, rng, []

    def draw(self) -> int:
        if not self.left:
            self.left = [int(i) for i in self.rng.permutation(self.indices)][::-1]
        return self.left.pop()


class _Sources:
    """The t10k items of one source range, with class pools drawn without replacement."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, lo: int, hi: int, rng: np.random.Generator):
        self.images, self.labels, self.lo, self.hi, self.rng = images, labels, lo, hi, rng
        self._pools: dict[tuple, _Pool] = {}

    def draw(self, classes: tuple[int, ...] | None = None) -> int:
        """A t10k index in [lo, hi) whose label is in `classes` (None: any class)."""
        key = tuple(classes) if classes is not None else ()
        if key not in self._pools:
            idx = np.arange(self.lo, self.hi)
            if classes is not None:
                idx = idx[np.isin(self.labels[self.lo:self.hi], classes)]
            self._pools[key] = _Pool(idx, self.rng)
        return self._pools[key].draw()


def _size(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _resize(item: np.ndarray, size: int, resample=None) -> np.ndarray:
    """A 28x28 item scaled to size x size (LANCZOS when shrinking, BILINEAR when enlarging)."""
    if resample is None:
        resample = Image.Resampling.LANCZOS if size < item.shape[0] else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(item).resize((size, size), resample))


def _paste(canvas: np.ndarray, item: np.ndarray, y: int, x: int) -> None:
    h, w = item.shape
    np.maximum(canvas[y:y + h, x:x + w], item, out=canvas[y:y + h, x:x + w])


def _anywhere(rng: np.random.Generator, canvas: np.ndarray, item: np.ndarray) -> np.ndarray:
    y, x = (int(v) for v in rng.integers(0, CANVAS - item.shape[0] + 1, size=2))
    _paste(canvas, item, y, x)
    return canvas


def _blank() -> np.ndarray:
    return np.zeros((CANVAS, CANVAS), np.uint8)


def _one_blob(mask: np.ndarray) -> bool:
    """True when the True pixels of `mask` form exactly one 8-connected component."""
    return ndimage.label(mask, structure=np.ones((3, 3), int))[1] == 1


# --------------------------------------------------------------------------- the tasks
# Each generator: (sources, rng, label) -> (56x56 uint8 image, [t10k indices of its items]).


def _grouped(groups, size, noise: int = 0):
    """One item whose class is in `groups[label]`, `size` px, anywhere on a black (or `noise`) canvas."""
    def make(src: _Sources, rng: np.random.Generator, label: int):
        idx = src.draw(groups[label])
        canvas = rng.integers(0, noise + 1, size=(CANVAS, CANVAS), dtype=np.uint8) if noise else _blank()
        return _anywhere(rng, canvas, _resize(src.images[idx], _size(rng, size))), [idx]
    return make


def _place_apart(rng: np.random.Generator, sizes: list[int]) -> list[tuple[int, int]]:
    """Top-left corners for squares of `sizes` with >= COUNT_GAP px between any two (rejection sampling)."""
    for _ in range(1000):
        boxes: list[tuple[int, int, int]] = []
        for s in sizes:
            for _ in range(100):
                y, x = (int(v) for v in rng.integers(0, CANVAS - s + 1, size=2))
                if all(y + s + COUNT_GAP <= by or by + bs + COUNT_GAP <= y or x + s + COUNT_GAP <= bx
                       or bx + bs + COUNT_GAP <= x for by, bx, bs in boxes):
                    boxes.append((y, x, s))
                    break
            else:
                break
        else:
            return [(y, x) for y, x, _ in boxes]
    raise RuntimeError(f"could not place {len(sizes)} items of sizes {sizes} apart on {CANVAS} px")


def _make_count(src, rng, label):
    n = label + 1
    items, used = [], []
    while len(items) < n:
        idx = src.draw()
        item = _resize(src.images[idx], _size(rng, COUNT_SIZE), Image.Resampling.BILINEAR)  # no ringing specks
        item = np.where(item > COUNT_BLACK, item, 0).astype(np.uint8)
        if _one_blob(item > 0):           # a few items (thin straps) fall apart: take another
            items.append(item)
            used.append(idx)
    order = sorted(range(n), key=lambda i: -items[i].shape[0])  # biggest first: packs more easily
    canvas = _blank()
    for i, (y, x) in zip(order, _place_apart(rng, [items[i].shape[0] for i in order])):
        _paste(canvas, items[i], y, x)
    return canvas, used


def _make_orientation(src, rng, label):
    idx = src.draw()
    item = np.rot90(_resize(src.images[idx], _size(rng, ORIENT_SIZE)), k=label)  # k counter-clockwise quarter turns
    s = item.shape[0]
    y, x = (int(np.clip((CANVAS - s) // 2 + j, 0, CANVAS - s))
            for j in rng.integers(-ORIENT_JITTER, ORIENT_JITTER + 1, size=2))
    canvas = _blank()
    _paste(canvas, np.ascontiguousarray(item), y, x)
    return canvas, [idx]


@dataclass(frozen=True)
class TaskSpec:
    index: int            # stable id mixed into the seed (never reuse one)
    group: str            # VTAB group: natural, specialized or structured
    num_classes: int
    description: str
    make: Callable        # (sources, rng, label) -> (image, [t10k indices])


TASKS: dict[str, TaskSpec] = {
    "category": TaskSpec(0, "natural", 4, "garment family: upper body, legs/full body, footwear, bag "
                         "(one item, 32-48 px, anywhere)", _grouped(CATEGORY_GROUPS, WHOLE_SIZE)),
    "season": TaskSpec(1, "natural", 3, "season: warm (T-shirt, dress, sandal), cold (pullover, coat, ankle boot), "
                       "any (trouser, shirt, sneaker, bag) (one item, 32-48 px, anywhere)",
                       _grouped(SEASON_GROUPS, WHOLE_SIZE)),
    "tops": TaskSpec(2, "specialized", 4, "which top: T-shirt, pullover, coat or shirt (one item, 28-36 px, anywhere, "
                     "on faint uniform noise)", _grouped([(c,) for c in TOPS_CLASSES], TOPS_SIZE, TOPS_NOISE)),
    "small": TaskSpec(3, "specialized", 10, "the 10 Fashion-MNIST classes, the item shrunk to 14-20 px "
                      "(a few 8x8 patches), anywhere", _grouped([(c,) for c in range(10)], SMALL_SIZE)),
    "count": TaskSpec(4, "structured", COUNT_MAX, "how many items, 1..5 (label = count - 1; items 14-18 px, "
                      "1 px apart at least)", _make_count),
    "orientation": TaskSpec(5, "structured", 4, "rotation of one item (36-44 px, near the centre) by 0, 90, 180 "
                            "or 270 degrees counter-clockwise (label 0..3)", _make_orientation),
}


# --------------------------------------------------------------------------- writing


def read_t10k(fashion_root: str = FASHION_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (10000, 28, 28), labels int64 (10000,)) of Fashion-MNIST's test file."""
    img_path = idx_path(fashion_root, "t10k-images-idx3-ubyte")
    lbl_path = idx_path(fashion_root, "t10k-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    need = SOURCE_RANGES["test"][1]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8 or len(images) < need:
        raise data_error(img_path, f"uint8 images of shape ({need}, 28, 28), found {images.dtype} {images.shape}",
                         FASHION_HOW)
    if labels.shape != (len(images),):
        raise data_error(lbl_path, f"{len(images)} labels (one per image), found shape {labels.shape}", FASHION_HOW)
    return images, labels.astype(np.int64)


def balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n labels in 0..k-1, each class n // k or n // k + 1 times, in random order."""
    return rng.permutation(np.arange(n) % k)


def task_names(tasks) -> list[str]:
    """Task names (`small` or `fmnist_vtab/small`; None: all), each once, or one TocomError line."""
    if tasks is None:
        return list(TASKS)
    if isinstance(tasks, str):
        tasks = [tasks]
    names = [t.split("/", 1)[1] if t.startswith(FAMILY + "/") else t for t in tasks]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise TocomError(f"unknown task(s) {', '.join(unknown)}; expected some of: {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def replaceable(path: str | Path) -> bool:
    """True when `path` may be replaced: a task folder this step wrote (a real folder carrying TASK_MARKER from
    WRITER), or an empty real folder (nothing to lose: Snakemake makes its outputs' folders before the job)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / TASK_MARKER).read_text(encoding="utf-8")).get("written_by") == WRITER
    except (OSError, ValueError, AttributeError):
        return False


def _write_task(tmp: str, spec: TaskSpec, images, labels, seed: int, sizes: dict[str, int]) -> None:
    rng_trainval, rng_test = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, spec.index]).spawn(2))
    src_trainval = _Sources(images, labels, *SOURCE_RANGES["trainval"], rng_trainval)
    src_test = _Sources(images, labels, *SOURCE_RANGES["test"], rng_test)
    lines, sources = {}, []
    for split, rng, src in (("train", rng_trainval, src_trainval), ("val", rng_trainval, src_trainval),
                            ("test", rng_test, src_test)):
        os.makedirs(os.path.join(tmp, "images", split))
        lines[split] = []
        for i, label in enumerate(balanced_labels(rng, sizes[split], spec.num_classes)):
            img, idx = spec.make(src, rng, int(label))
            rel = f"images/{split}/{i:05d}.png"
            Image.fromarray(img).save(os.path.join(tmp, rel), format="PNG")
            lines[split].append(f"{rel} {int(label)}\n")
            sources.append(f"{rel} {','.join(str(j) for j in idx)}\n")
    lines["trainval"] = lines["train"] + lines["val"]
    for name, content in [(VTAB_SPLIT_FILES[s], lines[s]) for s in lines] + [(SOURCES_FILE, sources)]:
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
            f.writelines(content)


def write_tasks(out_dir: str, settings: TaskSettings | None = None, fashion_root: str = FASHION_ROOT, tasks=None,
                log: Callable | None = None) -> list[str]:
    """Write the tasks (default: all of TASKS) under out_dir/<task>/ with the sizes and seed of `settings`
    (default: TaskSettings()); returns the task folders.

    Each task is built in a fresh temporary folder beside out_dir/<task> and renamed into place when
    complete, so a crash never leaves half a task behind (the next run removes what a killed one left).
    An existing out_dir/<task> is replaced only if this step wrote it or it is empty (`replaceable`); anything else of
    that name stops the run, before any task is written. `log(msg)` hears one line per task written.
    """
    s = settings or TaskSettings()
    names = task_names(tasks)
    sizes = {"train": s.n_train, "val": s.n_val, "test": s.n_test}
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise TocomError(f"{out_dir} is a file, not a folder; name a folder to write the tasks into")
    for name in names:
        final = os.path.join(out_dir, name)
        if os.path.lexists(final) and not replaceable(final):
            raise TocomError(f"{final} exists and was not written by {WRITER} (no {TASK_MARKER} in it); move it "
                             "away or write the tasks elsewhere")
    images, labels = read_t10k(fashion_root)
    written = []
    for name in names:
        start = time.perf_counter()
        final = os.path.join(out_dir, name)
        with atomic_folder(final, may_replace=replaceable) as tmp:
            _write_task(str(tmp), TASKS[name], images, labels, s.seed, sizes)
            marker = {"written_by": WRITER, "task": f"{FAMILY}/{name}", "settings": s.asdict(),
                      "fashion_root": str(fashion_root)}
            (tmp / TASK_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(final)
        if log is not None:
            log(f"{FAMILY}/{name}: {sum(sizes.values())} images in {final} ({time.perf_counter() - start:.1f} s)")
    return written


def read_sources(task_dir: str) -> dict[str, list[int]]:
    """relative/path -> t10k indices of the items in that image (from the task's sources.txt)."""
    out = {}
    with open(os.path.join(task_dir, SOURCES_FILE), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rel, idx = line.split()
                out[rel] = [int(i) for i in idx.split(",")]
    return out
