"""Paper-shaped smoke: config/paper.yaml's DAG, backbones and recipes on fixture data, on a CPU.

    python workflow/scripts/paper_smoke.py FOLDER [--config config/gpu.yaml]
    snakemake --cores 1 --configfile FOLDER/paper_smoke.yaml        # from the repo root (gpu_smoke.yaml for gpu.yaml)

Any GPU config of the paper's shape derives the same way (`--config`, default config/paper.yaml; the derived
run is named <its name>_smoke, so several live side by side in one FOLDER).

config/paper.yaml is otherwise only ever dry-run here, so a shape, recipe or layout bug in a DeiT-B,
MAE, RandAugment/mixup or 1,000-class path would first show on a GPU cluster after a queue wait.
This script writes, under FOLDER:

- data/          fixture datasets in every real on-disk layout the data layer reads (docs/datasets.md):
                 ImageNet as an ImageFolder with all 1,000 real wnid folders (so labels are the 1,000-class
                 heads' own indices), the CIFAR-100 python pickle release (protocol 2, as the Python 2
                 original), CUB-200-2011, Stanford Cars and Stanford Dogs (with their .mat metadata),
                 Oxford Flowers-102 (.mat labels and official split ids), all 19 VTAB-1k task folders
                 (train800/val200/train800val200/test lists) and ADE20K (ADEChallengeData2016: JPEG images,
                 single-channel PNG annotations with 0 = other and 1..150). A few tiny images per split and class, in the
                 modes the real releases hold: RGB JPEG of odd sizes, plus a grayscale and a CMYK JPEG and a
                 PNG under a .JPEG name (ImageNet has all three), a grayscale JPEG in CUB and a PNG in VTAB.
                 Each dataset's first and last class occur, so a head of the wrong size fails.
- checkpoints/   official-style random-init checkpoints of the real backbones: `timm.create_model(name,
                 pretrained=False)` under a fixed seed, saved with `torch.save({"model": state_dict})` as
                 the DeiT and MAE releases are (MAE without a head), for every backbone the paper config
                 names, plus DeiT-B/384 (`deit_base_patch16_384`), which tests/test_paper_smoke.py runs patched.
- <name>_smoke.yaml  the config loaded and overridden (`derive_config`): never a copy of its values.
                 The first seed; every training step is one optimisation step on N images, searches keep 2 candidates,
                 the s grid 2 scales, and the studies one job per rule type; every job has 1 CPU and 1 loader
                 worker, the distillation runs as 2 DDP processes (gloo, torchrun); the backbones, recipes
                 (RandAugment, mixup/cutmix, drop-path, label smoothing, AdaptFormer, feature distillation
                 for MAE), r_max 16, the degrees 0 and 16, the report section and the DAG stay the paper's.
                 A `segmentation` section (Table 11) keeps one Segmenter, one iteration on SEG_N crops.

Results go to results/paper_smoke/ and figures/paper_smoke/ of the directory Snakemake runs in.
"""
from __future__ import annotations

import argparse
import copy
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
PAPER_CONFIG = REPO / "config" / "paper.yaml"
N = 4                       # images per training step: batch_size = limit, so one step per epoch
SEED = 0
SEG_N = 2                   # segmentation images per step and per evaluated split (512 px crops: the costly jobs)
WORKERS = 1                 # loader workers per process of every job
DDP_PROCESSES = 2           # the distillation's DDP ranks (gloo): each takes N / 2 images of the step

#: Always written, used by config/paper.yaml or not: the 384 px DeiT-B (tests/test_paper_smoke.py runs it).
EXTRA_BACKBONES = ("deit_base_patch16_384",)


def checkpoint_name(timm_name: str) -> str:
    """Fixture checkpoint file of a timm backbone (random init, in the official releases' format)."""
    return "mae_pretrain_vit_base.random-init.pth" if timm_name == "vit_base_patch16_224.mae" else \
        f"{timm_name}.random-init.pth"


# Per-class image counts of the fixtures: train/test of the releases without a val split (whose val is a
# stratified 10 % of train), enough that train, val and a `limit` of N are never empty.
TRAIN_PER_CLASS, TEST_PER_CLASS, FIXTURE_CLASSES = 5, 2, 4


# ---------------------------------------------------------------------------------------------- images
def write_image(path: Path, rng: np.random.Generator, mode: str = "RGB", fmt: str = "JPEG") -> None:
    """A small random image of an odd, non-square size (the transforms resize it to the model's); mode RGB / L
    (grayscale) / CMYK; fmt JPEG or PNG (whatever the file name says, as in ImageNet)."""
    from PIL import Image

    h, w = int(rng.integers(24, 48)), int(rng.integers(24, 48))
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    (img.convert(mode) if mode != "RGB" else img).save(path, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))


def _spread(num_classes: int, k: int = FIXTURE_CLASSES) -> list[int]:
    """k distinct 0-based classes including the first and the last."""
    return sorted({round(i * (num_classes - 1) / (k - 1)) for i in range(k)})


# ---------------------------------------------------------------------------------------------- datasets
def write_imagenet(root: Path, rng) -> None:
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG (valprep.sh layout) for all 1,000 wnids (class index =
    sorted position = the heads' index; the reader needs every train wnid in val too); a grayscale, a CMYK and
    a PNG-as-JPEG file in train."""
    from timm.data import ImageNetInfo

    wnids = ImageNetInfo().label_names()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    for i, w in enumerate(wnids):
        write_image(root / "train" / w / f"{w}_{i}.JPEG", rng)
    odd = {0: ("L", "JPEG"), 1: ("CMYK", "JPEG"), 2: ("RGB", "PNG")}       # the release's odd files
    for c, (mode, fmt) in odd.items():
        write_image(root / "train" / wnids[c] / f"{wnids[c]}_odd.JPEG", rng, mode, fmt)
    for c, w in enumerate(wnids):
        write_image(root / "val" / w / f"ILSVRC2012_val_{c + 1:08d}.JPEG", rng)


def write_cifar100(root: Path, rng) -> None:
    """root/cifar-100-python/{train,test,meta}: dicts pickled with protocol 2 and bytes keys (the Python 2
    release as Python 3 reads it), b'data' (N, 3072) uint8 CHW rows, b'fine_labels' 0..99."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", 2), ("test", 1)):
        labels = [c for c in range(100) for _ in range(per_class)]
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        d = {b"batch_label": f"{split} batch".encode(), b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
             b"data": data, b"fine_labels": labels, b"coarse_labels": [c // 5 for c in labels]}
        (base / split).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"fine_label_names": [f"class_{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}
    (base / "meta").write_bytes(pickle.dumps(meta, protocol=2))


def write_cub200(root: Path, rng) -> None:
    """root/CUB_200_2011/ with images/<NNN.Name>/*.jpg, images.txt, image_class_labels.txt (1-based),
    train_test_split.txt, classes.txt; one grayscale JPEG (the release has a few)."""
    base = root / "CUB_200_2011"
    images, labels, split, classes, img_id = [], [], [], [], 0
    for c in _spread(200):
        folder = f"{c + 1:03d}.Bird_{c + 1}"
        classes.append(f"{c + 1} {folder}\n")
        for j in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
            img_id += 1
            rel = f"{folder}/Bird_{c + 1}_{j:04d}.jpg"
            write_image(base / "images" / rel, rng, "L" if img_id == 1 else "RGB")
            images.append(f"{img_id} {rel}\n")
            labels.append(f"{img_id} {c + 1}\n")
            split.append(f"{img_id} {int(j < TRAIN_PER_CLASS)}\n")
    for fname, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                         ("train_test_split.txt", split), ("classes.txt", classes)):
        (base / fname).write_text("".join(lines))


def _cars_struct(rows: list[tuple[int, str]]) -> np.ndarray:
    """A MATLAB struct array like the release's 'annotations': bbox_x1..bbox_y2, class (1-based), fname."""
    dt = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    return np.array([(np.uint16(1), np.uint16(2), np.uint16(20), np.uint16(18), np.uint8(c), f) for c, f in rows],
                    dtype=dt)


def write_stanford_cars(root: Path, rng) -> None:
    """root/cars_train/*.jpg, root/cars_test/*.jpg, root/devkit/{cars_train_annos,cars_meta}.mat and
    root/cars_test_annos_withlabels.mat."""
    import scipy.io

    (root / "devkit").mkdir(parents=True, exist_ok=True)
    for split, per_class, mat in (("train", TRAIN_PER_CLASS, root / "devkit" / "cars_train_annos.mat"),
                                  ("test", TEST_PER_CLASS, root / "cars_test_annos_withlabels.mat")):
        rows = [(c + 1, f"{k + 1:05d}.jpg") for k, c in enumerate(c for c in _spread(196) for _ in range(per_class))]
        for _, fname in rows:
            write_image(root / f"cars_{split}" / fname, rng)
        scipy.io.savemat(mat, {"annotations": _cars_struct(rows)})
    names = np.empty((1, 196), dtype=object)
    names[0, :] = [f"Car Model {i + 1} 2012" for i in range(196)]
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})


def write_stanford_dogs(root: Path, rng) -> None:
    """root/Images/<wnid-breed>/*.jpg and root/{train,test,file}_list.mat with file_list, annotation_list
    (cell columns) and labels (double column, 1-based)."""
    import scipy.io

    classes = _spread(120)
    entries = {"train": [], "test": []}
    for c in classes:
        breed = f"n02{85620 + c:06d}-Breed_{c + 1}"
        for j in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
            rel = f"{breed}/{breed.split('-')[0]}_{j}.jpg"
            write_image(root / "Images" / rel, rng)
            entries["train" if j < TRAIN_PER_CLASS else "test"].append((rel, c + 1))

    def write_list(path: Path, rows):
        files = np.empty((len(rows), 1), dtype=object)
        files[:, 0] = [f for f, _ in rows]
        annos = np.empty((len(rows), 1), dtype=object)
        annos[:, 0] = [f[:-4] for f, _ in rows]
        scipy.io.savemat(path, {"file_list": files, "annotation_list": annos,
                                "labels": np.array([[lab] for _, lab in rows], dtype=np.float64)})

    write_list(root / "train_list.mat", entries["train"])
    write_list(root / "test_list.mat", entries["test"])
    write_list(root / "file_list.mat", entries["train"] + entries["test"])


def write_oxford_flowers102(root: Path, rng) -> None:
    """root/jpg/image_NNNNN.jpg, root/imagelabels.mat (labels 1..102, one row) and root/setid.mat
    (trnid/valid/tstid rows of 1-based image ids: the official train/val/test)."""
    import scipy.io

    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    for c in _spread(102):
        for key, k in (("trnid", 3), ("valid", 2), ("tstid", TEST_PER_CLASS)):
            for _ in range(k):
                labels.append(c + 1)
                ids[key].append(len(labels))
                write_image(root / "jpg" / f"image_{len(labels):05d}.jpg", rng)
    scipy.io.savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    scipy.io.savemat(root / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})


def write_vtab(root: Path, rng) -> None:
    """All 19 tasks: root/<task>/images/... and train800.txt, val200.txt, train800val200.txt, test.txt with
    'relative/path label' lines (train800val200 = train800 + val200, as in the release); one PNG per task."""
    from tocom.data.registry import VTAB_NUM_CLASSES

    for task, k in VTAB_NUM_CLASSES.items():
        classes = _spread(k, min(FIXTURE_CLASSES, k))
        lines = {"train800": [], "val200": [], "test": []}
        for split, per_class in (("train800", 2), ("val200", 1), ("test", 1)):
            for c in classes:
                for j in range(per_class):
                    png = task.endswith("svhn") or (split == "test" and not lines["test"])
                    rel = f"images/{split}/{c}_{j}.{'png' if png else 'jpg'}"
                    write_image(root / task / rel, rng, fmt="PNG" if png else "JPEG")
                    lines[split].append(f"{rel} {c}\n")
        lines["train800val200"] = lines["train800"] + lines["val200"]
        for name, rows in lines.items():
            (root / task / f"{name}.txt").write_text("".join(rows))


def write_ade20k(root: Path, rng) -> None:
    """root/ADEChallengeData2016/images/{training,validation}/ADE_*.jpg and annotations/.../ADE_*.png: single
    channel, 0 = "other" (ignored), 1..150 = the classes; both ends occur."""
    from PIL import Image

    base = root / "ADEChallengeData2016"
    for part, tag, n in (("training", "train", 10), ("validation", "val", 2)):
        for i in range(1, n + 1):
            stem = f"ADE_{tag}_{i:08d}"
            write_image(base / "images" / part / f"{stem}.jpg", rng)
            with Image.open(base / "images" / part / f"{stem}.jpg") as img:
                w, h = img.size
            ann = rng.integers(0, 151, (h, w), dtype=np.uint8)
            ann[0, 0], ann[0, 1] = 0, 150
            (base / "annotations" / part).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ann, "L").save(base / "annotations" / part / f"{stem}.png")


WRITERS = {"imagenet": write_imagenet, "cifar100": write_cifar100, "cub200": write_cub200,
           "stanford_cars": write_stanford_cars, "stanford_dogs": write_stanford_dogs,
           "oxford_flowers102": write_oxford_flowers102, "vtab": write_vtab, "ade20k": write_ade20k}


def write_data(data_root: Path) -> None:
    """Every fixture dataset under data_root at its documented sub-path; deterministic (fixed seeds)."""
    for i, (name, writer) in enumerate(WRITERS.items()):
        target = data_root / ("vtab-1k" if name == "vtab" else name)     # the default roots (docs/datasets.md)
        if target.exists():
            shutil.rmtree(target)
        writer(target, np.random.default_rng([SEED, i]))


# ---------------------------------------------------------------------------------------------- checkpoints
def backbones_of(config: dict) -> list[str]:
    """The timm names a config uses, plus EXTRA_BACKBONES."""
    return sorted({bb["timm"] for bb in config["backbones"].values()} | set(EXTRA_BACKBONES))


def write_checkpoints(folder: Path, names, force: bool = False) -> dict[str, Path]:
    """Random-init checkpoints in the official format ({"model": state_dict}; MAE headless), atomically;
    an existing file is kept unless `force` (the same seed writes the same weights)."""
    import timm
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        out[name] = path = folder / checkpoint_name(name)
        if path.is_file() and not force:
            continue
        torch.manual_seed(SEED)
        model = timm.create_model(name, pretrained=False)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"model": model.state_dict()}, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------------------------------- config
def _one_step(values: dict, always: bool) -> None:
    """One optimisation step on N images: epochs 1, batch_size = limit = N (only keys already set unless
    `always`, so an override block stays an override)."""
    for key, value in (("epochs", 1), ("batch_size", N), ("limit", N)):
        if always or key in values:
            values[key] = value


def _floor_at_zero(values: dict, defaults) -> None:
    """DeiT's rule scales the lr by batch / 512: at N images it falls under the cosine's floor (min_lr 1e-5), which
    the settings refuse (the schedule would climb). The floor goes to 0 where the lr scales; one step exercises
    no schedule."""
    if values.get("scale_lr", defaults.scale_lr):
        values["min_lr"] = 0.0


def _pick_vtab(datasets: list[str], groups: dict, k: int) -> str:
    """The first dataset of VTAB group k (natural, specialized, structured, in turn) among `datasets`."""
    names = list(groups)
    return next((d for j in range(len(names)) for d in datasets if d in groups[names[(k + j) % len(names)]]),
                datasets[0])


def smoke_name(config: dict) -> str:
    """The derived run's name: <the config's name>_smoke (paper_smoke for config/paper.yaml)."""
    return f"{config['name']}_smoke"


def derive_config(paper: dict, folder: str | Path) -> dict:
    """A GPU config (config/paper.yaml, config/gpu.yaml) with one job per rule type on the fixtures of `folder` (see
    the module docstring)."""
    from tocom.settings import DistillSettings, FinetuneSettings

    folder = Path(folder).absolute()
    cfg = copy.deepcopy(paper)
    cfg.update(name=smoke_name(paper), device="cpu", data_root=str(folder / "data"),
               seeds=list(paper.get("seeds", [0]))[:1])      # one job per rule type: the first seed
    cfg.pop("data_roots", None)
    for bb in cfg["backbones"].values():
        for key in ("pretrained", "pretrain"):
            bb.pop(key, None)
        bb["checkpoint"] = str(folder / "checkpoints" / checkpoint_name(bb["timm"]))
        _one_step(bb.get("distill", {}), always=False)
    _one_step(cfg["distill"], always=True)
    _floor_at_zero(cfg["distill"], DistillSettings())
    for v in (cfg.get("variants") or {}).values():
        _one_step(v, always=False)
    for recipe in cfg["recipes"].values():
        _one_step(recipe, always=True)
        _floor_at_zero(recipe, FinetuneSettings())
        for key, values in (recipe.get("search") or {}).items():
            if isinstance(values, list):
                recipe["search"][key] = values[:2]
    for values in (cfg.get("dataset_settings") or {}).values():
        _one_step(values, always=False)

    ev = cfg["evaluate"]
    ev["limit"] = N
    grid_scale = ev.get("grid_scale", 0.1)
    ev["scales"] = sorted({ev["scales"][0], grid_scale}) if ev["scales"][0] != grid_scale else ev["scales"][:2]
    # One CPU per job, but the GPU jobs' machinery all the same: one loader worker per process, and the
    # distillation (8 GPUs in the paper) as 2 DDP processes under torchrun (gloo).
    for r in cfg["resources"].values():
        r.update(cpus=1, gpus=0, workers=WORKERS)
    cfg["resources"]["distill"]["processes"] = DDP_PROCESSES

    # Studies: report.main's backbone/method keeps one set per recipe (CIFAR, FGVC, VTAB-1k, the last with
    # the ablation variants folded in), every other study its first set. One dataset per set (VTAB-1k sets
    # take the natural, specialized and structured groups in turn), the degrees 0 and 16 as targets, and one
    # source: the lowest for the main role (where the searches run), the highest for the others (training
    # with compression on, and the plugin subtracted on the way down).
    rep = cfg["report"]
    main = (rep["main"]["backbone"], rep["main"]["method"])
    keep_variants = set(rep["variants"]["ablation"]) | {rep["variants"][k][0] for k in ("scale",) if rep["variants"][k]}
    kept_recipes, vtab_k, studies = set(), 0, []
    for study in cfg.get("studies", []):
        is_main = (study["backbone"], study["method"]) == main
        sets = []
        for block in study["sets"]:
            if is_main and block["recipe"] in kept_recipes:
                for existing in (s for st in studies + [{"sets": sets}] for s in st["sets"]):
                    if existing["recipe"] == block["recipe"]:
                        existing["variants"] += [v for v in block.get("variants", [])
                                                 if v in keep_variants and v not in existing["variants"]]
                continue
            if not is_main and sets:
                break
            if block["datasets"][0].startswith("vtab/"):
                dataset = _pick_vtab(block["datasets"], rep["vtab_groups"], vtab_k)
                vtab_k += 1
            else:
                dataset = block["datasets"][0]
            source = min(block["sources"]) if is_main else max(block["sources"])
            targets = sorted({min(block["targets"]), max(block["targets"])})
            sets.append({"datasets": [dataset], "recipe": block["recipe"], "sources": [source], "targets": targets,
                         "variants": [v for v in block.get("variants", ["tocom"]) if v == "tocom" or v in keep_variants]})
            kept_recipes.add(block["recipe"])
        if sets:
            studies.append({**study, "sets": sets})
    cfg["studies"] = studies

    # Transfer (Table 1): the first check, onto the FGVC dataset the studies kept.
    kept = {d for st in studies for s in st["sets"] for d in s["datasets"]}
    cfg["transfer"] = [{**t, "b": [d for d in t["b"] if d in kept][:1] or t["b"][:1]}
                       for t in cfg.get("transfer", [])[:1]]
    cfg["bench"] = [{**b, "r": sorted({min(b["r"]), max(b["r"])}), "batch_size": 2, "warmup": 0, "repeats": 1}
                    for b in cfg.get("bench", [])[:1]]

    # Segmentation (Table 11), when the paper config has it: one Segmenter at the lowest source, evaluated at
    # the lowest and highest target; one optimisation step of SEG_N crops at the recipe's crop size.
    seg = cfg.get("segmentation")
    if seg:
        seg["sources"] = [min(seg["sources"])]
        seg["targets"] = sorted({min(seg["targets"]), max(seg["targets"])})
        recipe = seg.setdefault("recipe", {})
        recipe.pop("epochs", None)
        recipe.update(iterations=1, batch_size=SEG_N, limit=SEG_N)
        seg["evaluate"] = {**(seg.get("evaluate") or {}), "limit": SEG_N}
    return cfg


def write_config(folder: Path, paper_config: Path = PAPER_CONFIG) -> Path:
    cfg = derive_config(yaml.safe_load(Path(paper_config).read_text()), folder)
    path = Path(folder) / f"{cfg['name']}.yaml"
    header = (f"# Derived from {paper_config} by workflow/scripts/paper_smoke.py: do not edit, re-run the script.\n"
              f"# Run from the repo root:  .venv/bin/snakemake --cores 1 --configfile {path.absolute()}\n")
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False, width=120))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="where data/, checkpoints/ and <name>_smoke.yaml go")
    p.add_argument("--config", "--paper-config", dest="paper_config", type=Path, default=PAPER_CONFIG,
                   help="the GPU config to derive from (default: config/paper.yaml; e.g. config/gpu.yaml)")
    p.add_argument("--force", action="store_true", help="rewrite the checkpoints even if they exist")
    args = p.parse_args(argv)
    folder = args.folder.absolute()
    folder.mkdir(parents=True, exist_ok=True)
    write_data(folder / "data")
    write_checkpoints(folder / "checkpoints", backbones_of(yaml.safe_load(args.paper_config.read_text())),
                      force=args.force)
    path = write_config(folder, args.paper_config)
    print(f"wrote {folder / 'data'}, {folder / 'checkpoints'} and {path}\n"
          f"run:  .venv/bin/snakemake --cores 1 --configfile {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
