"""The `tocom` command: one subcommand per pipeline step, arguments mirroring the config keys.

Each subcommand parses its arguments and calls one engine function; the logic lives in the
engines. User errors (`TocomError`) print one line and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import TocomError
from .settings import (DATA_BENCH, SPLITS, UNCOMPRESSED, BenchSettings, DataBenchSettings, DistillSettings, EvalMethodSettings, EvalSettings,
                       FinetuneSettings, MeasureSettings, PretrainSettings, RunSettings, SegmentSettings,
                       SourceMethodSettings, SourceSettings, SweepSettings, splits_overlap)

COMMANDS: dict[str, tuple] = {}


def command(name: str, help: str):
    """Register `fn(args)` as subcommand `name`, with `fn.configure(parser)` adding its arguments."""
    def register(fn):
        COMMANDS[name] = (fn, help)
        return fn
    return register


def _configure_flops(p):
    SweepSettings.add_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("flops", "analytic GFLOPs and per-layer token counts per r")
def _flops(args):
    from .compress import flops, patch
    from .models import create_backbone

    sweep = SweepSettings.from_args(args)
    model = patch(create_backbone(sweep.model), sweep.method)
    _check_degree(model, "--r", sweep.r)
    rows = [flops(model, r) for r in sweep.r]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    base = rows[0]["gflops"] if sweep.r[0] == 0 else None
    print(f"{'r':>3}  {'GFLOPs':>8}  {'ratio':>6}  tokens entering each block")
    for r, row in zip(sweep.r, rows):
        ratio = f"{base / row['gflops']:6.2f}" if base else "     -"
        print(f"{r:>3}  {row['gflops']:8.3f}  {ratio}  {row['attn_tokens']}")


_flops.configure = _configure_flops


def _configure_bench(p):
    MeasureSettings.add_arguments(p)
    BenchSettings.add_arguments(p)
    DataBenchSettings.add_arguments(p)
    p.add_argument("--out", default=None, help="CSV to write")


@command("bench", "measured images/s per r, inference or training (Fig. 3); --mode data: data loading")
def _bench(args):
    from .engine.bench import bench, bench_plugin

    m, s = MeasureSettings.from_args(args), BenchSettings.from_args(args)
    if m.mode == DATA_BENCH:
        return _bench_data(m, s, DataBenchSettings.from_args(args), args.out)
    if m.plugin_check:
        if m.mode != "infer" or m.precision not in ("auto", "off"):
            raise TocomError("--plugin-check measures float32 inference; drop --mode train and --precision")
        m = m.replace(precision="off")
        df = bench_plugin(m, s, out=args.out)
        cols = ["kind", "source_r", "target_r", "from_r", "k", "value", "reference", "ratio", "unit"]
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        return
    df = bench(m, s, out=args.out)
    cols = [c for c in ("r", "gflops", "images_per_s", "speedup", "flops_ratio") if c in df]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


_bench.configure = _configure_bench


def _bench_data(m, s, d, out):
    """The loader's images/s on this machine, then what one GPU consumes per job type and the workers that takes."""
    from .engine.bench import bench_data, gpu_demand, workers_needed

    df = bench_data(d, s, threads=m.threads, out=out)
    print(df[["transform", "workers", "images_per_s", "images_per_s_std"]].to_string(
        index=False, float_format=lambda v: f"{v:.1f}"))
    need = workers_needed(gpu_demand(m, d.gpu_tflops, d.gpu_utilisation, max(m.r)), df)
    print(f"\none GPU at {d.gpu_tflops:g} TFLOPS x {d.gpu_utilisation:g} utilisation, {m.model} ({m.method}):")
    print(need[["job", "transform", "gflops_per_image", "images_per_s", "images_per_s_per_worker",
                "workers_per_gpu"]].to_string(index=False, float_format=lambda v: f"{v:.1f}"))


# ---- shared argument groups ------------------------------------------------------------------------
def _model_args(p, checkpoint_help="tocom .safetensors, or a third-party .pth with --backbone"):
    p.add_argument("--backbone", default=None, help="timm name, e.g. deit_base_patch16_224 or tocom_vit_tiny_patch4_56")
    p.add_argument("--checkpoint", default=None, help=checkpoint_help)
    p.add_argument("--pretrained", action="store_true", help="fetch timm's pretrained weights (needs the network)")


def _data_args(p, required=True, dataset_help="registered dataset name (see docs/datasets.md)"):
    p.add_argument("--dataset", required=required, default=None, help=dataset_help)
    p.add_argument("--data-root", default=None, help="where the dataset lives (default: its documented path)")


def _dataset(args, model, split, limit, seed):
    from .data import build_dataset

    return build_dataset(args.dataset, root=args.data_root, split=split, img_size=model.patch_embed.img_size[0],
                         seed=seed, limit=limit)


def _check_degree(model, name: str, values) -> None:
    from .compress import max_r

    bad = [v for v in values if not 0 <= v <= max_r(model)]
    if bad:
        raise TocomError(f"{name} {bad} is outside what the backbone carries (0..{max_r(model)} for "
                         f"{model.patch_embed.num_patches} patch tokens over {len(model.blocks)} blocks)")


# ---- pipeline steps ---------------------------------------------------------------------------------
def _configure_pretrain(p):
    p.add_argument("--backbone", required=True, help="timm name of the (tiny) ViT to train from scratch")
    _data_args(p)
    PretrainSettings.add_arguments(p)
    RunSettings.add_arguments(p)
    p.add_argument("--out", required=True, help="model checkpoint to write (.safetensors)")


@command("pretrain-backbone", "train a (tiny) ViT from scratch: the CPU stand-in for DeiT pretraining")
def _pretrain(args):
    from .data import get_spec
    from .engine.finetune import train_classifier
    from .models import create_backbone

    s, run = PretrainSettings.from_args(args), RunSettings.from_args(args)
    model = create_backbone(args.backbone, num_classes=get_spec(args.dataset).num_classes)
    data = _dataset(args, model, s.split, s.limit, run.seed)
    train_classifier(model, data, args.out, {"backbone": args.backbone, "dataset": args.dataset, "stage": "pretrain"},
                     s, run)


_pretrain.configure = _configure_pretrain


def _configure_distill(p):
    _model_args(p)
    _data_args(p)
    DistillSettings.add_arguments(p)
    RunSettings.add_arguments(p)
    p.add_argument("--out", required=True, help="plugin to write (.safetensors)")


@command("distill", "train a ToCom plugin by self-distillation on the pre-training data")
def _distill(args):
    from .engine.distill import distill
    from .models import resolve_model

    from .compress import patch
    from .models import at_resolution

    s, run = DistillSettings.from_args(args), RunSettings.from_args(args)
    model, meta = resolve_model(args.backbone, args.checkpoint, args.pretrained)
    if s.img_size:
        model = at_resolution(model, meta["backbone"], s.img_size, **(meta.get("model_kwargs") or {}))
    patch(model, s.method)            # tome_ffn carries more degrees than the classification ladder
    _check_degree(model, "r_max", [s.r_max])
    data = _dataset(args, model, s.split, s.limit, run.seed)
    distill(model, data, args.out, s, run,
            record={"backbone": meta["backbone"], "dataset": args.dataset, "checkpoint": args.checkpoint})


_distill.configure = _configure_distill


def _configure_finetune(p):
    _model_args(p)
    _data_args(p)
    SourceMethodSettings.add_arguments(p)
    p.add_argument("--chosen", default=None, metavar="JSON",
                   help="settings chosen by the hyper-parameter search (`tocom select`); they override the flags")
    FinetuneSettings.add_arguments(p)
    RunSettings.add_arguments(p)
    p.add_argument("--score-split", default=None, choices=SPLITS,
                   help="also score the trained model (plain, at r) on this split into OUT.score.json (search)")
    p.add_argument("--out", required=True, help="model checkpoint to write (.safetensors)")


@command("finetune", "fine-tune on a downstream dataset at a source degree r (full or AdaptFormer)")
def _finetune(args):
    from .data import get_spec
    from .engine.finetune import train_classifier
    from .models import resolve_model

    src, s, run = SourceMethodSettings.from_args(args), FinetuneSettings.from_args(args), RunSettings.from_args(args)
    if src.method == UNCOMPRESSED and src.r:
        raise TocomError(f"--method {UNCOMPRESSED} trains uncompressed, at --r 0; give a method for --r {src.r}")
    if args.chosen:
        from .search import read_chosen

        s = s.replace(**read_chosen(args.chosen))
    if args.score_split and splits_overlap(s.split, args.score_split):
        raise TocomError(f"--score-split {args.score_split} overlaps the training split {s.split}; score on held-out data")
    spec = get_spec(args.dataset)
    model, meta = resolve_model(args.backbone, args.checkpoint, args.pretrained, num_classes=spec.num_classes)
    _check_degree(model, "--r", [src.r])
    data = _dataset(args, model, s.split, s.limit, run.seed)
    train_classifier(model, data, args.out, {"backbone": meta["backbone"], "dataset": args.dataset,
                                             "model_kwargs": meta.get("model_kwargs", {})},
                     s, run, method=src.method, r=src.r)
    if args.score_split:
        from .engine.evaluate import score
        from .models import load_model

        model, meta = load_model(args.out)
        score(model, meta, _dataset(args, model, args.score_split, None, run.seed), EvalSettings(), run,
              out=f"{args.out}.score.json")


_finetune.configure = _configure_finetune


def _configure_select(p):
    p.add_argument("--candidates", nargs="+", required=True, metavar="JSON",
                   help="score files of the search candidates (from `tocom finetune --score-split val`)")
    p.add_argument("--out", required=True, help="JSON of the chosen settings")


@command("select", "pick the search candidate with the best held-out score (hyper-parameter search)")
def _select(args):
    from .search import select

    chosen = select(args.candidates, args.out)
    print(json.dumps(chosen["chosen"], sort_keys=True))


_select.configure = _configure_select


def _read_plugins(specs: list[str]) -> dict:
    """[LABEL=]PATH specs -> {label: plugin}; the label fills the `variant` column (default: the plugin's)."""
    from .plugin import ToCom

    plugins = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or "/" in label:          # no label given: the whole spec is the path
            label, path = "", spec
        plugin = ToCom.load(path)
        label = label or plugin.variant
        if label in plugins:
            raise TocomError(f"two plugins are labelled {label!r}; label them (LABEL=PATH) to tell them apart")
        plugins[label] = plugin
    return plugins


def _configure_evaluate(p):
    p.add_argument("--checkpoint", required=True, help="fine-tuned model (.safetensors from `tocom finetune`)")
    p.add_argument("--select-checkpoint", default=None,
                   help="companion model (same source r, trained without the selection split) that chooses s; "
                        "default: the evaluated model, if the selection split is held out from its training")
    _data_args(p, required=False, dataset_help="default: the dataset the checkpoint was fine-tuned on")
    EvalMethodSettings.add_arguments(p)
    p.add_argument("--targets", nargs="+", type=int, required=True, metavar="R", help="target degrees")
    p.add_argument("--plugin", nargs="+", default=[], metavar="[LABEL=]PATH",
                   help="ToCom plugins (.safetensors), optionally labelled (e.g. shared=plugins/shared.safetensors); "
                        "the label fills the `variant` column (default: the plugin's variant)")
    EvalSettings.add_arguments(p)
    RunSettings.add_arguments(p)
    p.add_argument("--out", required=True, help="tidy CSV to write")


@command("evaluate", "top-1 at every target r, with and without ToCom (one tidy CSV)")
def _evaluate(args):
    from .engine.evaluate import cross_evaluate
    from .models import load_model

    s, run, method = EvalSettings.from_args(args), RunSettings.from_args(args), EvalMethodSettings.from_args(args).method
    model, meta = load_model(args.checkpoint)
    args.dataset = args.dataset or meta.get("dataset")
    _check_degree(model, "target r", args.targets)
    plugins = _read_plugins(args.plugin)
    selector = None
    if args.select_checkpoint:
        sel_model, sel_meta = load_model(args.select_checkpoint)
        selector = (sel_model, sel_meta, _dataset(args, sel_model, s.select_split, s.limit, run.seed))
    splits = {name: _dataset(args, model, name, s.limit, run.seed) for name in s.splits
              if not (selector and name == s.select_split)}
    cross_evaluate(model, {**meta, "dataset": args.dataset}, splits, args.targets, plugins, s, run,
                   selector=selector, out=args.out, method=method)


_evaluate.configure = _configure_evaluate


def _configure_transfer(p):
    p.add_argument("--model-b", required=True, help="M_0^B: fine-tuned on B at r = 0")
    p.add_argument("--high-a", required=True, help="M_16^A: fine-tuned on A at the high degree")
    p.add_argument("--low-a", required=True, help="M_0^A: fine-tuned on A at r = 0")
    _data_args(p, required=False, dataset_help="B (default: the dataset of --model-b)")
    p.add_argument("--split", default="test", choices=SPLITS, help="split of B to score")
    p.add_argument("--target-r", type=int, required=True, help="degree the models run at (paper: 16)")
    EvalMethodSettings.add_arguments(p)
    EvalSettings.add_arguments(p)
    RunSettings.add_arguments(p)
    p.add_argument("--out", required=True, help="CSV to write")


@command("transfer", "task-arithmetic check (Table 1): M_16^A - M_0^A + M_0^B evaluated on B")
def _transfer(args):
    from .engine.evaluate import transfer
    from .models import load_model, read_meta, read_state_dict

    s, run, method = EvalSettings.from_args(args), RunSettings.from_args(args), EvalMethodSettings.from_args(args).method
    model, meta = load_model(args.model_b)
    args.dataset = args.dataset or meta.get("dataset")
    _check_degree(model, "--target-r", [args.target_r])
    data = _dataset(args, model, args.split, s.limit, run.seed)
    transfer(model, {**meta, "dataset": args.dataset}, read_state_dict(args.high_a), read_state_dict(args.low_a),
             data, args.target_r, s, run, out=args.out, method=method, high_r=int(read_meta(args.high_a)["source_r"]))


_transfer.configure = _configure_transfer


# ---- segmentation (the appendix's Table 11) -------------------------------------------------------------
def _seg_dataset(args, split, limit, seed, img_size):
    from .data import build_segmentation_dataset

    return build_segmentation_dataset(args.dataset, root=args.data_root, split=split, img_size=img_size, seed=seed,
                                      limit=limit)


def _configure_segment_finetune(p):
    _model_args(p, checkpoint_help="the encoder's ImageNet weights: tocom .safetensors (e.g. a pretrained tiny "
                "backbone) or an official .pth with --backbone")
    _data_args(p, dataset_help="segmentation dataset: ade20k or fashion_mnist_seg")
    SourceSettings.add_arguments(p)
    SegmentSettings.add_arguments(p)
    RunSettings.add_arguments(p)
    p.add_argument("--out", required=True, help="Segmenter checkpoint to write (.safetensors)")


@command("segment-finetune", "fine-tune a Segmenter on a segmentation dataset at a source r, tome_ffn active (Table 11)")
def _segment_finetune(args):
    from .data import get_spec
    from .engine.segment import build_segmenter, segment_finetune
    from .models import read_meta

    src, s, run = SourceSettings.from_args(args), SegmentSettings.from_args(args), RunSettings.from_args(args)
    spec = get_spec(args.dataset)
    if spec.group != "segmentation":
        raise TocomError(f"{args.dataset} is not a segmentation dataset; use ade20k or fashion_mnist_seg")
    backbone = args.backbone
    if not backbone:
        if not (args.checkpoint and args.checkpoint.endswith(".safetensors")):
            raise TocomError("name the encoder (--backbone, a timm name) or pass a tocom .safetensors checkpoint")
        backbone = read_meta(args.checkpoint)["backbone"]
    model = build_segmenter(backbone, spec.num_classes, s, args.checkpoint, args.pretrained)
    data = _seg_dataset(args, s.split, s.limit, run.seed, s.crop_size)
    segment_finetune(model, data, args.out, src.r, s, run,
                     record={"dataset": args.dataset, "checkpoint": args.checkpoint})


_segment_finetune.configure = _configure_segment_finetune


def _configure_segment_evaluate(p):
    p.add_argument("--checkpoint", required=True, help="Segmenter from `tocom segment-finetune`")
    _data_args(p, required=False, dataset_help="default: the dataset the Segmenter was fine-tuned on")
    p.add_argument("--targets", nargs="+", type=int, required=True, metavar="R", help="target degrees")
    p.add_argument("--plugin", nargs="+", default=[], metavar="[LABEL=]PATH",
                   help="ToCom plugins distilled with --method tome_ffn on the encoder's backbone")
    EvalSettings.add_arguments(p)
    RunSettings.add_arguments(p)
    p.add_argument("--out", required=True, help="tidy CSV to write")


@command("segment-evaluate", "mIoU at every target r, with and without ToCom (s chosen on val; one tidy CSV)")
def _segment_evaluate(args):
    from .engine.segment import load_segmenter, segment_evaluate

    s, run = EvalSettings.from_args(args), RunSettings.from_args(args)
    model, meta = load_segmenter(args.checkpoint)
    args.dataset = args.dataset or meta.get("dataset")
    plugins = _read_plugins(args.plugin)
    splits = {name: _seg_dataset(args, name, s.limit, run.seed, meta["img_size"]) for name in s.splits}
    segment_evaluate(model, {**meta, "dataset": args.dataset}, splits, args.targets, plugins, s, run, out=args.out)


_segment_evaluate.configure = _configure_segment_evaluate


# ---- generated downstream tasks (the CPU configs' fmnist_vtab/*) --------------------------------------
def _configure_make_tasks(p):
    from .settings import TaskSettings

    p.add_argument("--out", required=True, help="folder to write into: one VTAB-1k task folder per task")
    p.add_argument("--fashion-root", default=argparse.SUPPRESS,
                   help="folder with Fashion-MNIST's t10k IDX files (default: where the Debian package "
                        "dataset-fashion-mnist puts them)")
    p.add_argument("--tasks", nargs="+", default=argparse.SUPPRESS, metavar="TASK",
                   help="tasks to write, e.g. count or fmnist_vtab/count (default: all; tocom/data/fmnist_tasks.py)")
    TaskSettings.add_arguments(p)


@command("make-tasks", "write the fmnist_vtab/* downstream tasks (VTAB-1k layout) from Fashion-MNIST's t10k images")
def _make_tasks(args):
    from .data.fmnist_tasks import write_tasks
    from .settings import TaskSettings

    s = TaskSettings.from_args(args)
    given = {k: getattr(args, k) for k in ("fashion_root", "tasks") if hasattr(args, k)}
    write_tasks(args.out, s, log=print, **given)


_make_tasks.configure = _configure_make_tasks


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag and pointing at --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tocom", description="Token Compensator: compression-degree arithmetic for ViTs")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"tocom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name, (fn, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        fn.configure(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "select":   # before any model is built: fresh heads and inits are seeded too
            from .engine.common import seed_everything

            seed_everything(RunSettings.from_args(args).seed)
        args.func(args)
    except TocomError as e:
        print(f"tocom {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tocom {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
