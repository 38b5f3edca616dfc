"""Jobs per stage and an estimate of GPU-hours for a pipeline config (the README's paper-run budget),
recalibrated on measured run times when the config has already (partly) run.

    python workflow/scripts/estimate_gpu_hours.py config/paper.yaml [--results results/paper]

Cost model, anchored on the one GPU cost the paper measures: distilling ToCom for DeiT-B takes
1.8 h on 8 V100s (14.4 GPU-hours) for 10 ImageNet epochs (Sec. 5.1). A distillation image costs a
teacher forward (1 unit) plus a student forward and backward (3 units) at the sampled degrees (the
mean FLOPs fraction over the r ladder), which fixes the GPU-hours of one forward unit of DeiT-B.
Every other job is priced in the same units, scaled by its backbone's FLOPs and its degree's FLOPs
fraction: fine-tuning = 3 units per training image per epoch, evaluation = 1 unit per image per
pass. Dataset sizes are the paper's (reference/paper_datasets.csv; the procedural tasks' own sizes;
a `limit` caps them). V100-hours; an estimate that ignores data loading and assumes GPU throughput
scales with FLOPs (Fig. 3 shows it roughly does).

Recalibration: every GPU rule writes a Snakemake benchmark file, results/<name>/benchmarks/<rule>/<job
id>.tsv (wall-clock seconds `s`). When that folder exists, a second column prices the whole DAG from
them: per rule, the jobs that ran count at their measured hours × the GPUs per job of `resources`
(device-hours: wall-clock hours for CPU jobs), and the jobs still to run at their FLOPs estimate ×
that rule's measured / estimated ratio (the overall ratio for a rule with no measured job yet).
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


def estimate(config: dict) -> pd.DataFrame:
    """One row per job: rule, job id (its benchmark file's name), estimated V100-hours."""
    grid = Grid(config, check_files=False)
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

    ev = grid.eval_settings
    rows = []
    for backbone in grid.pretrained_backbones():
        dataset, s = grid.pretrain_settings(backbone)
        rows.append(("pretrain_backbone", backbone,
                     size(dataset, s.split, s.limit) * s.epochs * 3 * cost(backbone, "tome", 0)))
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
        rows.append(("distill", layout.job(layout.PLUGIN, backbone=backbone, method=method, variant=variant),
                     size(dataset, s.split, s.limit) * s.epochs * 4 * sum(table) / len(table)))
    for run in grid.finetunes.values():
        s = grid.finetune_settings(run)
        rule = "finetune_select" if run.role == "select" else "finetune"
        rows.append((rule, run.job, size(run.dataset, s.split, s.limit) * s.epochs * 3
                     * cost(run.backbone, run.method, run.source)))
    for cand in grid.searches.values():
        s = grid.finetune_settings(cand)              # trains on `train`, scored plain on `val`
        rows.append(("search_candidate", cand.job, (size(cand.dataset, "train", s.limit) * s.epochs * 3
                                               + size(cand.dataset, "val", ev.limit))
                     * cost(cand.backbone, cand.method, cand.source)))
    n_scales = len(ev.scales)
    for ev_run in grid.evals.values():
        ft, method = ev_run.finetune, ev_run.method   # (a shared r = 0 model is evaluated once per method)
        val, test = size(ft.dataset, "val", ev.limit), size(ft.dataset, "test", ev.limit)
        total = sum((val + test) * cost(ft.backbone, method, t) for t in ev_run.targets)
        total += sum(len(ev_run.variants) * (n_scales * val + test) * cost(ft.backbone, method, t)
                     for t in ev_run.targets if t != ft.source)
        if ev_run.selector is not None:               # the companion scores s on val as well
            total += sum((1 + len(ev_run.variants) * n_scales) * val * cost(ft.backbone, method, t)
                         for t in ev_run.targets if t != ft.source)
        rows.append(("evaluate", ev_run.job, total))
    for t in grid.transfers:
        rows.append(("transfer", t.job, 2 * size(t.b, "test", ev.limit) * cost(t.backbone, t.method, t.target_r)))
    for b in grid.benches:
        rows.append(("bench", b.job, 0.1))
    if grid.segments:                                 # Table 11: Segmenter fine-tuning and mIoU evaluation
        from tocom.data import get_spec

        seg, ss = config["segmentation"], grid.segment_settings()
        ev_seg = ev.replace(**(seg.get("evaluate") or {}))
        targets = sorted(int(t) for t in seg["targets"])
        for run in grid.segments.values():
            timm_name = config["backbones"][run.backbone]["timm"]
            n_cls = get_spec(run.dataset).num_classes
            g = dict(zip(sorted({run.source, *targets}), dense_gflops(timm_name, ss.crop_size,
                         sorted({run.source, *targets}), n_cls, ss.decoder_depth)))
            images = size(run.dataset, ss.split, ss.limit) * ss.epochs if ss.epochs else ss.iterations * ss.batch_size
            rows.append(("segment_finetune", run.job, images * 3 * g[run.source] * unit))
            win = SEG_WINDOWS.get(run.dataset, 1)
            val, test = win * size(run.dataset, "val", ev_seg.limit), win * size(run.dataset, "test", ev_seg.limit)
            total = sum((val + test) * g[t] for t in targets)
            total += sum(len(seg.get("variants", [])) * (len(ev_seg.scales) * val + test) * g[t]
                         for t in targets if t != run.source)
            rows.append(("segment_evaluate", layout.job(layout.SEGMENT_EVAL, **run.fields), total * unit))
    df = pd.DataFrame(rows, columns=["rule", "job", "gpu_hours"])
    df.attrs["unknown_sizes"] = sorted(unknown)
    return df


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


def main(config_path: str, results: str | None = None) -> None:
    config = yaml.safe_load(Path(config_path).read_text())
    est = estimate(config)
    df = est.groupby("rule").agg(jobs=("gpu_hours", "size"), gpu_hours=("gpu_hours", "sum"))
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
    df = df.assign(jobs=df.jobs.astype(int), gpu_hours=df.gpu_hours.round(1).astype(str))
    if est.attrs.get("unknown_sizes"):
        notes.append(f"Sizes unknown (assumed {UNKNOWN_SIZE} images, or the config's limit): "
                     f"{', '.join(est.attrs['unknown_sizes'])}.")
    print(df.to_markdown())
    print()
    print("gpu_hours: FLOPs-anchored estimate in V100-hours (paper: ToCom distillation = 14.4 GPU-hours).")
    for n in notes:
        print(n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="config/paper.yaml")
    parser.add_argument("--results", default=None, help="the run's results folder (default: results/<name>)")
    args = parser.parse_args()
    main(args.config, args.results)
