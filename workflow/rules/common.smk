# Shared by every stage: config validation, the experiment grid, and how a step is launched.
import shlex
import sys

from tocom.errors import TocomError
from tocom.experiments import (CHOSEN, EVAL, FINETUNE, SEARCH, SELECT, TRANSFER, Grid, backbone_path, dataset_name,
                               plugin_path, validate_config)
from tocom.settings import RunSettings

try:
    # Jobs (SLURM or otherwise) re-parse this file: the main process has checked everything already,
    # so they skip the checks that import torch/timm or look at the file system.
    checked = workflow.is_main_process
    if checked:
        validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
    GRID = Grid(config, check_files=checked, check_geometry=checked)
except TocomError as e:  # one line, before any job runs
    sys.exit(f"config error: {e}")

OUT = f"results/{config['name']}"
LOGS = f"{OUT}/logs"
AGGREGATES = [f"{OUT}/tables/{t}" for t in ("eval.csv", "transfer.csv", "bench.csv", "summary.md")]

wildcard_constraints:
    backbone=r"[^/]+",
    method=r"tome_ffn|tome|evit|idle|none",     # none: the source r = 0 fine-tunes every method shares
    dataset=r"[^/]+",
    variant=r"[^/]+",
    source=r"\d+",
    seed=r"\d+",


def launch(kind):
    """The tocom command for a job; several GPUs per job run it under torchrun (DDP)."""
    gpus = config["resources"][kind].get("gpus", 0)
    if gpus > 1:
        return f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node {gpus} -m tocom.cli"
    return f"{sys.executable} -m tocom.cli"


def res(kind):
    r = config["resources"][kind]
    out = dict(runtime=r.get("runtime", 60), mem_mb=r.get("mem_mb", 4000))
    if r.get("gpus", 0) > 0:
        out["gpu"] = r["gpus"]
    return out


def threads(kind):
    return config["resources"][kind].get("cpus", 1)


def flags(**kw):
    """--key value flags for the non-empty settings (lists become repeated values)."""
    parts = []
    for key, value in kw.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts.append(flag + " " + " ".join(shlex.quote(str(v)) for v in value))
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def common_flags(dataset, seed):
    """Data root and how the step runs (RunSettings): never what it computes."""
    run = RunSettings(seed=seed, device=config.get("device"), quiet=True)
    return flags(data_root=GRID.data_root(dataset) if dataset else None) + " " + run.cli_args()


def backbone_input(wildcards):
    """Our own pretrained backbone, when the config trains it; nothing for hub/checkpoint backbones."""
    bb = config["backbones"][wildcards.backbone]
    return [f"{OUT}/{backbone_path(wildcards.backbone)}"] if bb.get("pretrain") else []


def backbone_flags(key):
    bb = config["backbones"][key]
    if bb.get("pretrain"):
        return flags(checkpoint=f"{OUT}/{backbone_path(key)}")
    return flags(backbone=bb["timm"], checkpoint=bb.get("checkpoint"), pretrained=bool(bb.get("pretrained")))
