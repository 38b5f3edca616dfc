"""Lineage: what every output was made from (content digests), and the checks wherever two artefacts meet.

Why: a command that exits 0 with a number computed from the wrong input is the worst outcome for a
reproducibility pipeline, because nobody re-checks a table that came out (issue 18). So every output's
record carries a `lineage` entry (docs/lineage.md): the `tocom` header of a model, the `tocom_segmenter`
header of a Segmenter, a plugin's `extra`, a search score file, and the `<out>.json` beside a CSV.

    backbone    the pretrained backbone it descends from: one identity, carried down the chain unchanged.
                {"kind": "file", "name", "sha256", "path"}: a checkpoint (pretrained by the pipeline, or a
                third-party .pth); {"kind": "timm", "name"}: timm's hub weights; {"kind": "init", "name", "seed"}:
                a random initialisation. A backbone pretrained here records `role: "backbone"` instead, and
                its own digest is the identity of everything made from it.
    checkpoint  the file it started from, {"path", "sha256"}
    data        {"dataset", "root", "split", "n", "files": {split file: sha256}} per split it read (the split
                files of list-based datasets: VTAB-1k and the generated fmnist_vtab tasks)
    allowed     the checks the user overrode on purpose (`--allow-other-backbone`, `--allow-other-dataset`)

A record beside an output (`<out>.json`) also says where it was computed (`machine`: torch, the CPU kernel
class, threads, GPU), which decides its bytes (docs/determinism.md).

Comparisons use content, not names (`comparable` drops paths): the same bytes elsewhere are the same input.
Torch-free (the report and `select` use it; `machine` imports torch when called).
"""
from __future__ import annotations

import os
import sys

from .errors import TocomError
from .io import file_digest, header_json, read_safetensors_header, write_json

#: The header keys our model files keep their record under (classification models, Segmenters).
RECORD_KEYS = ("tocom", "tocom_segmenter")
BACKBONE_FLAG = "--allow-other-backbone"
DATASET_FLAG = "--allow-other-dataset"


def warn(message: str) -> None:
    print(f"[tocom] warning: {message}", file=sys.stderr, flush=True)


# ---- what is recorded ---------------------------------------------------------------------------------------
def file_entry(path) -> dict:
    return {"path": str(path), "sha256": file_digest(path)}


def _file_identity(path, name: str | None) -> dict:
    return {"kind": "file", "name": name or "", **file_entry(path)}


def own_record(path) -> dict | None:
    """The record a tocom model file keeps in its header (None: not ours, or unreadable: not lineage's business)."""
    try:
        meta = read_safetensors_header(path)[0]
        return next((header_json(path, meta, key, "record", "") for key in RECORD_KEYS if key in meta), None)
    except TocomError:          # unreadable, or its record is not a JSON object
        return None


def backbone_of(path, record: dict | None) -> dict | None:
    """The pretrained backbone an artefact says it descends from (a model header or a plugin's `extra`, read
    from `path`); None when it records none (written before lineage existed)."""
    lineage = (record or {}).get("lineage")
    if not isinstance(lineage, dict):
        return None
    if isinstance(lineage.get("backbone"), dict):
        return lineage["backbone"]
    if lineage.get("role") == "backbone":         # pretrained here: the file itself is the backbone
        return _file_identity(path, (record or {}).get("backbone"))
    return None


def start(checkpoint, name: str | None, pretrained: bool, seed: int) -> dict:
    """The lineage of a model about to be trained from `checkpoint` (or timm's weights, or a fresh init):
    the backbone identity it carries down and the file it starts from."""
    if checkpoint:
        record = own_record(checkpoint) if str(checkpoint).endswith(".safetensors") else None
        # ours: the identity it carries (a file without lineage, e.g. a backbone pretrained before lineage
        # existed, is taken as its own root); anything else is a pretrained backbone itself
        identity = backbone_of(checkpoint, record) or _file_identity(checkpoint, name or (record or {}).get("backbone"))
        return {"backbone": identity, "checkpoint": file_entry(checkpoint)}
    if pretrained:      # timm's full name of the hub weights (deit_base_patch16_224 -> deit_base_patch16_224.fb_in1k)
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        tag = f"{name.split('.')[0]}.{cfg.tag}" if cfg is not None and cfg.tag else name
        return {"backbone": {"kind": "timm", "name": tag}, "checkpoint": None}
    return {"backbone": {"kind": "init", "name": name, "seed": int(seed)}, "checkpoint": None}


def data_entry(ds) -> dict:
    """What a dataset split is, as far as it can be told without reading every image."""
    root = getattr(ds, "root", None)
    return {"dataset": getattr(ds, "name", type(ds).__name__), "split": getattr(ds, "split", None), "root": os.path.realpath(root) if root else None, "n": len(ds),
            "files": {os.path.basename(f): file_digest(f) for f in getattr(ds, "split_files", ()) or ()}}


def comparable(entry):
    """An entry without its paths: what must be equal for two inputs to be the same."""
    if isinstance(entry, dict):
        return {k: comparable(v) for k, v in entry.items() if k != "path"}
    if isinstance(entry, list):
        return [comparable(v) for v in entry]
    return entry


def machine() -> dict:
    """Where an output was computed: on CPU the bytes depend on the kernel class torch picked and the thread
    count (docs/determinism.md), so a record says which ran, for whoever compares two runs' digests."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_record(out, record: dict) -> None:
    """The record of a CSV output, beside it as `<out>.json` (as `finish` writes a model's)."""
    write_json({**record, "machine": machine()}, f"{out}.json")


# ---- the checks -----------------------------------------------------------------------------------------------
def same_backbone(a: dict, b: dict) -> bool:
    if a.get("sha256") and b.get("sha256"):
        return a["sha256"] == b["sha256"]
    return comparable(a) == comparable(b)


def describe(identity: dict | None) -> str:
    if not identity:
        return "an unrecorded backbone"
    if identity.get("kind") == "file":
        return f"{identity.get('name') or 'a checkpoint'} sha256 {str(identity.get('sha256'))[:12]}"
    if identity.get("kind") == "timm":
        return f"timm's {identity.get('name')} weights"
    return f"{identity.get('name')} initialised with seed {identity.get('seed')}"


def check_backbones(first: str, a: dict | None, second: str, b: dict | None, allow: bool = False) -> bool:
    """Refuse (one line) two artefacts from different pretrained backbones; True when `allow` let a mismatch
    through (the caller records it). An artefact that records no backbone is named in a warning line."""
    if a is None or b is None:
        warn(f"{first if a is None else second} records no backbone lineage (written before tocom recorded it); "
             f"cannot check that {first} and {second} come from the same pretrained backbone")
        return False
    if same_backbone(a, b):
        return False
    what = f"{first} comes from {describe(a)} but {second} from {describe(b)}"
    if allow:
        warn(f"{what}; going on as {BACKBONE_FLAG} says (recorded in the output)")
        return True
    raise TocomError(f"{what}; use artefacts made from the same pretrained backbone (or pass {BACKBONE_FLAG} "
                     "if you mean it)")
