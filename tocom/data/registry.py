"""Name -> dataset registry and the single entry point `build_dataset`.

`build_dataset` resolves the root, lets the family reader build the requested split
(checking that every file it needs exists, so problems surface at build time as one-line
`TocomError`s rather than in the middle of an epoch), applies `limit`, and attaches the
transform. Default roots live under `data/` relative to the working directory; set the
environment variable TOCOM_DATA to move that base elsewhere.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass
from typing import Callable

from tocom.errors import TocomError

from . import fmnist_tasks, folders, segmentation, small, synthetic
from .base import TocomDataset, stratified_pick
from .segmentation import SegmentationDataset, build_seg_transform
from .transforms import TRAIN_SPLITS, TRANSFORMS, augments, build_transform

SPLITS = ("train", "val", "test", "trainval")
DATA_ENV = "TOCOM_DATA"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    group: str
    default_root: str | None
    layout: str
    how_to_get: str
    splits: tuple = SPLITS
    default_transform: str = "deit"
    builder: Callable | None = None  # (spec, root, split, seed, **kwargs) -> TocomDataset
    needs_root: bool = True


_REGISTRY: dict[str, DatasetSpec] = {}


def _register(spec: DatasetSpec) -> None:
    assert spec.name not in _REGISTRY, spec.name
    assert spec.default_transform in TRANSFORMS, spec
    _REGISTRY[spec.name] = spec


HOLDOUT = ("No official val split: 'trainval' = official train, 'val' = stratified 10 % of it, "
           "'train' = the other 90 %, 'test' = official test.")

def _release(name: str, num_classes: int, group: str, how_to_get: str, builder: Callable, layout: str) -> None:
    """Register a dataset read from its official release, by default under data/<name>."""
    _register(DatasetSpec(name, num_classes, group, f"data/{name}", layout, how_to_get, builder=builder))


_release("imagenet", 1000, "imagenet", folders.IMAGENET_HOW, folders.build_imagenet,
         "ImageFolder: root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG; class index = sorted wnid order. "
         "'test' = the official val set; 'val' = stratified 10 % held out from train, 'train' = the other 90 %, "
         "'trainval' = all of train.")
_release("cifar100", 100, "cifar", folders.CIFAR_HOW, folders.build_cifar100,
         "Python pickle release: root/cifar-100-python/{train,test,meta} (root may also be cifar-100-python "
         "itself); dicts with b'data' (N, 3072 uint8, CHW) and b'fine_labels'. " + HOLDOUT)
_release("cub200", 200, "fgvc", folders.CUB_HOW, folders.build_cub200,
         "root/CUB_200_2011/ (or root itself) with images/<class>/*.jpg, images.txt (id path), "
         "image_class_labels.txt (id class, 1-based), train_test_split.txt (id is_train). " + HOLDOUT)
_release("stanford_cars", 196, "fgvc", folders.CARS_HOW, folders.build_stanford_cars,
         "root/cars_train/*.jpg, root/cars_test/*.jpg, root/devkit/cars_train_annos.mat and "
         "root/cars_test_annos_withlabels.mat (or under devkit/); 'annotations' struct arrays with fields "
         "bbox_*, class (1-based) and fname. " + HOLDOUT)
_release("stanford_dogs", 120, "fgvc", folders.DOGS_HOW, folders.build_stanford_dogs,
         "root/Images/<wnid-breed>/*.jpg plus root/train_list.mat and root/test_list.mat with "
         "'file_list' (paths relative to Images/), 'annotation_list' and 'labels' (1-based). " + HOLDOUT)
_release("oxford_flowers102", 102, "fgvc", folders.FLOWERS_HOW, folders.build_oxford_flowers102,
         "root/jpg/image_NNNNN.jpg, root/imagelabels.mat ('labels', 1-based) and root/setid.mat "
         "(trnid/valid/tstid, 1-based image ids). Official splits: train=trnid, val=valid, trainval=both, "
         "test=tstid.")

#: The 19 VTAB-1k tasks (task -> group) in the benchmark's usual order.
VTAB_TASKS: dict[str, str] = {
    "cifar": "natural", "caltech101": "natural", "dtd": "natural", "oxford_flowers102": "natural",
    "oxford_iiit_pet": "natural", "svhn": "natural", "sun397": "natural",
    "patch_camelyon": "specialized", "eurosat": "specialized", "resisc45": "specialized",
    "diabetic_retinopathy": "specialized",
    "clevr_count": "structured", "clevr_dist": "structured", "dmlab": "structured", "kitti": "structured",
    "dsprites_loc": "structured", "dsprites_ori": "structured", "smallnorb_azi": "structured",
    "smallnorb_ele": "structured",
}
VTAB_NUM_CLASSES: dict[str, int] = {
    "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37, "svhn": 10,
    "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
    "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
    "smallnorb_azi": 18, "smallnorb_ele": 18,
}
for _task, _group in VTAB_TASKS.items():
    _register(DatasetSpec(
        name=f"vtab/{_task}", num_classes=VTAB_NUM_CLASSES[_task], group=_group, default_root="data/vtab-1k",
        layout=f"VPT/NOAH VTAB-1k layout: root/{_task}/images/... plus root/{_task}/train800.txt, val200.txt, "
        "train800val200.txt and test.txt, one 'relative/path label' per line (paths relative to the task folder); "
        "root may also point at the task folder itself. Splits: train=train800, val=val200, "
        "trainval=train800val200, test=test.",
        how_to_get=folders.VTAB_HOW, default_transform="resize", builder=folders.build_vtab,
    ))

_register(DatasetSpec(
    name="fashion_mnist", num_classes=10, group="real-small", default_root=small.FASHION_ROOT,
    layout="IDX files, gzipped or not: root/train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), "
    "t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz); 28x28 grayscale. " + HOLDOUT,
    how_to_get=small.FASHION_HOW, default_transform="small", builder=small.build_fashion_mnist,
))
_register(DatasetSpec(
    name="digits", num_classes=10, group="real-small", default_root=None,
    layout="scikit-learn's bundled load_digits (1797 8x8 grayscale images, no files). 'test' = stratified 20 %, "
    "'trainval' = the other 80 %, 'val' = stratified 10 % of trainval, 'train' = the rest (fixed split seed).",
    how_to_get="ships with scikit-learn (pip install scikit-learn); no download", default_transform="small",
    builder=small.build_digits, needs_root=False,
))
for _task, _t in fmnist_tasks.TASKS.items():
    _register(DatasetSpec(
        name=f"{fmnist_tasks.FAMILY}/{_task}", num_classes=_t.num_classes, group=_t.group,
        default_root=f"data/{fmnist_tasks.FAMILY}",
        layout=f"VTAB-1k layout written by 'tocom make-tasks' (tocom/data/fmnist_tasks.py): root/{_task}/images/"
        f"{{train,val,test}}/NNNNN.png (56x56 grayscale) plus root/{_task}/train800.txt, val200.txt, "
        "train800val200.txt and test.txt, one 'relative/path label' per line (paths relative to the task folder); "
        f"root may also point at the task folder itself. Task: {_t.description}. Default sizes train 800, val 200, "
        "trainval 1000, test 500; items of train/val come from Fashion-MNIST t10k images [0, 5000), of test from "
        "[5000, 10000) (none from the pre-training train file).",
        how_to_get=f"generate it with 'tocom make-tasks --out data/{fmnist_tasks.FAMILY}' (the workflow's tasks rule "
        "does this)",
        default_transform="small", builder=folders.build_vtab,
    ))
for _name, (_fn, _k, _group, (_ntr, _nva, _nte)) in synthetic.SYNTH_TASKS.items():
    _register(DatasetSpec(
        name=_name, num_classes=_k, group=_group, default_root=None,
        layout=f"Procedural, generated on the fly (no files): {(_fn.__doc__ or '').split(chr(10))[0].strip()} "
        f"Native 32 px RGB. Default sizes train {_ntr}, val {_nva}, trainval {_ntr + _nva}, test {_nte} "
        "(kwargs n_train/n_val/n_test/native_size).",
        how_to_get="generated by tocom.data.synthetic; nothing to download", default_transform="small",
        builder=synthetic.make_builder(_name), needs_root=False,
    ))

# Segmentation (appendix, Table 11): items are (FloatTensor[3, H, W], LongTensor[H, W]) with ignore label 255.
_release("ade20k", 150, "segmentation", segmentation.ADE_HOW, segmentation.build_ade20k,
         "MIT Scene Parsing release: root/ADEChallengeData2016/ (or root itself) with "
         "images/{training,validation}/*.jpg and annotations/{training,validation}/*.png (same stem; 0 = other -> "
         "ignore 255, 1..150 -> classes 0..149). 'test' = the official validation set (2,000 images); 'trainval' = "
         "official training (20,210), 'val' = a fixed 10 % of it, 'train' = the other 90 %.")
_register(DatasetSpec(
    name="fashion_mnist_seg", num_classes=11, group="segmentation", default_root=small.FASHION_ROOT,
    layout="Procedural scenes of Fashion-MNIST items (the fashion_mnist IDX files): 1-3 items pasted on a 56 px noise "
    "canvas, pixels labelled with their item's class 0..9 or background 10. Items of 'train'/'val' come from the "
    "fashion_mnist train/val images, of 'test' from t10k. Default sizes train 2000, val 500, trainval 2500, test 1000 "
    "(kwargs n_train/n_val/n_test/native_size/max_items/split_seed).",
    how_to_get=small.FASHION_HOW, default_transform="small", builder=segmentation.build_fashion_seg,
))


# ----------------------------------------------------------------------------- public API


def dataset_names() -> list[str]:
    """All registered dataset names, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TocomError(f"unknown dataset {name!r}; expected one of: {', '.join(_REGISTRY)}") from None


def resolve_root(spec: DatasetSpec, root: str | None) -> str | None:
    """`root`, else the spec's default root; a default under 'data/' moves with $TOCOM_DATA."""
    if root is None:
        root = spec.default_root
        if root is not None and os.environ.get(DATA_ENV) and root.startswith("data/"):
            root = os.path.join(os.environ[DATA_ENV], root[len("data/"):])
    if root is None:
        return None
    root = os.path.expanduser(os.fspath(root))
    if spec.needs_root and not os.path.isdir(root):
        summary = re.split(r"(?<=[a-z)\]'])\.\s+(?=[A-Z'])", spec.layout)[0].rstrip(".")
        hint = f" (or pass root=, or set ${DATA_ENV} to the folder holding '{spec.default_root[5:]}')" if (
            spec.default_root or "").startswith("data/") else ""
        raise TocomError(f"{root}: expected the {spec.name} dataset folder ({summary}); {spec.how_to_get}{hint}")
    return root


def build_dataset(name: str, root: str | None = None, split: str = "train", img_size: int = 224,
                  transform: str | None = None, seed: int = 0, limit: int | None = None, **kwargs) -> TocomDataset:
    """Build one split of a registered dataset; items are (FloatTensor[3, img_size, img_size], int).

    kwargs: `augment` (bool) forces the training/eval variant of the "deit" recipe (default:
    training for "train"/"trainval"); `interpolation` ("nearest"/"bilinear"/"bicubic") overrides the
    recipe's resize mode; `split_seed` (default 0) picks the held-out val/test items; procedural tasks
    also take `n_train`, `n_val`, `n_test`, `native_size`. `seed` drives `limit` and procedural content.
    """
    spec = get_spec(name)
    if split not in spec.splits:
        raise TocomError(f"{name}: unknown split {split!r}; expected one of {', '.join(spec.splits)}")
    kind = transform if transform is not None else spec.default_transform
    if kind not in TRANSFORMS:
        raise TocomError(f"unknown transform {kind!r}; expected one of {', '.join(TRANSFORMS)} (or None for the dataset's default)")
    if int(img_size) < 1:
        raise TocomError(f"img_size must be a positive integer, got {img_size!r}")
    augment = kwargs.pop("augment", None)
    interpolation = kwargs.pop("interpolation", None)
    accepted = set(inspect.signature(spec.builder).parameters) - {"spec", "root", "split", "seed"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TocomError(f"{name}: unknown option(s) {', '.join(unknown)}; accepted: "
                         f"{', '.join(sorted(accepted | {'augment', 'interpolation'}))}")
    root = resolve_root(spec, root)
    ds = spec.builder(spec, root, split, int(seed), **kwargs)
    if len(ds) == 0:
        raise TocomError(f"{root or name}: split '{split}' of {name} is empty; check the split files or sizes")
    if limit is not None:
        if int(limit) < 1:
            raise TocomError(f"limit must be a positive integer or None, got {limit!r}")
        ds.restrict(stratified_pick(ds.targets, int(limit), int(seed)))
    train = (split in TRAIN_SPLITS) if augment is None else bool(augment)
    ds.transform = build_transform(kind, img_size, train, interpolation)
    ds.transform_name = kind
    ds.augments = augments(kind, train)
    ds.img_size = int(img_size)
    ds.root = root
    return ds


def build_segmentation_dataset(name: str, root: str | None = None, split: str = "train", img_size: int | None = None,
                               transform: str | None = None, seed: int = 0, limit: int | None = None,
                               augment: bool | None = None, **kwargs) -> SegmentationDataset:
    """`build_dataset` for a segmentation set, with `augment` choosing the joint transform's variant.

    img_size defaults to the dataset's native size (512 for ADE20K, the canvas for fashion_mnist_seg).
    """
    spec = get_spec(name)
    if spec.group != "segmentation":
        raise TocomError(f"{name} is not a segmentation dataset; use build_dataset for it")
    size = img_size or (512 if name == "ade20k" else int(kwargs.get("native_size", 56)))
    ds = build_dataset(name, root=root, split=split, img_size=size, transform=transform, seed=seed, limit=limit,
                       **kwargs)
    train = (split in TRAIN_SPLITS) if augment is None else bool(augment)
    ds.seg_transform = build_seg_transform(ds.transform_name, size, train)
    return ds
