"""Datasets read from their official on-disk releases: ImageNet, CIFAR-100, the FGVC sets, VTAB-1k.

Each reader parses only the release's own metadata (txt/.mat/pickle) into a list of
(path, label) pairs or an in-memory array, checks that everything it will need exists,
and returns a `TocomDataset`; nothing is decoded until an item is requested.

Split rule for sets without an official val split (ImageNet, CIFAR-100, CUB, Cars, Dogs):
"trainval" = the official train split, "val" = a stratified 10 % of it (fixed split seed),
"train" = the other 90 %, "test" = the official test split (ImageNet: the official val).
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import scipy.io
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from .base import (DEFAULT_SPLIT_SEED, ArrayDataset, FileListDataset, data_error, holdout_positions, require_dir,
                   require_file)
from ..errors import TocomError
from ..layout import VTAB_SPLIT_FILES

# --------------------------------------------------------------------------- helpers


def _holdout(ds, split: str, split_seed: int):
    return ds if split == "test" else ds.restrict(holdout_positions(ds.targets, split, split_seed))


def _read_lines(path: str, expected: str, how: str) -> list[list[str]]:
    require_file(path, expected, how)
    try:
        with open(path, encoding="utf-8") as f:
            return [line.split() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise data_error(path, f"{expected} (UTF-8 text, but byte {e.start} is not)", how) from None


def _loadmat(path: str, keys: tuple[str, ...], expected: str, how: str) -> dict:
    require_file(path, expected, how)
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True)
    except Exception as e:  # scipy raises several types for a bad file
        raise data_error(path, expected, f"could not read it as a MATLAB file ({type(e).__name__}); {how}") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        raise data_error(path, f"{expected} with key(s) {', '.join(keys)} (missing {', '.join(missing)})", how)
    return mat


def _mat_str(x) -> str:
    """A MATLAB string as loaded by scipy (str, or arbitrarily nested 1-element arrays of it)."""
    while isinstance(x, np.ndarray):
        x = x.reshape(-1)[0] if x.size else ""
    return str(x)


def _mat_vector(x) -> np.ndarray:
    return np.atleast_1d(np.asarray(x)).reshape(-1)


# --------------------------------------------------------------------------- ImageNet

IMAGENET_HOW = ("download ILSVRC2012 from image-net.org and arrange it as root/train/<wnid>/*.JPEG and "
                "root/val/<wnid>/*.JPEG (sort the flat val folder into wnid folders with the usual valprep.sh)")


def build_imagenet(spec, root: str, split: str, seed: int, split_seed: int = DEFAULT_SPLIT_SEED):
    """ImageFolder layout; class index = position of the wnid in sorted order (timm/torchvision convention)."""
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    src = val_dir if split == "test" else train_dir
    require_dir(src, "a folder with one sub-folder of images per wnid", IMAGENET_HOW)
    class_dir = train_dir if os.path.isdir(train_dir) else val_dir
    try:
        classes, class_to_idx = find_classes(class_dir)
        samples = make_dataset(src, class_to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise data_error(src, f"one sub-folder of images per wnid ({msg})", IMAGENET_HOW) from None
    if len(classes) > spec.num_classes:
        raise data_error(class_dir, f"at most {spec.num_classes} wnid folders, found {len(classes)}", IMAGENET_HOW)
    ds = FileListDataset(spec.name, split, [p for p, _ in samples], [t for _, t in samples], spec.num_classes,
                         IMAGENET_HOW, check_files=False)
    ds.classes = classes
    return _holdout(ds, split, split_seed)


# --------------------------------------------------------------------------- CIFAR-100

CIFAR_HOW = ("download cifar-100-python.tar.gz (the python version) from cs.toronto.edu/~kriz/cifar.html and "
             "extract it under root")

# What the official release's pickles (written by Python 2's cPickle) and the same dicts re-pickled by
# Python 3 may name: numpy's array and scalar reconstructors, numpy.ndarray/dtype, plain containers.
_PICKLE_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int",
                              "float", "complex", "bool"})


def _pickle_globals() -> dict[tuple[str, str], object]:
    """(module, name) -> the object, for everything a CIFAR-100 pickle may reference."""
    import codecs

    arr = np.zeros(1, np.uint8)
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,     # how protocol 0-2 pickles store bytes
    }
    for core in ("numpy.core", "numpy._core"):    # numpy 1 and numpy 2 spell the module differently
        allowed[(f"{core}.multiarray", "_reconstruct")] = arr.__reduce__()[0]
        allowed[(f"{core}.multiarray", "scalar")] = np.int64(0).__reduce__()[0]
        allowed[(f"{core}.numeric", "_frombuffer")] = arr.__reduce_ex__(5)[0]
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, numbers, strings and containers, and nothing else.

    A pickle can name any importable callable (os.system, builtins.eval, ...) and unpickling calls it;
    a dataset file must not be able to run code, so every global outside the allow-list is refused.
    """

    def __init__(self, f, path: str):
        super().__init__(f, encoding="bytes")
        self.path = path
        self.allowed = _pickle_globals()

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module in ("builtins", "__builtin__") and name in _PICKLE_BUILTINS:
            return super().find_class(module, name)
        raise data_error(self.path, "a CIFAR-100 pickle, which holds only numpy arrays, lists and bytes",
                         f"it asks to call {module}.{name}, so it was refused unread (a pickle naming other code can "
                         f"run it); delete the file and {CIFAR_HOW}")


def _read_cifar_pickle(path: str):
    with open(path, "rb") as f:
        return _CifarUnpickler(f, path).load()


def build_cifar100(spec, root: str, split: str, seed: int, split_seed: int = DEFAULT_SPLIT_SEED):
    """The python pickle release; root may be the folder holding `cifar-100-python` or that folder itself."""
    base = os.path.join(root, "cifar-100-python")
    base = base if os.path.isdir(base) else root
    path = require_file(os.path.join(base, "test" if split == "test" else "train"),
                        "the CIFAR-100 python pickle (a dict with b'data' and b'fine_labels')", CIFAR_HOW)
    try:
        d = _read_cifar_pickle(path)
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = [int(t) for t in d[b"fine_labels"]]
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    except TocomError:
        raise
    except Exception as e:
        raise data_error(path, f"a pickled dict with b'data' (N, 3072 uint8) and b'fine_labels' ({type(e).__name__}: "
                         f"{e})", CIFAR_HOW) from None
    if len(images) != len(labels):
        raise data_error(path, f"as many b'fine_labels' as images ({len(labels)} vs {len(images)})", CIFAR_HOW)
    ds = ArrayDataset(spec.name, split, images, labels, spec.num_classes)
    meta = os.path.join(base, "meta")
    if os.path.isfile(meta):
        try:
            ds.classes = [c.decode() for c in _read_cifar_pickle(meta)[b"fine_label_names"]]
        except TocomError:
            raise  # a meta file that names code is no cosmetic problem: it is not the official release
        except Exception:
            pass  # class names are cosmetic
    return _holdout(ds, split, split_seed)


# --------------------------------------------------------------------------- FGVC

CUB_HOW = ("download CUB_200_2011.tgz from the Caltech-UCSD Birds-200-2011 page (data.caltech.edu) and extract it "
           "under root")


def build_cub200(spec, root: str, split: str, seed: int, split_seed: int = DEFAULT_SPLIT_SEED):
    """CUB_200_2011: images.txt (id path), image_class_labels.txt (id class 1..200), train_test_split.txt (id is_train)."""
    base = os.path.join(root, "CUB_200_2011")
    base = base if os.path.isdir(base) else root
    def table(fname: str, expected: str) -> dict[int, str]:
        path = os.path.join(base, fname)
        out = {}
        for i, row in enumerate(_read_lines(path, expected, CUB_HOW)):
            if len(row) < 2 or not row[0].isdigit():
                raise data_error(f"{path} line {i + 1}", expected, CUB_HOW)
            out[int(row[0])] = " ".join(row[1:])
        return out

    images = table("images.txt", "lines '<image_id> <relative/path.jpg>'")
    labels = table("image_class_labels.txt", "lines '<image_id> <class_id 1..200>'")
    is_train = table("train_test_split.txt", "lines '<image_id> <is_training_image 0|1>'")
    want_train = split != "test"
    paths, targets = [], []
    for img_id in sorted(images):
        try:
            label, train = int(labels[img_id]), int(is_train[img_id])
        except (KeyError, ValueError):
            raise data_error(os.path.join(base, "image_class_labels.txt"), f"an integer class and train/test flag "
                             f"for image id {img_id} (also in train_test_split.txt)", CUB_HOW) from None
        if bool(train) == want_train:
            paths.append(os.path.join(base, "images", images[img_id]))
            targets.append(label - 1)
    ds = FileListDataset(spec.name, split, paths, targets, spec.num_classes, CUB_HOW)
    return _holdout(ds, split, split_seed)


CARS_HOW = ("get the Stanford Cars release (cars_train/, cars_test/, devkit/ and cars_test_annos_withlabels.mat, "
            "e.g. from the Kaggle mirror of ai.stanford.edu/~jkrause/cars) and extract it under root")


def build_stanford_cars(spec, root: str, split: str, seed: int, split_seed: int = DEFAULT_SPLIT_SEED):
    """cars_{train,test}/ + .mat 'annotations' struct arrays with fields fname and class (1..196)."""
    base = os.path.join(root, "stanford_cars")
    if not os.path.isdir(base) or os.path.isdir(os.path.join(root, "devkit")):
        base = root
    if split == "test":
        img_dir = os.path.join(base, "cars_test")
        mat_path = os.path.join(base, "cars_test_annos_withlabels.mat")
        if not os.path.isfile(mat_path) and os.path.isfile(os.path.join(base, "devkit", "cars_test_annos_withlabels.mat")):
            mat_path = os.path.join(base, "devkit", "cars_test_annos_withlabels.mat")
    else:
        img_dir = os.path.join(base, "cars_train")
        mat_path = os.path.join(base, "devkit", "cars_train_annos.mat")
    expected = "a MATLAB file whose 'annotations' struct array has fields fname and class"
    mat = _loadmat(mat_path, ("annotations",), expected, CARS_HOW)
    ann = np.atleast_1d(mat["annotations"]).reshape(-1)
    if ann.dtype.names is None or not {"fname", "class"} <= set(ann.dtype.names):
        raise data_error(mat_path, expected, CARS_HOW)
    require_dir(img_dir, "the folder of car images named in the annotations", CARS_HOW)
    paths = [os.path.join(img_dir, _mat_str(a["fname"])) for a in ann]
    targets = [int(np.asarray(a["class"]).reshape(-1)[0]) - 1 for a in ann]
    ds = FileListDataset(spec.name, split, paths, targets, spec.num_classes, CARS_HOW)
    return _holdout(ds, split, split_seed)


DOGS_HOW = "download images.tar and lists.tar from vision.stanford.edu/aditya86/ImageNetDogs and extract both under root"


def build_stanford_dogs(spec, root: str, split: str, seed: int, split_seed: int = DEFAULT_SPLIT_SEED):
    """Images/<wnid-breed>/*.jpg + {train,test}_list.mat with 'file_list' (relative to Images/) and 'labels' (1..120)."""
    mat_path = os.path.join(root, "test_list.mat" if split == "test" else "train_list.mat")
    expected = "a MATLAB file with 'file_list' (paths relative to Images/) and 'labels' (1..120)"
    mat = _loadmat(mat_path, ("file_list", "labels"), expected, DOGS_HOW)
    files = [_mat_str(f) for f in np.atleast_1d(mat["file_list"]).reshape(-1)]
    labels = _mat_vector(mat["labels"]).astype(np.int64) - 1
    if len(files) != len(labels):
        raise data_error(mat_path, f"as many 'labels' as 'file_list' entries ({len(labels)} vs {len(files)})", DOGS_HOW)
    img_dir = require_dir(os.path.join(root, "Images"), "one folder of dog images per breed", DOGS_HOW)
    ds = FileListDataset(spec.name, split, [os.path.join(img_dir, f) for f in files], labels, spec.num_classes, DOGS_HOW)
    return _holdout(ds, split, split_seed)


FLOWERS_HOW = ("download 102flowers.tgz, imagelabels.mat and setid.mat from robots.ox.ac.uk/~vgg/data/flowers/102 "
               "and put them (jpg/ extracted) under root")


def build_oxford_flowers102(spec, root: str, split: str, seed: int, split_seed: int = DEFAULT_SPLIT_SEED):
    """jpg/image_%05d.jpg + imagelabels.mat 'labels' (1..102) + setid.mat trnid/valid/tstid (1-based ids).

    This release has an official val split: train=trnid, val=valid, trainval=both, test=tstid.
    """
    labels = _loadmat(os.path.join(root, "imagelabels.mat"), ("labels",), "a MATLAB file with 'labels' (1..102)",
                      FLOWERS_HOW)["labels"]
    labels = _mat_vector(labels).astype(np.int64)
    setid = _loadmat(os.path.join(root, "setid.mat"), ("trnid", "valid", "tstid"),
                     "a MATLAB file with trnid, valid and tstid", FLOWERS_HOW)
    keys = {"train": ["trnid"], "val": ["valid"], "trainval": ["trnid", "valid"], "test": ["tstid"]}[split]
    ids = np.concatenate([_mat_vector(setid[k]).astype(np.int64) for k in keys])
    if len(ids) and (ids.min() < 1 or ids.max() > len(labels)):
        raise data_error(os.path.join(root, "setid.mat"), f"image ids within 1..{len(labels)} (the size of imagelabels.mat)", FLOWERS_HOW)
    img_dir = require_dir(os.path.join(root, "jpg"), "the folder of image_NNNNN.jpg files", FLOWERS_HOW)
    paths = [os.path.join(img_dir, f"image_{i:05d}.jpg") for i in ids]
    return FileListDataset(spec.name, split, paths, labels[ids - 1] - 1, spec.num_classes, FLOWERS_HOW)


# --------------------------------------------------------------------------- VTAB-1k

VTAB_HOW = ("get the VTAB-1k folder distributed with the VPT/NOAH benchmarks (e.g. NOAH's vtab-1k.zip) and unpack it "
            "so that root/<task>/ holds images/ and train800.txt, val200.txt, train800val200.txt, test.txt")


def build_vtab(spec, root: str, split: str, seed: int):
    """root/<task>/{train800,val200,train800val200,test}.txt with 'relative/path label' lines."""
    task = spec.name.split("/", 1)[1]
    how = spec.how_to_get or VTAB_HOW  # generated tasks (fmnist_vtab/*) say how to generate them
    task_dir = os.path.join(root, task)
    if not os.path.isdir(task_dir) and os.path.isfile(os.path.join(root, VTAB_SPLIT_FILES[split])):
        task_dir = root  # root already points at the task folder
    list_path = os.path.join(task_dir, VTAB_SPLIT_FILES[split])
    require_file(list_path, "a VTAB-1k split list with one 'relative/path label' per line", how)
    paths, targets = [], []
    try:
        with open(list_path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as e:
        raise data_error(list_path, f"UTF-8 text with one 'relative/path label' per line (byte {e.start} is not)", how) from None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise data_error(f"{list_path} line {i + 1}", "'relative/path label' with an integer label", how)
        paths.append(os.path.join(task_dir, parts[0]))
        targets.append(int(parts[1]))
    ds = FileListDataset(spec.name, split, paths, targets, spec.num_classes, how)
    ds.split_files = (list_path,)
    return ds
