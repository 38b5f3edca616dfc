"""Tests of tocom.data.fmnist_tasks (`tocom make-tasks`): the six VTAB-1k-style tasks built from
Fashion-MNIST's t10k file. Labels are checked against the source items recorded in sources.txt
(read back from the real t10k labels), not against the generator's own code."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tocom.data import build_dataset, get_spec
from tocom.data import fmnist_tasks as ft
from tocom.data.folders import build_vtab
from tocom.errors import TocomError
from tocom.settings import TaskSettings

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
SIZES = dict(n_train=40, n_val=10, n_test=20)
SPLIT_LISTS = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")

needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_ROOT, "t10k-images-idx3-ubyte.gz"))
    and not os.path.isfile(os.path.join(FASHION_ROOT, "t10k-images-idx3-ubyte")),
    reason=f"Fashion-MNIST t10k files not in {FASHION_ROOT} (apt-get install dataset-fashion-mnist)",
)
pytestmark = needs_fashion


@pytest.fixture(scope="module")
def t10k():
    return ft.read_t10k(FASHION_ROOT)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fmnist_vtab")
    written = ft.write_tasks(str(out), TaskSettings(seed=0, **SIZES), FASHION_ROOT)
    assert written == [str(out / t) for t in ft.TASKS]
    return out


def read_list(task_dir, name) -> list[tuple[str, int]]:
    with open(os.path.join(task_dir, name), encoding="utf-8") as f:
        return [(rel, int(lab)) for rel, lab in (line.split() for line in f if line.strip())]


def pixels(task_dir, rel) -> np.ndarray:
    with Image.open(os.path.join(task_dir, rel)) as img:
        assert img.mode == "L" and img.size == (ft.CANVAS, ft.CANVAS)
        return np.asarray(img)


def tree_digest(root) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


# ----------------------------------------------------------------------------- layout and determinism


def test_layout_sizes_and_balance(tasks_dir):
    for name, spec in ft.TASKS.items():
        d = tasks_dir / name
        assert sorted(os.listdir(d)) == sorted([*SPLIT_LISTS, "images", ft.SOURCES_FILE, ft.TASK_MARKER])
        train, val, test = (read_list(d, f) for f in ("train800.txt", "val200.txt", "test.txt"))
        assert (len(train), len(val), len(test)) == (40, 10, 20)
        assert read_list(d, "train800val200.txt") == train + val
        assert [r for r, _ in train] == [f"images/train/{i:05d}.png" for i in range(40)]
        assert [r for r, _ in test] == [f"images/test/{i:05d}.png" for i in range(20)]
        sources = ft.read_sources(str(d))
        assert set(sources) == {r for r, _ in train + val + test}
        for rows in (train, val, test):
            counts = np.bincount([lab for _, lab in rows], minlength=spec.num_classes)
            assert len(counts) == spec.num_classes and counts.max() - counts.min() <= 1, (name, counts)
        assert not [f for f in os.listdir(tasks_dir) if ".tmp-" in f or f.endswith(".tmp")]


def test_same_seed_is_byte_identical_and_another_seed_differs(tasks_dir, tmp_path):
    ft.write_tasks(str(tmp_path / "again"), TaskSettings(seed=0, **SIZES), FASHION_ROOT)
    ft.write_tasks(str(tmp_path / "other"), TaskSettings(seed=1, **SIZES), FASHION_ROOT)
    ref = tree_digest(tasks_dir)
    assert tree_digest(tmp_path / "again") == ref
    other = tree_digest(tmp_path / "other")
    assert set(other) == set(ref)
    for name in ft.TASKS:
        changed = [p for p in ref if p.startswith(name + os.sep + "images") and other[p] != ref[p]]
        assert len(changed) > 35, name  # nearly every image differs
    # a task alone is the same as the task written with the others (its stream depends on seed and task only)
    ft.write_tasks(str(tmp_path / "alone"), TaskSettings(seed=0, **SIZES), FASHION_ROOT, tasks=["fmnist_vtab/count"])
    assert tree_digest(tmp_path / "alone" / "count") == tree_digest(tasks_dir / "count")


def test_test_images_do_not_depend_on_train_sizes(tasks_dir, tmp_path):
    ft.write_tasks(str(tmp_path), TaskSettings(seed=0, n_train=7, n_val=3, n_test=20), FASHION_ROOT, tasks=["small"])
    assert read_list(tmp_path / "small", "test.txt") == read_list(tasks_dir / "small", "test.txt")
    for rel, _ in read_list(tmp_path / "small", "test.txt"):
        assert np.array_equal(pixels(tmp_path / "small", rel), pixels(tasks_dir / "small", rel))


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize("name, mapping", [
    ("category", {0: 0, 2: 0, 4: 0, 6: 0, 1: 1, 3: 1, 5: 2, 7: 2, 9: 2, 8: 3}),
    ("season", {0: 0, 3: 0, 5: 0, 2: 1, 4: 1, 9: 1, 1: 2, 6: 2, 7: 2, 8: 2}),
    ("tops", {0: 0, 2: 1, 4: 2, 6: 3}),
    ("small", {c: c for c in range(10)}),
])
def test_class_labels_follow_the_source_item(tasks_dir, t10k, name, mapping):
    images, labels = t10k
    d = tasks_dir / name
    sources = ft.read_sources(str(d))
    rows = read_list(d, "train800val200.txt") + read_list(d, "test.txt")
    for rel, lab in rows:
        (idx,) = sources[rel]
        assert int(labels[idx]) in mapping, (rel, labels[idx])
        assert lab == mapping[int(labels[idx])], (rel, lab, labels[idx])
        img = pixels(d, rel)
        # the item is on the canvas: its brightest pixel survives scaling (roughly)
        assert img.max() >= 0.5 * images[idx].max()
    assert len({lab for _, lab in rows}) == get_spec(f"fmnist_vtab/{name}").num_classes


def test_item_sizes(tasks_dir):
    """small: the item's extent fits 20 px; category: at least 32 px wide or tall (a garment fills its frame)."""
    for rel, _ in read_list(tasks_dir / "small", "train800val200.txt"):
        ys, xs = np.nonzero(pixels(tasks_dir / "small", rel))
        assert np.ptp(ys) < ft.SMALL_SIZE[1] and np.ptp(xs) < ft.SMALL_SIZE[1]
    for rel, _ in read_list(tasks_dir / "category", "train800val200.txt"):
        ys, xs = np.nonzero(pixels(tasks_dir / "category", rel))
        assert max(np.ptp(ys), np.ptp(xs)) + 1 >= ft.WHOLE_SIZE[0] - 4
    tops = [pixels(tasks_dir / "tops", rel) for rel, _ in read_list(tasks_dir / "tops", "test.txt")]
    corners = np.concatenate([t[:3, :3].ravel() for t in tops])
    assert 0 < corners.mean() <= ft.TOPS_NOISE  # faint noise, not black


def test_count_label_is_the_number_of_separate_items(tasks_dir):
    d = tasks_dir / "count"
    sources = ft.read_sources(str(d))
    for rel, lab in read_list(d, "train800val200.txt") + read_list(d, "test.txt"):
        _, n = ndimage.label(pixels(d, rel) > 0, structure=np.ones((3, 3)))
        assert n == lab + 1 == len(sources[rel]), (rel, n, lab)


def _crop(a: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(a > 0)
    return a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_orientation_label_is_the_quarter_turn_of_the_source_item(tasks_dir, t10k):
    """Among the four rotations of the source item, the label's (k counter-clockwise quarter turns)
    matches the image best, and well."""
    images, _ = t10k
    d = tasks_dir / "orientation"
    sources = ft.read_sources(str(d))
    for rel, lab in read_list(d, "train800val200.txt") + read_list(d, "test.txt"):
        seen = _crop(pixels(d, rel)).astype(np.float64)
        scores = []
        for k in range(4):
            ref = np.ascontiguousarray(_crop(np.rot90(images[sources[rel][0]], k)))
            ref = np.asarray(Image.fromarray(ref).resize(seen.shape[::-1], Image.Resampling.BILINEAR), np.float64)
            scores.append(_corr(seen, ref))
        assert int(np.argmax(scores)) == lab and scores[lab] > 0.6, (rel, lab, np.round(scores, 3))


# ----------------------------------------------------------------------------- no leakage


def test_no_leakage_between_train_and_test(tasks_dir):
    lo, hi = ft.SOURCE_RANGES["trainval"]
    tlo, thi = ft.SOURCE_RANGES["test"]
    assert (lo, hi, tlo, thi) == (0, 5000, 5000, 10000)
    for name in ft.TASKS:
        d = tasks_dir / name
        sources = ft.read_sources(str(d))
        trainval = [r for r, _ in read_list(d, "train800val200.txt")]
        test = [r for r, _ in read_list(d, "test.txt")]
        train_src = {i for r in trainval for i in sources[r]}
        test_src = {i for r in test for i in sources[r]}
        assert all(0 <= i < 5000 for i in train_src) and all(5000 <= i < 10000 for i in test_src), name
        # train and val share no source item either (pools are drawn without replacement)
        val_src = {i for r, _ in read_list(d, "val200.txt") for i in sources[r]}
        assert not val_src & {i for r, _ in read_list(d, "train800.txt") for i in sources[r]}, name
        train_px = {pixels(d, r).tobytes() for r in trainval}
        assert not train_px & {pixels(d, r).tobytes() for r in test}, name


def test_no_task_item_is_a_pretraining_image(tasks_dir, t10k):
    """The backbone and the plugins train on Fashion-MNIST's train file; every item pasted into a task (test
    split included) is a t10k image that appears nowhere in that file, byte for byte."""
    from tocom.data.small import idx_path, read_idx

    pretraining = {x.tobytes() for x in read_idx(idx_path(FASHION_ROOT, "train-images-idx3-ubyte"))}
    images, _ = t10k
    for name in ft.TASKS:
        used = {i for idx in ft.read_sources(str(tasks_dir / name)).values() for i in idx}
        assert used and not {images[i].tobytes() for i in used} & pretraining, name


# ----------------------------------------------------------------------------- registry and loader


def test_registered_and_loaded_by_the_vtab_reader(tasks_dir):
    groups = {}
    for name, spec in ft.TASKS.items():
        s = get_spec(f"fmnist_vtab/{name}")
        assert (s.group, s.num_classes, s.default_transform) == (spec.group, spec.num_classes, "small")
        assert s.builder is build_vtab and s.default_root == "data/fmnist_vtab"
        assert "make-tasks" in s.how_to_get and "train800.txt" in s.layout
        groups.setdefault(s.group, []).append(name)
    assert {g: len(v) for g, v in groups.items()} == {"natural": 2, "specialized": 2, "structured": 2}

    for name in ft.TASKS:
        data = {split: build_dataset(f"fmnist_vtab/{name}", root=str(tasks_dir), split=split, img_size=56)
                for split in ("train", "val", "trainval", "test")}
        assert [len(data[s]) for s in ("train", "val", "trainval", "test")] == [40, 10, 50, 20]
        assert data["trainval"].paths == data["train"].paths + data["val"].paths
        assert data["trainval"].targets == data["train"].targets + data["val"].targets
        assert data["test"].targets == [lab for _, lab in read_list(tasks_dir / name, "test.txt")]
        for ds in data.values():
            for i in (0, len(ds) - 1):
                x, y = ds[i]
                assert tuple(x.shape) == (3, 56, 56) and 0 <= y < ds.num_classes
                assert x.min() >= -1 and x.max() <= 1 and bool((x[0] == x[1]).all())  # grayscale -> 3 equal channels
    # root may also be the task folder itself
    assert len(build_dataset("fmnist_vtab/count", root=str(tasks_dir / "count"), split="test", img_size=56)) == 20


def test_missing_task_folder_says_how_to_generate_it(tmp_path):
    with pytest.raises(TocomError) as e:
        build_dataset("fmnist_vtab/count", root=str(tmp_path), split="train", img_size=56)
    msg = str(e.value)
    assert "\n" not in msg and os.path.join(str(tmp_path), "count", "train800.txt") in msg and "make-tasks" in msg


# ----------------------------------------------------------------------------- errors, atomic writes, CLI


def test_missing_t10k_file_is_a_one_line_error(tmp_path):
    with pytest.raises(TocomError) as e:
        ft.write_tasks(str(tmp_path / "out"), TaskSettings(**SIZES), str(tmp_path))
    assert "\n" not in str(e.value) and "t10k-images-idx3-ubyte" in str(e.value)
    src = ft.idx_path(FASHION_ROOT, "t10k-images-idx3-ubyte")
    shutil.copy(src, tmp_path / os.path.basename(src))          # images present, labels missing
    with pytest.raises(TocomError) as e:
        ft.write_tasks(str(tmp_path / "out"), TaskSettings(**SIZES), str(tmp_path))
    assert "\n" not in str(e.value) and "t10k-labels-idx1-ubyte" in str(e.value)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_bad_arguments(tmp_path):
    with pytest.raises(TocomError, match="unknown task"):
        ft.write_tasks(str(tmp_path), fashion_root=FASHION_ROOT, tasks=["colour"])
    with pytest.raises(TocomError, match="n_test"):
        ft.write_tasks(str(tmp_path), TaskSettings(n_test=0), FASHION_ROOT)


def test_rewrite_replaces_the_task_and_a_crash_leaves_nothing(tmp_path, monkeypatch):
    # a folder this step wrote (a folder it did not write is never replaced: test_hardening.py)
    ft.write_tasks(str(tmp_path), TaskSettings(n_train=2, n_val=2, n_test=2), FASHION_ROOT, tasks=["small"])
    (tmp_path / "small" / "stale.txt").write_text("old")
    ft.write_tasks(str(tmp_path), TaskSettings(n_train=4, n_val=2, n_test=3), FASHION_ROOT, tasks=["small"])
    assert not (tmp_path / "small" / "stale.txt").exists() and (tmp_path / "small" / "test.txt").is_file()
    before = tree_digest(tmp_path)

    calls = []

    def boom(src, rng, label):
        calls.append(label)
        if len(calls) > 3:
            raise RuntimeError("crash mid-task")
        return ft.TASKS["small"].make(src, rng, label)

    monkeypatch.setitem(ft.TASKS, "count", dataclasses.replace(ft.TASKS["count"], make=boom))
    with pytest.raises(RuntimeError):
        ft.write_tasks(str(tmp_path), TaskSettings(n_train=4, n_val=2, n_test=3), FASHION_ROOT, tasks=["small", "count"])
    assert sorted(os.listdir(tmp_path)) == ["small"] and tree_digest(tmp_path) == before


def test_sizes_and_seed_have_one_home():
    """write_tasks takes TaskSettings rather than restating its defaults; the Fashion-MNIST root is the
    registry's."""
    params = inspect.signature(ft.write_tasks).parameters
    assert not {"seed", "n_train", "n_val", "n_test"} & set(params)
    assert params["fashion_root"].default == FASHION_ROOT == get_spec("fashion_mnist").default_root


def test_cli_make_tasks(tmp_path, capsys):
    from tocom.cli import main

    out = tmp_path / "tasks"
    argv = ["make-tasks", "--out", str(out), "--tasks", "fmnist_vtab/orientation", "small", "--seed", "0",
            "--n-train", "40", "--n-val", "10", "--n-test", "20"]
    assert main(argv) == 0
    assert sorted(os.listdir(out)) == ["orientation", "small"]
    assert "fmnist_vtab/small" in capsys.readouterr().out
    ref = tmp_path / "ref"
    ft.write_tasks(str(ref), TaskSettings(**SIZES), FASHION_ROOT, tasks=["small"])
    assert tree_digest(out / "small") == tree_digest(ref / "small")
    (out / "season").mkdir()          # an empty folder (Snakemake makes its outputs' folders first) is replaced
    assert main(["make-tasks", "--out", str(out), "--tasks", "season", "--n-train", "4", "--n-val", "2",
                 "--n-test", "2"]) == 0
    assert (out / "season" / ft.TASK_MARKER).is_file()
    capsys.readouterr()
    assert main(["make-tasks", "--out", str(out), "--tasks", "colour"]) == 2
    assert main(["make-tasks", "--out", str(out), "--fashion-root", str(tmp_path / "none"), "--tasks", "small"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown task" in err[0] and "t10k-images-idx3-ubyte" in err[1]
