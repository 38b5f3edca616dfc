"""The `tocom` command: one subcommand per pipeline step, arguments mirroring the config keys.

Each subcommand parses its arguments and calls one engine function; the logic lives in the
engines. User errors (`TocomError`) print one line and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import TocomError

COMMANDS: dict[str, tuple] = {}


def command(name: str, help: str):
    """Register `fn(args)` as subcommand `name`, with `fn.configure(parser)` adding its arguments."""
    def register(fn):
        COMMANDS[name] = (fn, help)
        return fn
    return register


def _rs(parser: argparse.ArgumentParser, default=(0, 2, 4, 8, 12, 16)) -> None:
    parser.add_argument("--r", nargs="+", type=int, default=list(default), metavar="R",
                        help="compression degrees (tokens merged/pruned/idled per layer)")


def _configure_flops(p):
    p.add_argument("--model", default="deit_base_patch16_224", help="timm backbone name")
    p.add_argument("--method", default="tome", choices=["tome", "evit", "idle"])
    _rs(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("flops", "analytic GFLOPs and per-layer token counts per r")
def _flops(args):
    from .compress import flops, patch
    from .models import create_backbone

    model = patch(create_backbone(args.model), args.method)
    rows = [flops(model, r) for r in args.r]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    base = rows[0]["gflops"] if args.r[0] == 0 else None
    print(f"{'r':>3}  {'GFLOPs':>8}  {'ratio':>6}  tokens entering each block")
    for r, row in zip(args.r, rows):
        ratio = f"{base / row['gflops']:6.2f}" if base else "     -"
        print(f"{r:>3}  {row['gflops']:8.3f}  {ratio}  {row['attn_tokens']}")


_flops.configure = _configure_flops


def _configure_bench(p):
    p.add_argument("--model", default="deit_base_patch16_224", help="timm backbone name")
    p.add_argument("--method", default="tome", choices=["tome", "evit", "idle"])
    _rs(p)
    p.add_argument("--mode", default="infer", choices=["infer", "train"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="CSV to write")


@command("bench", "measured images/s per r, inference or training (Fig. 3)")
def _bench(args):
    from .engine.bench import bench

    df = bench(args.model, args.method, args.r, args.mode, args.batch_size, args.warmup, args.repeats,
               args.device, args.amp, args.threads, args.out)
    cols = [c for c in ("r", "gflops", "images_per_s", "speedup", "flops_ratio") if c in df]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


_bench.configure = _configure_bench


# ---- shared argument groups ------------------------------------------------------------------------
def _model_args(p, checkpoint_help="tocom .safetensors, or a third-party .pth with --backbone"):
    p.add_argument("--backbone", default=None, help="timm name, e.g. deit_base_patch16_224 or tocom_vit_tiny_patch4_56")
    p.add_argument("--checkpoint", default=None, help=checkpoint_help)
    p.add_argument("--pretrained", action="store_true", help="fetch timm's pretrained weights (needs the network)")


def _data_args(p, split="train"):
    p.add_argument("--dataset", required=True, help="registered dataset name (see docs/datasets.md)")
    p.add_argument("--data-root", default=None, help="where the dataset lives (default: its documented path)")
    p.add_argument("--split", default=split, choices=["train", "val", "test", "trainval"])
    p.add_argument("--limit", type=int, default=None, help="use at most this many samples (smoke runs)")


def _train_args(p, epochs, batch_size, lr, weight_decay=0.05, warmup=0.0):
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size, help="global batch size (split across DDP ranks)")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=weight_decay)
    p.add_argument("--warmup-epochs", type=float, default=warmup)
    _run_args(p)


def _run_args(p):
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="disable bf16 autocast on CUDA")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _dataset(args, model, split=None, transform=None):
    from .data import build_dataset

    return build_dataset(args.dataset, root=args.data_root, split=split or args.split,
                         img_size=model.patch_embed.img_size[0], transform=transform, seed=args.seed, limit=args.limit)


# ---- pipeline steps ---------------------------------------------------------------------------------
def _configure_pretrain(p):
    p.add_argument("--backbone", default="tocom_vit_tiny_patch4_56", help="timm name of the (tiny) ViT to train from scratch")
    _data_args(p)
    _train_args(p, epochs=30, batch_size=128, lr=1e-3, warmup=2)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--out", required=True, help="model checkpoint to write (.safetensors)")


@command("pretrain-backbone", "train a (tiny) ViT from scratch: the CPU stand-in for DeiT pretraining")
def _pretrain(args):
    from .data import get_spec
    from .engine.finetune import train_classifier
    from .models import create_backbone

    model = create_backbone(args.backbone, num_classes=get_spec(args.dataset).num_classes)
    data = _dataset(args, model)
    train_classifier(model, data, args.out, {"backbone": args.backbone, "dataset": args.dataset, "stage": "pretrain"},
                     method="tome", r=0, mode="full", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                     label_smoothing=args.label_smoothing, seed=args.seed, device=args.device, amp=args.amp,
                     workers=args.workers, progress=not args.quiet)


_pretrain.configure = _configure_pretrain


def _configure_distill(p):
    _model_args(p)
    _data_args(p)
    p.add_argument("--method", default="tome", choices=["tome", "evit", "idle"])
    p.add_argument("--r-max", type=int, default=16, help="R: the plugin covers degrees 0..R")
    p.add_argument("--rank", type=int, default=2, help="LoRA rank h")
    p.add_argument("--variant", default="tocom", choices=["tocom", "shared", "no_inversion"])
    p.add_argument("--loss", default="kd", choices=["kd", "cls", "features"])
    p.add_argument("--scale", type=float, default=0.1, help="training scale s")
    p.add_argument("--teacher-side", default="source", choices=["source", "target"],
                   help="source: student at n with P_m->n, teacher at m (authors' code); target: Eq. 8 as printed")
    p.add_argument("--temperature", type=float, default=1.0)
    _train_args(p, epochs=10, batch_size=1024, lr=1e-3)
    p.add_argument("--out", required=True, help="plugin to write (.safetensors)")


@command("distill", "train a ToCom plugin by self-distillation on the pre-training data")
def _distill(args):
    from .engine.distill import distill
    from .models import resolve_model

    model, meta = resolve_model(args.backbone, args.checkpoint, args.pretrained)
    data = _dataset(args, model)
    distill(model, data, args.out, method=args.method, r_max=args.r_max, rank=args.rank, variant=args.variant,
            loss=args.loss, scale=args.scale, teacher_side=args.teacher_side, temperature=args.temperature,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs, seed=args.seed, device=args.device, amp=args.amp,
            workers=args.workers, progress=not args.quiet,
            record={"backbone": meta["backbone"], "dataset": args.dataset, "checkpoint": args.checkpoint})


_distill.configure = _configure_distill


def _configure_finetune(p):
    _model_args(p)
    _data_args(p, split="trainval")
    p.add_argument("--method", default="tome", choices=["tome", "evit", "idle"])
    p.add_argument("--r", type=int, default=0, help="source degree: compression active during training")
    p.add_argument("--recipe", default=None, choices=["cifar", "fgvc", "vtab"],
                   help="paper Table 13 defaults (explicit flags override them)")
    p.add_argument("--mode", default=None, choices=["full", "adaptformer", "linear"])
    p.add_argument("--adapter-dim", type=int, default=32)
    p.add_argument("--adapter-scale", type=float, default=0.1)
    for flag, kind in (("--epochs", int), ("--batch-size", int), ("--lr", float), ("--weight-decay", float),
                       ("--warmup-epochs", float), ("--label-smoothing", float), ("--drop-path", float),
                       ("--mixup", float), ("--cutmix", float)):
        p.add_argument(flag, type=kind, default=None)
    _run_args(p)
    p.add_argument("--out", required=True, help="model checkpoint to write (.safetensors)")


@command("finetune", "fine-tune on a downstream dataset at a source degree r (full or AdaptFormer)")
def _finetune(args):
    from .data import get_spec
    from .engine.finetune import RECIPES, train_classifier
    from .models import resolve_model

    spec = get_spec(args.dataset)
    recipe = dict(RECIPES.get(args.recipe or "", dict(epochs=30, batch_size=64, lr=1e-3 * 64 / 512, weight_decay=0.05,
                                                       warmup_epochs=0, label_smoothing=0.1, drop_path=0.0, mixup=0.0,
                                                       cutmix=0.0, mode="full")))
    for key in recipe:
        if getattr(args, key, None) is not None:
            recipe[key] = getattr(args, key)
    model, meta = resolve_model(args.backbone, args.checkpoint, args.pretrained, num_classes=spec.num_classes)
    data = _dataset(args, model)
    train_classifier(model, data, args.out, {"backbone": meta["backbone"], "dataset": args.dataset,
                                             "model_kwargs": meta.get("model_kwargs", {})},
                     method=args.method, r=args.r, adapter_dim=args.adapter_dim, adapter_scale=args.adapter_scale,
                     seed=args.seed, device=args.device, amp=args.amp, workers=args.workers,
                     progress=not args.quiet, **recipe)


_finetune.configure = _configure_finetune


def _eval_data_args(p, dataset_help):
    """Data flags of the evaluation steps, whose dataset defaults to the one the checkpoint was tuned on."""
    p.add_argument("--dataset", default=None, help=dataset_help)
    p.add_argument("--data-root", default=None, help="where the dataset lives (default: its documented path)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many samples (smoke runs)")


def _configure_evaluate(p):
    p.add_argument("--checkpoint", required=True, help="fine-tuned model (.safetensors from `tocom finetune`)")
    _eval_data_args(p, "default: the dataset the checkpoint was fine-tuned on")
    p.add_argument("--targets", nargs="+", type=int, required=True, metavar="R", help="target degrees")
    p.add_argument("--plugin", nargs="+", default=[], metavar="[LABEL=]PATH",
                   help="ToCom plugins (.safetensors), optionally labelled (e.g. shared=plugins/shared.safetensors); "
                        "the label fills the `variant` column (default: the plugin's variant)")
    p.add_argument("--scales", nargs="+", type=float, default=None, help="inference scales s (default: the paper's grid)")
    p.add_argument("--splits", nargs="+", default=["val", "test"])
    p.add_argument("--select-split", default="val", help="split that picks s ('none' to keep every s on every split)")
    p.add_argument("--batch-size", type=int, default=256)
    _run_args(p)
    p.add_argument("--out", required=True, help="tidy CSV to write")


@command("evaluate", "top-1 at every target r, with and without ToCom (one tidy CSV)")
def _evaluate(args):
    from .engine.evaluate import SCALES, cross_evaluate
    from .models import load_model
    from .plugin import ToCom

    model, meta = load_model(args.checkpoint)
    args.dataset = args.dataset or meta.get("dataset")
    plugins = {}
    for spec in args.plugin:
        label, sep, path = spec.partition("=")
        if not sep or "/" in label:          # no label given: the whole spec is the path
            label, path = "", spec
        plugin = ToCom.load(path)
        label = label or plugin.variant
        if label in plugins:
            raise TocomError(f"two plugins are labelled {label!r}; label them (LABEL=PATH) to tell them apart")
        plugins[label] = plugin
    splits = {s: _dataset(args, model, split=s) for s in args.splits}
    select = None if args.select_split == "none" else args.select_split
    meta = {**meta, "dataset": args.dataset}
    cross_evaluate(model, meta, splits, args.targets, plugins, args.scales or SCALES, select,
                   args.batch_size, args.seed, args.device, not args.quiet, args.out)


_evaluate.configure = _configure_evaluate


def _configure_transfer(p):
    p.add_argument("--model-b", required=True, help="M_0^B: fine-tuned on B at r = 0")
    p.add_argument("--high-a", required=True, help="M_16^A: fine-tuned on A at the high degree")
    p.add_argument("--low-a", required=True, help="M_0^A: fine-tuned on A at r = 0")
    _eval_data_args(p, "B (default: the dataset of --model-b)")
    p.add_argument("--split", default="test")
    p.add_argument("--target-r", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256)
    _run_args(p)
    p.add_argument("--out", required=True, help="CSV to write")


@command("transfer", "task-arithmetic check (Table 1): M_16^A - M_0^A + M_0^B evaluated on B")
def _transfer(args):
    from .engine.evaluate import transfer
    from .models import load_model, read_state_dict

    model, meta = load_model(args.model_b)
    args.dataset = args.dataset or meta.get("dataset")
    data = _dataset(args, model)
    transfer(model, {**meta, "dataset": args.dataset}, read_state_dict(args.high_a), read_state_dict(args.low_a),
             data, args.target_r, args.batch_size, args.seed, args.device, not args.quiet, args.out)


_transfer.configure = _configure_transfer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tocom", description="Token Compensator: compression-degree arithmetic for ViTs")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"tocom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        fn.configure(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "seed"):     # before any model is built: fresh heads and inits are seeded too
            from .engine.common import seed_everything

            seed_everything(args.seed)
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
