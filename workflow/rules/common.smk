# Shared by every stage: config validation, the experiment grid, and how a step is launched. Every path
# comes from the run layout (tocom/layout.py, used qualified: `layout.EVAL`): `run_path` puts a template
# under this run's folder, `job_log`/`job_benchmark` name a job's files after its output.
import shlex
import sys

import yaml

from tocom import layout
from tocom.errors import TocomError
from tocom.experiments import Grid, job_processes, job_workers, validate_config
from tocom.settings import RunSettings


def yaml_typed(value, nested=False):
    """A --config value as a config file would type it. Snakemake types a top-level value itself but reads the
    values inside a list or mapping with YAML's BaseLoader, which keeps each one a string (seeds=[3,4,5] arrives
    as ['3', '4', '5']); those are re-read with safe_load, and one YAML cannot read stays the string it was."""
    if isinstance(value, dict):
        return {k: yaml_typed(v, True) for k, v in value.items()}
    if isinstance(value, list):
        return [yaml_typed(v, True) for v in value]
    if nested and isinstance(value, str) and value:
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def retype_overrides(override, into, nested=False):
    """Re-type, in the merged config, only what --config set (the config file's own values stay as they are)."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            retype_overrides(value, into[key], True)
        else:
            into[key] = yaml_typed(value, nested)


try:
    retype_overrides(workflow.config_settings.config, config)
    # Jobs (SLURM or otherwise) re-parse this file: the main process has checked everything already,
    # so they skip the checks that import torch/timm or look at the file system.
    checked = workflow.is_main_process
    if checked:
        validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
    GRID = Grid(config, check_files=checked, check_geometry=checked)
except TocomError as e:  # one line, before any job runs
    sys.exit(f"config error: {e}")
# Every plugin variant, the paper's ablations included (the config's `variants` section only adds to
# them): what the report's items read as config["variants"].
config["variants"] = GRID.variants

OUT = layout.run_dir(config["name"])


def run_path(template, **fields):
    """A layout template under this run's folder: unfilled fields stay Snakemake wildcards."""
    return layout.pattern(template, OUT, **fields)


def job_log(stage, template, **fields):
    """The log of the `stage` job that writes `template` (logs/<stage>/<its output's fields>.log)."""
    return run_path(layout.log(stage, template, **fields))


def job_benchmark(stage, template, **fields):
    return run_path(layout.benchmark(stage, template, **fields))


AGGREGATES = [run_path(layout.TABLE, table=t) for t in ("eval", "transfer", "bench")] + [run_path(layout.SUMMARY)]

wildcard_constraints:
    **layout.WILDCARDS,


def launch(kind, recipe=None):
    """The tocom command for a job; several processes (one per GPU, or `processes` on CPU) run it under
    torchrun (DDP), each with its share of the job's CPUs as torch threads."""
    r = GRID.resources_of(kind, recipe)
    nproc = job_processes(r)
    if nproc > 1:
        return (f"env OMP_NUM_THREADS={max(1, r.get('cpus', 1) // nproc)} {sys.executable} -m torch.distributed.run "
                f"--standalone --nproc-per-node {nproc} -m tocom.cli")
    return f"{sys.executable} -m tocom.cli"


def res(kind, recipe=None):
    """The job's resources from the config's `resources` entry (a recipe's own, `<kind>.<recipe>`, over
    `kind`'s); what it leaves out, the profile's `default-resources` set (profiles/slurm). `gpu_model` is
    checked at start-up (tocom/gpus.py), not passed on: SLURM's GPU names are the cluster's own."""
    r = GRID.resources_of(kind, recipe)
    given = {k: r[k] for k in ("runtime", "mem_mb") if k in r}
    if r.get("gpus", 0) > 0:
        given["gpu"] = r["gpus"]
    return given


def threads(kind, recipe=None):
    return GRID.resources_of(kind, recipe).get("cpus", 1)


def recipe_res(kind, recipe_of):
    """`resources:` of a rule whose jobs may run with their recipe's entry (`<kind>.<recipe>`, e.g. CIFAR-100's
    batch of 1,024 on 8 GPUs): the plain `res(kind)` when no recipe has one, else one callable per key."""
    if not any(k.startswith(kind + ".") for k in config["resources"]):
        return res(kind)
    keys = set(res(kind)).union(*(res(kind, k.split(".", 1)[1]) for k in config["resources"]
                                  if k.startswith(kind + ".")))
    return {key: (lambda wc, key=key: res(kind, recipe_of(wc)).get(key, 0)) for key in sorted(keys)}


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


def common_flags(dataset, seed, kind, recipe=None):
    """Data root and how the step runs (RunSettings): the seed, the config's device and precision, and the loader
    workers of the job's `resources` entry (`kind`, or its recipe's own)."""
    run = RunSettings(seed=seed, device=config.get("device"), precision=config.get("precision", "auto"),
                      workers=job_workers(GRID.resources_of(kind, recipe)), quiet=True)
    return flags(data_root=GRID.data_root(dataset) if dataset else None) + " " + run.cli_args()


def backbone_input(wildcards):
    """Our own pretrained backbone, when the config trains it; nothing for hub/checkpoint backbones."""
    bb = config["backbones"][wildcards.backbone]
    return [run_path(layout.BACKBONE, backbone=wildcards.backbone)] if bb.get("pretrain") else []


def backbone_flags(key):
    bb = config["backbones"][key]
    if bb.get("pretrain"):
        return flags(checkpoint=run_path(layout.BACKBONE, backbone=key))
    return flags(backbone=bb["timm"], checkpoint=bb.get("checkpoint"), pretrained=bool(bb.get("pretrained")))


def plugin_file(backbone, method, variant):
    return run_path(layout.PLUGIN, backbone=backbone, method=method, variant=variant)
