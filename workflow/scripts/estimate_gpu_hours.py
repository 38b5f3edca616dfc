"""Jobs per stage, GPU-hours and GPU memory for a pipeline config (the README's budgets), recalibrated on
measured run times when the config has already (partly) run.

    python workflow/scripts/estimate_gpu_hours.py config/paper.yaml [--results results/paper]
                                                  [--loader-bench LOADER.csv]

Compute, anchored on the one GPU cost the paper measures: distilling ToCom for DeiT-B takes 1.8 h on 8
V100s (14.4 GPU-hours) for 10 ImageNet epochs (Sec. 5.1). A distillation image costs a teacher forward
(1 unit) plus a student forward and backward (3 units) at the sampled degrees (the mean FLOPs fraction
over the r ladder), which fixes the V100-hours of one forward unit of DeiT-B. Every other job is priced in
the same units, scaled by its backbone's FLOPs and its degree's FLOPs fraction: fine-tuning = 3 units per
training image per epoch, evaluation = 1 unit per image per pass. Dataset sizes are the paper's
(reference/paper_datasets.csv; the procedural tasks' own sizes; a `limit` caps them). A GPU named by the
job's `resources` entry (`gpu_model`, tocom/gpus.py) divides the V100-hours by its speed.

Data loading: a job cannot run faster than its loader. Each image a job reads (every epoch, every
evaluation pass) is decoded and transformed once, by `workers` processes per GPU (the job's CPUs per
GPU, one left to the training process; at least one): the job's wall-clock is the larger of its GPU time
and images / (images/s per worker x workers x GPUs). Images/s per worker: the `deit_train` transform for
training on datasets read with the DeiT recipe (ImageNet, CIFAR, FGVC; Segmenter's crops likewise), `eval`
otherwise (evaluation; VTAB-1k's resize), from `--loader-bench` (a CSV with columns transform, workers,
images_per_s: `tocom bench`'s data-loading rows; the largest worker count of each transform, divided by it)
or LOADER_IMAGES_PER_S, measured on this project's machine (docs/workflow.md says how).

Memory: every job's need per GPU (tocom.experiments.Grid.gpu_needs: batch per GPU x the backbone's
activations at the autocast dtype, plus weights and optimizer state) and the GPUs it fits; the workflow
refuses at start-up a config whose job does not fit the GPU it names.

Recalibration: every GPU rule writes a Snakemake benchmark file, results/<name>/benchmarks/<rule>/<job
id>.tsv (wall-clock seconds `s`). When that folder exists, a second column prices the whole DAG from
them: per rule, the jobs that ran count at their measured hours × the GPUs per job of `resources`
(device-hours: wall-clock hours for CPU jobs), and the jobs still to run at their estimate × that
rule's measured / estimated ratio (the overall ratio for a rule with no measured job yet).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import timm
import torch
import yaml

from tocom.compress import flops, patch
from tocom import layout
from tocom.experiments import SEGMENT_METHOD, Grid
from tocom.gpus import GPUS
from tocom.settings import UNCOMPRESSED

REPO = Path(__file__).resolve().parents[2]
ANCHOR_GPU_HOURS, ANCHOR_IMAGES, ANCHOR_EPOCHS = 1.8 * 8, 1_281_167, 10
UNKNOWN_SIZE = 1000
FIXED = {"bench"}                    # priced at a flat guess, not by FLOPs: never rescaled by other rules' ratio
# Benchmark folder (stage) of each rule (workflow/rules/*.smk `benchmark:`), and the `resources` entry it runs with.
FOLDER = {"pretrain_backbone": "pretrain", "distill": "distill", "finetune": "finetune", "finetune_select": "select",
          "search_candidate": "search", "evaluate": "evaluate", "transfer": "transfer", "bench": "bench",
          "segment_finetune": "segment", "segment_evaluate": "segment_eval"}
RESOURCE = {"pretrain_backbone": "pretrain", "distill": "distill", "finetune": "finetune",
            "finetune_select": "finetune", "search_candidate": "finetune", "evaluate": "eval", "transfer": "eval",
            "bench": "bench", "segment_finetune": "segment", "segment_evaluate": "eval"}
SEG_WINDOWS = {"ade20k": 2}          # sliding 512-px windows per ADE20K evaluation image (short side 512, ~4:3)
#: Images/s one loader worker (one core) decodes and transforms, by transform: measured on this project's
#: machine as the CPU time of one process over 64 ImageNet-sized JPEGs (500 x 375, ~76 KB), median of 3 passes
#: (docs/workflow.md). `--loader-bench` replaces them with `tocom bench`'s data-loading measurements.
LOADER_IMAGES_PER_S = {"deit_train": 140.0, "eval": 160.0}


def gflops_table(timm_name: str, method: str, r_max: int) -> list[float]:
    with torch.device("meta"):
        model = patch(timm.create_model(timm_name, pretrained=False), method)
    return [flops(model, r)["gflops"] for r in range(r_max + 1)]


def dense_gflops(timm_name: str, img_size: int, rs, n_cls: int | None = None, decoder_depth: int = 2) -> list[float]:
    """GFLOPs of the ViT at img_size with tome_ffn at each r; with n_cls, of the whole Segmenter (Table 11)."""
    from tocom.segment import mask_transformer_flops

    with torch.device("meta"):
        model = patch(timm.create_model(timm_name, pretrained=False, img_size=img_size), "tome_ffn")
    dec = mask_transformer_flops(model.patch_embed.num_patches, model.embed_dim, model.embed_dim, decoder_depth,
                                 n_cls, model.blocks[0].mlp.fc1.out_features) / 1e9 if n_cls else 0.0
    return [flops(model, r)["gflops"] + dec for r in rs]


def dataset_sizes():
    """size(name, split, limit) -> images: the paper's Table 14, the procedural tasks' defaults, a limit."""
    from tocom.data.synthetic import SYNTH_TASKS

    sizes = pd.read_csv(REPO / "reference/paper_datasets.csv").set_index("dataset")
    unknown: set[str] = set()

    def paper_size(name: str, split: str) -> int | None:
        key = name.split("/", 1)[1] if name.startswith("vtab/") else name
        key = "oxford_flowers102_fgvc" if key == "oxford_flowers102" and not name.startswith("vtab/") else key
        if key not in sizes.index:
            return None
        row = sizes.loc[key]
        val = int(row.val) if pd.notna(row.val) else int(0.1 * row.train)
        if split == "trainval":                       # VTAB-1k: train800 + val200
            return int(row.train) + (val if name.startswith("vtab/") else 0)
        if split == "train":                          # CIFAR/FGVC: 90 % of train; VTAB-1k: train800
            return int(row.train) - (0 if name.startswith("vtab/") else val)
        return val if split == "val" else int(row[split])

    def size(name: str, split: str, limit: int | None = None) -> int:
        n = paper_size(name, split)
        if n is None and name in SYNTH_TASKS:
            train, val, test = SYNTH_TASKS[name][3]
            n = {"train": train, "val": val, "trainval": train + val, "test": test}[split]
        if n is None:
            unknown.add(name)
            n = UNKNOWN_SIZE
        return min(n, limit) if limit else n

    return size, unknown


def loader_rates(path: str | None) -> dict[str, float]:
    """Images/s per worker by transform: LOADER_IMAGES_PER_S, or a data-loading benchmark's CSV (columns transform,
    workers, images_per_s; per transform, the row with the most workers, its rate divided by them)."""
    rates = dict(LOADER_IMAGES_PER_S)
    if path:
        df = pd.read_csv(path)
        missing = {"transform", "workers", "images_per_s"} - set(df.columns)
        if missing:
            raise SystemExit(f"{path}: no column {', '.join(sorted(missing))}; pass `tocom bench`'s data-loading CSV")
        for transform, rows in df[df.workers > 0].groupby("transform"):
            top = rows.loc[rows.workers.idxmax()]
            rates[str(transform)] = float(top.images_per_s) / float(top.workers)
    return rates


def loader_workers(entry: dict) -> int:
    """Loader workers per GPU of a job: its CPUs per GPU, one left to the training process (at least one)."""
    gpus = max(int(entry.get("gpus", 0) or 0), 1)
    return max(1, int(entry.get("cpus", 1)) // gpus - 1)


def estimate(config: dict, loader: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per job: rule, job id (its benchmark file's name), its `resources` key, the V100-hours of its compute
    (FLOPs), the images it loads and with which transform, and `gpu_hours`: device-hours on the GPU its entry names
    (V100 when none), bounded below by its loader (GPU jobs)."""
    from tocom.data import get_spec

    grid = Grid(config, check_files=False)
    loader = loader or dict(LOADER_IMAGES_PER_S)
    size, unknown = dataset_sizes()
    deit = gflops_table("deit_base_patch16_224", "tome", 16)
    unit = ANCHOR_GPU_HOURS / (ANCHOR_IMAGES * ANCHOR_EPOCHS * 4 * sum(deit) / len(deit))   # per DeiT-B GFLOP
    cache: dict = {}

    def cost(backbone: str, method: str, r: int) -> float:
        method = "tome" if method == UNCOMPRESSED else method      # r = 0: the plain ViT, whatever the method
        key = (config["backbones"][backbone]["timm"], method)
        if key not in cache:
            cache[key] = gflops_table(*key, grid.geometry(backbone)["max_r"])
        return cache[key][r] * unit

    def train_transform(dataset: str) -> str:
        try:
            return "deit_train" if get_spec(dataset).default_transform == "deit" else "eval"
        except Exception:                                        # noqa: BLE001  (an unregistered name: eval's cost)
            return "eval"

    ev, rows = grid.eval_settings, []

    def add(rule, job, key, v100_hours, images=0, transform="eval"):
        rows.append({"rule": rule, "job": job, "key": key, "v100_hours": v100_hours, "images": images,
                     "transform": transform})

    for backbone in grid.pretrained_backbones():
        dataset, s = grid.pretrain_settings(backbone)
        n = size(dataset, s.split, s.limit) * s.epochs
        add("pretrain_backbone", backbone, "pretrain", n * 3 * cost(backbone, "tome", 0), n, train_transform(dataset))
    for backbone, method, variant in sorted(grid.plugins):
        dataset, s = grid.distill_settings(backbone, variant)
        if method == SEGMENT_METHOD:                  # Table 11's plugin: its own resolution and degree ladder
            timm_name = config["backbones"][backbone]["timm"]
            if s.img_size:
                img = s.img_size
            else:
                with torch.device("meta"):
                    img = int(timm.create_model(timm_name, pretrained=False).patch_embed.img_size[0])
            table = [g * unit for g in dense_gflops(timm_name, img, range(0, s.r_max + 1, s.r_step))]
        else:
            table = [cost(backbone, method, r) for r in range(s.r_max + 1)]
        n = size(dataset, s.split, s.limit) * s.epochs
        add("distill", layout.job(layout.PLUGIN, backbone=backbone, method=method, variant=variant), "distill",
            n * 4 * sum(table) / len(table), n, train_transform(dataset))
    for run in grid.finetunes.values():
        s = grid.finetune_settings(run)
        rule = "finetune_select" if run.role == "select" else "finetune"
        n = size(run.dataset, s.split, s.limit) * s.epochs
        add(rule, run.job, grid.resource_key("finetune", run.recipe),
            n * 3 * cost(run.backbone, run.method, run.source), n, train_transform(run.dataset))
    for cand in grid.searches.values():
        s = grid.finetune_settings(cand)              # trains on `train`, scored plain on `val`
        n, val = size(cand.dataset, "train", s.limit) * s.epochs, size(cand.dataset, "val", ev.limit)
        add("search_candidate", cand.job, grid.resource_key("finetune", cand.recipe),
            (n * 3 + val) * cost(cand.backbone, cand.method, cand.source), n + val, train_transform(cand.dataset))
    for ev_run in grid.evals.values():
        ft, method = ev_run.finetune, ev_run.method   # (a shared r = 0 model is evaluated once per method)
        val, test = size(ft.dataset, "val", ev.limit), size(ft.dataset, "test", ev.limit)
        passes = {t: (val + test) for t in ev_run.targets}          # images read per target
        for t in ev_run.targets:
            if t != ft.source:
                passes[t] += len(ev_run.variants) * (len(ev.scales) * val + test)
                if ev_run.selector is not None:       # the companion scores s on val as well
                    passes[t] += (1 + len(ev_run.variants) * len(ev.scales)) * val
        add("evaluate", ev_run.job, "eval", sum(n * cost(ft.backbone, method, t) for t, n in passes.items()),
            sum(passes.values()))
    for t in grid.transfers:
        n = 2 * size(t.b, "test", ev.limit)
        add("transfer", t.job, "eval", n * cost(t.backbone, t.method, t.target_r), n)
    for b in grid.benches:
        add("bench", b.job, "bench", 0.1)
    if grid.segments:                                 # Table 11: Segmenter fine-tuning and mIoU evaluation
        seg, ss = config["segmentation"], grid.segment_settings()
        ev_seg = ev.replace(**(seg.get("evaluate") or {}))
        targets = sorted(int(t) for t in seg["targets"])
        kind = "segment" if "segment" in config["resources"] else "finetune"
        for run in grid.segments.values():
            timm_name = config["backbones"][run.backbone]["timm"]
            n_cls = get_spec(run.dataset).num_classes
            g = dict(zip(sorted({run.source, *targets}), dense_gflops(timm_name, ss.crop_size,
                         sorted({run.source, *targets}), n_cls, ss.decoder_depth)))
            images = size(run.dataset, ss.split, ss.limit) * ss.epochs if ss.epochs else ss.iterations * ss.batch_size
            add("segment_finetune", run.job, kind, images * 3 * g[run.source] * unit, images, "deit_train")
            win = SEG_WINDOWS.get(run.dataset, 1)
            val, test = size(run.dataset, "val", ev_seg.limit), size(run.dataset, "test", ev_seg.limit)
            passes = {t: val + test + (len(seg.get("variants", [])) * (len(ev_seg.scales) * val + test)
                                       if t != run.source else 0) for t in targets}
            add("segment_evaluate", layout.job(layout.SEGMENT_EVAL, **run.fields), "eval",
                sum(win * n * g[t] for t, n in passes.items()) * unit, sum(passes.values()))
    df = pd.DataFrame(rows, columns=["rule", "job", "key", "v100_hours", "images", "transform"])
    df["gpu_hours"], df["loader_bound"] = zip(*(device_hours(grid, r, loader) for r in df.itertuples())) \
        if len(df) else ([], [])
    df.attrs["unknown_sizes"] = sorted(unknown)
    return df


def device_hours(grid: Grid, row, loader: dict[str, float]) -> tuple[float, bool]:
    """(device-hours, loader-bound) of one job: V100-hours / the named GPU's speed, or the loader's wall-clock x GPUs
    when that is longer. CPU jobs (no GPU) keep their FLOPs estimate."""
    entry = grid.resources_of(*row.key.split(".", 1))
    gpus = int(entry.get("gpus", 0) or 0)
    if gpus == 0:
        return row.v100_hours, False
    compute = row.v100_hours / GPUS[entry["gpu_model"]].speed if entry.get("gpu_model") else row.v100_hours
    data = row.images / (loader[row.transform] * loader_workers(entry) * gpus) / 3600 * gpus
    return max(compute, data), data > compute


def memory_table(grid: Grid) -> pd.DataFrame:
    """Per `resources` key: GPUs per job, the GPU named, the largest per-GPU need of its jobs and the GPUs it fits."""
    rows = []
    for key, job, need in grid.gpu_needs():
        entry = grid.resources_of(*key.split(".", 1))
        if not entry.get("gpus"):
            continue
        rows.append({"resources": key, "gpus_per_job": int(entry["gpus"]), "gpu_model": entry.get("gpu_model", "—"),
                     "job": job, "batch_per_gpu": need.batch_per_gpu, "need_gb": round(need.total_gb, 1),
                     "fits": ", ".join(g for g in GPUS if need.fits(g)) or "none"})
    df = pd.DataFrame(rows, columns=["resources", "gpus_per_job", "gpu_model", "job", "batch_per_gpu", "need_gb",
                                     "fits"])
    return df.sort_values("need_gb").groupby("resources").tail(1).set_index("resources").sort_index()


def measured(folder: Path, resources: dict) -> pd.DataFrame:
    """rule, job, device-hours of every benchmark file (wall-clock x GPUs per job; CPU jobs: wall-clock)."""
    rule_of = {v: k for k, v in FOLDER.items()}
    rows = []
    for tsv in sorted(folder.glob("*/*.tsv")):
        f = layout.parse(layout.BENCHMARK, tsv)
        rule = rule_of.get(f["stage"], f["stage"])
        try:
            seconds = float(pd.read_csv(tsv, sep="\t")["s"].mean())
        except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue                                   # a damaged or half-written file: not a measurement
        gpus = int((resources.get(RESOURCE.get(rule, rule)) or {}).get("gpus", 0) or 0)
        rows.append((rule, f["job"], seconds / 3600 * max(gpus, 1)))
    return pd.DataFrame(rows, columns=["rule", "job", "hours"])


def calibrate(est: pd.DataFrame, meas: pd.DataFrame) -> tuple[pd.DataFrame, float | None, int]:
    """Per rule: measured jobs and the DAG's hours from the measurements (see the module docstring)."""
    both = est.merge(meas, on=["rule", "job"], how="left")
    done = both[both.hours.notna() & ~both.rule.isin(FIXED)]
    overall = done.hours.sum() / done.gpu_hours.sum() if len(done) and done.gpu_hours.sum() > 0 else None
    out = {}
    for rule, g in both.groupby("rule"):
        ran = g[g.hours.notna()]
        ratio = ran.hours.sum() / ran.gpu_hours.sum() if len(ran) and ran.gpu_hours.sum() > 0 else \
            (1.0 if rule in FIXED else overall)
        todo = g[g.hours.isna()].gpu_hours.sum()
        hours = ran.hours.sum() + (todo * ratio if ratio is not None else float("nan"))
        out[rule] = {"measured_jobs": len(ran), "measured_hours": hours}
    stray = len(meas.merge(est, on=["rule", "job"], how="left", indicator=True).query("_merge == 'left_only'"))
    return pd.DataFrame.from_dict(out, orient="index"), overall, stray


def main(config_path: str, results: str | None = None, loader_bench: str | None = None) -> None:
    config = yaml.safe_load(Path(config_path).read_text())
    rates = loader_rates(loader_bench)
    est = estimate(config, rates)
    grid = Grid(config, check_files=False)
    df = est.groupby("rule").agg(jobs=("gpu_hours", "size"), v100_hours=("v100_hours", "sum"),
                                 loader_bound=("loader_bound", "sum"), gpu_hours=("gpu_hours", "sum"))
    folder = Path(results) if results else next(
        (p for p in (Path(layout.run_dir(config["name"])), REPO / layout.run_dir(config["name"])) if p.is_dir()),
        Path(layout.run_dir(config["name"])))
    bench = folder / layout.BENCHMARKS
    meas = measured(bench, config.get("resources", {})) if bench.is_dir() else pd.DataFrame()
    notes = []
    if len(meas):
        cal, overall, stray = calibrate(est, meas)
        df = df.join(cal)
        df.loc["total"] = df.sum(numeric_only=True)
        df = df.assign(measured_jobs=df.measured_jobs.fillna(0).astype(int),
                       measured_hours=df.measured_hours.map(lambda h: "—" if pd.isna(h) else
                                                            f"{h:.1f}" if h >= 10 else f"{h:.3f}"))
        notes.append(f"measured_hours: recalibrated on {int(df.loc['total', 'measured_jobs'])} benchmark files in "
                     f"{bench} (device-hours of this run's hardware: wall-clock × GPUs per job from `resources`, "
                     "wall-clock for CPU jobs); jobs not run yet are priced at their estimate × their rule's "
                     "measured/estimated ratio" + (f" (rules with no measured job: the overall ratio {overall:.3g}; "
                                                   f"{', '.join(sorted(FIXED))}: the flat estimate)"
                                                   if overall is not None else "") + ".")
        if stray:
            notes.append(f"{stray} benchmark file(s) match no job of this config's grid (an older grid?) and are "
                         "left out.")
    else:
        df.loc["total"] = df.sum(numeric_only=True)
        notes.append(f"No benchmark files at {bench}: FLOPs-anchored estimate only.")
    df = df.assign(jobs=df.jobs.astype(int), loader_bound=df.loader_bound.astype(int),
                   v100_hours=df.v100_hours.round(1).astype(str), gpu_hours=df.gpu_hours.round(1).astype(str))
    if est.attrs.get("unknown_sizes"):
        notes.append(f"Sizes unknown (assumed {UNKNOWN_SIZE} images, or the config's limit): "
                     f"{', '.join(est.attrs['unknown_sizes'])}.")
    named = sorted({e.get("gpu_model") for e in config.get("resources", {}).values() if e.get("gpu_model")})
    print(df.to_markdown() + "\n")
    print("v100_hours: FLOPs-anchored compute in V100-hours (paper: ToCom distillation = 14.4 GPU-hours). "
          f"gpu_hours: device-hours on the GPUs the config names ({', '.join(named) or 'none: V100'}; "
          + "; ".join(f"{g} = {GPUS[g].speed:g}x a V100" for g in named) + "), each job bounded below by its "
          f"loader ({', '.join(f'{k} {v:g}' for k, v in rates.items())} images/s per worker"
          + (f", from {loader_bench}" if loader_bench else ", measured on this project's machine") + "); "
          "loader_bound: jobs whose loader is the slower.")
    print("\n".join(notes))
    mem = memory_table(grid)
    if len(mem):
        print(f"\nGPU memory per job (the largest of each `resources` entry; tocom/gpus.py):\n\n{mem.to_markdown()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="config/paper.yaml")
    parser.add_argument("--results", default=None, help="the run's results folder (default: results/<name>)")
    parser.add_argument("--loader-bench", default=None,
                        help="a data-loading benchmark CSV (transform, workers, images_per_s) instead of the "
                             "images/s per worker measured on this project's machine")
    args = parser.parse_args()
    main(args.config, args.results, args.loader_bench)
