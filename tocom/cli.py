"""The `tocom` command: one subcommand per pipeline step, arguments mirroring the config keys.

Each subcommand parses its arguments and calls one engine function; the logic lives in the
engines. User errors (`TocomError`) and file-system failures (a full disk, a read-only folder) print
one line and exit 2, never a traceback.

Each command declares what it reads (the arguments naming its input files and folders) and what it
writes (`--out` and what goes beside it), and `main` checks both before any work: no output may be, lie
inside or hold an input (symlinks resolved), --out must be writable, and every flag's settings are valid.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from pathlib import Path

from . import __version__, layout
from .errors import TocomError
from .settings import (DATA_BENCH, DENSE_METHODS, SPLITS, UNCOMPRESSED, BenchSettings, DataBenchSettings,
                       DistillSettings, EvalMethodSettings, EvalSettings, FinetuneSettings, FlopsSettings,
                       MeasureSettings, PretrainSettings, RunSettings, SegmentSettings, SourceMethodSettings,
                       SourceSettings, TaskSettings, check_choosing_split, splits_overlap)

COMMANDS: dict[str, tuple] = {}


def _out(args) -> list[str]:
    """What most commands write: the file --out names."""
    return [args.out] if getattr(args, "out", None) else []


def _trained(args) -> list[str]:
    """A training step's output and what it writes beside it: its record, resume state and lock."""
    return [args.out, *(args.out + suffix for suffix in layout.TRAINING_SIBLINGS)]


def command(name: str, help: str, configure, reads: tuple[str, ...] = (), writes=_out, folder: bool = False):
    """Register `fn(args)` as subcommand `name`, with `configure(parser)` adding its arguments.

    reads: the arguments (dest names) that name the files or folders it reads; writes(args): the paths it
    creates or replaces; folder: --out names a folder rather than a file. `main` checks them before any work.
    """
    def register(fn):
        COMMANDS[name] = (fn, help)
        fn.configure, fn.reads, fn.writes, fn.writes_folder = configure, reads, writes, folder
        return fn
    return register


class _Distinct(argparse.Action):
    """A list flag whose values must differ (a repeated target would repeat its rows)."""

    def __call__(self, parser, namespace, values, option_string=None):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise argparse.ArgumentError(self, f"{', '.join(map(str, twice))} given more than once; give each once")
        setattr(namespace, self.dest, values)


def _configure_flops(p):
    FlopsSettings.add_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("flops", "analytic GFLOPs and per-layer token counts per r (Table 11: --head segmenter)",
         _configure_flops)
def _flops(args):
    from .compress import flops, patch
    from .models import create_backbone

    sweep = FlopsSettings.from_args(args)
    # the counted model (random weights: only its shapes count): the ViT, or a Segmenter on it (ADE20K's head)
    if sweep.head == "segmenter":
        from .segment import ADE20K_SETTING, TABLE11_ATTENTION_MATMULS, create_segmenter, segmenter_flops

        model = create_segmenter(sweep.model, n_cls=ADE20K_SETTING["n_cls"],
                                 img_size=sweep.img_size or ADE20K_SETTING["img_size"],
                                 decoder_depth=ADE20K_SETTING["decoder_depth"])
    else:
        model = create_backbone(sweep.model, **({"img_size": sweep.img_size} if sweep.img_size else {}))
    model = patch(model, sweep.method)
    _check_degree(getattr(model, "tocom_backbone", model), "--r", sweep.r)     # a Segmenter's: its encoder's
    rows = [segmenter_flops(model, r, attention_matmuls=TABLE11_ATTENTION_MATMULS) if sweep.head == "segmenter"
            else flops(model, r) for r in sweep.r]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    base = rows[0]["gflops"] if sweep.r[0] == 0 else None
    tokens = "mlp_tokens" if sweep.method in DENSE_METHODS else "attn_tokens"
    print(f"{'r':>3}  {'GFLOPs':>8}  {'ratio':>6}  tokens entering each {'FFN' if tokens == 'mlp_tokens' else 'block'}")
    for r, row in zip(sweep.r, rows):
        ratio = f"{base / row['gflops']:6.2f}" if base else "     -"
        print(f"{r:>3}  {row['gflops']:8.3f}  {ratio}  {row[tokens]}")


def _configure_bench(p):
    MeasureSettings.add_arguments(p)
    BenchSettings.add_arguments(p)
    DataBenchSettings.add_arguments(p)
    p.add_argument("--out", default=None, help="CSV to write")


@command("bench", "measured images/s per r, inference or training (Fig. 3); --mode data: data loading",
         _configure_bench)
def _bench(args):
    from .engine.bench import bench, bench_data, bench_plugin, gpu_demand, workers_needed

    m, s = MeasureSettings.from_args(args), BenchSettings.from_args(args)
    if m.mode == DATA_BENCH:      # the loader's images/s here, then each job's GPU demand and the workers it takes
        d = DataBenchSettings.from_args(args)
        df = bench_data(d, s, threads=m.threads, out=args.out)
        print(df[["transform", "workers", "images_per_s", "images_per_s_std"]].to_string(
            index=False, float_format=lambda v: f"{v:.1f}"))
        need = workers_needed(gpu_demand(m, d.gpu_tflops, d.gpu_utilisation, max(m.r)), df)
        print(f"\none GPU at {d.gpu_tflops:g} TFLOPS x {d.gpu_utilisation:g} utilisation, {m.model} ({m.method}):")
        print(need[["job", "transform", "gflops_per_image", "images_per_s", "images_per_s_per_worker",
                    "workers_per_gpu"]].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        return
    if m.plugin_check:
        if m.mode != "infer" or m.precision not in ("auto", "off"):
            raise TocomError("--plugin-check measures float32 inference; drop --mode train and --precision")
        df = bench_plugin(m.replace(precision="off"), s, out=args.out)
        cols = ["kind", "source_r", "target_r", "from_r", "k", "value", "reference", "ratio", "unit"]
    else:
        df = bench(m, s, out=args.out)
        cols = [c for c in ("r", "gflops", "images_per_s", "speedup", "flops_ratio") if c in df]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


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


@command("pretrain-backbone", "train a (tiny) ViT from scratch: the CPU stand-in for DeiT pretraining",
         _configure_pretrain, reads=("data_root",), writes=_trained)
def _pretrain(args):
    from .data import get_spec
    from .engine.finetune import train_classifier
    from .lineage import start
    from .models import create_backbone

    s, run = PretrainSettings.from_args(args), RunSettings.from_args(args)
    model = create_backbone(args.backbone, num_classes=get_spec(args.dataset).num_classes)
    data = _dataset(args, model, s.split, s.limit, run.seed)
    # a backbone pretrained here is the root of its lineage: its own digest identifies what is made from it
    train_classifier(model, data, args.out, {"backbone": args.backbone, "dataset": args.dataset, "stage": "pretrain"},
                     s, run, lineage={"role": "backbone", "init": start(None, args.backbone, False, run.seed)["backbone"]})


def _configure_distill(p, out_help="plugin to write (.safetensors)"):
    _model_args(p)
    _data_args(p)
    DistillSettings.add_arguments(p)
    RunSettings.add_arguments(p)
    if out_help.startswith("plugin"):
        p.add_argument("--teacher-outputs", default=None, metavar="PATH",
                       help="with --teacher once: the plain model's outputs on these images, computed for several "
                            "plugins by `tocom teacher-outputs` with the same settings")
    p.add_argument("--out", required=True, help=out_help)


def _distill_model(args):
    """The backbone and images of a distillation, checked: (settings, run settings, model, meta, dataset)."""
    from .compress import patch
    from .models import at_resolution, resolve_model

    s, run = DistillSettings.from_args(args), RunSettings.from_args(args)
    model, meta = resolve_model(args.backbone, args.checkpoint, args.pretrained)
    if s.img_size:
        model = at_resolution(model, meta["backbone"], s.img_size, **(meta.get("model_kwargs") or {}))
    patch(model, s.method)            # tome_ffn carries more degrees than the classification ladder
    _check_degree(model, "r_max", [s.r_max])
    return s, run, model, meta, _dataset(args, model, s.split, s.limit, run.seed)


@command("distill", "train a ToCom plugin by self-distillation on the pre-training data",
         _configure_distill, reads=("checkpoint", "data_root", "teacher_outputs"), writes=_trained)
def _distill(args):
    from .engine.distill import distill, read_teacher_outputs
    from .lineage import start

    s, run, model, meta, data = _distill_model(args)
    record = {"backbone": meta["backbone"], "dataset": args.dataset, "checkpoint": args.checkpoint}
    teacher = None
    if args.teacher_outputs:
        if s.teacher != "once" or s.loss == "cls":
            raise TocomError("--teacher-outputs is read with --teacher once and a loss with a teacher (kd, features)")
        teacher = read_teacher_outputs(args.teacher_outputs, data, s, run.seed, {"checkpoint": args.checkpoint})
        record["teacher_outputs"] = args.teacher_outputs
    distill(model, data, args.out, s, run, record=record, teacher=teacher,
            lineage=start(args.checkpoint, args.backbone or meta["backbone"], args.pretrained, run.seed))


@command("teacher-outputs", "the plain model's outputs at every degree on the distillation images, computed once "
                            "for the plugins that share them",
         lambda p: _configure_distill(p, "teacher outputs to write (.safetensors)"), reads=("checkpoint", "data_root"))
def _teacher_outputs(args):
    from .engine.distill import teacher_outputs

    s, run, model, meta, data = _distill_model(args)
    teacher_outputs(model, data, args.out, s, run, record={"backbone": meta["backbone"], "checkpoint": args.checkpoint})


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


def _finetuned(args) -> list[str]:
    return _trained(args) + ([args.out + layout.SCORE] if args.score_split else [])


@command("finetune", "fine-tune on a downstream dataset at a source degree r (full or AdaptFormer)",
         _configure_finetune, reads=("checkpoint", "chosen", "data_root"), writes=_finetuned)
def _finetune(args):
    from .data import get_spec
    from .engine.finetune import train_classifier
    from .lineage import file_entry, start
    from .models import load_model, resolve_model

    src, s, run = SourceMethodSettings.from_args(args), FinetuneSettings.from_args(args), RunSettings.from_args(args)
    if src.method == UNCOMPRESSED and src.r:
        raise TocomError(f"--method {UNCOMPRESSED} trains uncompressed, at --r 0; give a method for --r {src.r}")
    if args.score_split:     # a score chooses a search candidate: never on test
        check_choosing_split(args.score_split, (), "--score-split")
    spec = get_spec(args.dataset)
    model, meta = resolve_model(args.backbone, args.checkpoint, args.pretrained, num_classes=spec.num_classes)
    lineage = start(args.checkpoint, args.backbone or meta["backbone"], args.pretrained, run.seed)
    if args.chosen:
        from .search import read_chosen

        s = s.replace(**read_chosen(args.chosen, args.dataset, lineage["backbone"]))
        lineage["chosen"] = file_entry(args.chosen)
    if args.score_split and splits_overlap(s.split, args.score_split):
        raise TocomError(f"--score-split {args.score_split} overlaps the training split {s.split}; score on held-out data")
    _check_degree(model, "--r", [src.r])
    data = _dataset(args, model, s.split, s.limit, run.seed)
    train_classifier(model, data, args.out, {"backbone": meta["backbone"], "dataset": args.dataset,
                                             "model_kwargs": meta.get("model_kwargs", {})},
                     s, run, method=src.method, r=src.r, lineage=lineage)
    if args.score_split:
        from .engine.evaluate import score

        model, meta = load_model(args.out)
        score(model, meta, _dataset(args, model, args.score_split, None, run.seed), EvalSettings(), run,
              out=args.out + layout.SCORE, lineage={"backbone": lineage["backbone"], "model": file_entry(args.out)})


def _configure_select(p):
    p.add_argument("--candidates", nargs="+", required=True, metavar="JSON",
                   help="score files of the search candidates (from `tocom finetune --score-split val`)")
    p.add_argument("--out", required=True, help="JSON of the chosen settings")


@command("select", "pick the search candidate with the best held-out score (hyper-parameter search)",
         _configure_select, reads=("candidates",))
def _select(args):
    from .search import select

    print(json.dumps(select(args.candidates, args.out)["chosen"], sort_keys=True))


def _configure_link_chosen(p):
    p.add_argument("--chosen", required=True, metavar="JSON", help="the search result (`tocom select`)")
    p.add_argument("--candidates", nargs="+", required=True, metavar="MODEL",
                   help="the candidates' models (from `tocom finetune --score-split val`)")
    p.add_argument("--out", required=True, help="the link to write (a relative symlink to the chosen model)")


@command("link-chosen", "link the chosen search candidate's model: it is what a fine-tune on train with the "
                        "chosen settings would retrain",
         _configure_link_chosen)     # reads nothing it could overwrite: it only replaces its own link
def _link_chosen(args):
    from .search import link_chosen

    print(f"{args.out} -> {link_chosen(args.chosen, args.candidates, args.out)}")


def _plugin_spec(spec: str) -> tuple[str, str]:
    """[LABEL=]PATH -> (label or "", path)."""
    label, sep, path = spec.partition("=")
    return ("", spec) if not sep or "/" in label else (label, path)      # no label given: the whole spec is the path


# ---- what the evaluation commands check and record (tocom/lineage.py; docs/lineage.md) --------------------------
def _eval_args(p, out_help="tidy CSV to write (its record: OUT.json)"):
    """What the evaluation commands end with: the evaluation and run settings, the overrides and --out."""
    EvalSettings.add_arguments(p)
    RunSettings.add_arguments(p)
    p.add_argument("--allow-other-backbone", action="store_true",
                   help="go on although the inputs come from different pretrained backbones (a warning line; the "
                        "output's record lists the override)")
    p.add_argument("--allow-other-dataset", action="store_true",
                   help="evaluate on another dataset than the model was fine-tuned on, on purpose (no warning; "
                        "the output's record lists the override)")
    p.add_argument("--out", required=True, help=out_help)


def _seed_of(args, run: RunSettings, meta: dict, path) -> RunSettings:
    """The seed the model was trained with (its header) names the rows, unless --seed says otherwise (one warning)."""
    from .lineage import warn

    recorded = meta.get("seed")
    if recorded is None:
        return run
    if not hasattr(args, "seed"):       # RunSettings' flags default to SUPPRESS: absent means not given
        return run.replace(seed=recorded)
    if run.seed != recorded:
        warn(f"{path} was trained with seed {recorded}; evaluating it and recording seed {run.seed}, as --seed says")
    return run


def _dataset_of(args, meta: dict, path, allowed: list) -> None:
    """--dataset defaults to the one the model was fine-tuned on; another one with the same class count is said
    (one warning line) unless --allow-other-dataset names the change (then recorded). Another class count is
    refused by the evaluator's class check."""
    from .data import get_spec
    from .lineage import DATASET_FLAG, warn

    trained = meta.get("dataset")
    if not args.dataset:
        args.dataset = trained
    elif trained and args.dataset != trained:
        if args.allow_other_dataset:
            allowed.append("other_dataset")
        elif get_spec(args.dataset).num_classes == meta.get("num_classes"):
            warn(f"{path} was fine-tuned on {trained}; evaluating it on {args.dataset} (pass {DATASET_FLAG} "
                 "if you mean it)")


def _model_lineage(args, meta: dict, what: str, allowed: list) -> tuple[dict, dict | None, dict]:
    """(--plugin's [LABEL=]PATH specs as {label: plugin}, the --checkpoint model's backbone, their lineage). The label
    fills the `variant` column (default: the plugin's); each plugin was distilled on the model's pretrained backbone
    (else refused, or allowed and recorded)."""
    from .lineage import backbone_of, check_backbones, file_entry
    from .plugin import ToCom

    plugins, records = {}, {}
    for spec in args.plugin:
        label, path = _plugin_spec(spec)
        plugin = ToCom.load(path)
        label = label or plugin.variant
        if label in plugins:
            raise TocomError(f"two plugins are labelled {label!r}; label them (LABEL=PATH) to tell them apart")
        plugins[label] = plugin
    identity = backbone_of(args.checkpoint, meta)
    model = {**file_entry(args.checkpoint), "backbone": identity}
    for label, plugin in plugins.items():
        theirs = backbone_of(plugin.path, plugin.extra)
        if check_backbones(f"{what} {args.checkpoint}", identity, f"plugin {label} ({plugin.path})", theirs,
                           args.allow_other_backbone):
            allowed.append("other_backbone")
        records[label] = {**file_entry(plugin.path), "backbone": theirs}
    return plugins, identity, {"model": model, "plugins": records}


def _record(args, command: str, run: RunSettings, lineage: dict, data: dict, allowed: list) -> None:
    """`<out>.json`: what the CSV was made from (content digests), with the overrides the user asked for."""
    from .lineage import data_entry, write_record

    write_record(args.out, {"command": command, "seed": run.seed,
                            "lineage": {**lineage, "data": {name: data_entry(ds) for name, ds in data.items()},
                                        "allowed": sorted(set(allowed))}})


def _plugin_targets(specs: list[str]) -> dict[str, list[int]]:
    """LABEL=R[,R...] specs -> {label: [r, ...]}."""
    out = {}
    for spec in specs:
        label, sep, rs = spec.partition("=")
        try:
            out[label] = [int(r) for r in rs.split(",")]
        except ValueError:
            sep = ""
        if not sep or not label:
            raise TocomError(f"--plugin-targets {spec!r}: write LABEL=R[,R...], e.g. shared=2,4")
    return out


def _configure_evaluate(p):
    p.add_argument("--checkpoint", required=True, help="fine-tuned model (.safetensors from `tocom finetune`)")
    p.add_argument("--select-checkpoint", default=None,
                   help="companion model (same source r, trained without the selection split) that chooses s; "
                        "default: the evaluated model, if the selection split is held out from its training")
    _data_args(p, required=False, dataset_help="default: the dataset the checkpoint was fine-tuned on")
    EvalMethodSettings.add_arguments(p)
    p.add_argument("--targets", nargs="+", type=int, required=True, metavar="R", action=_Distinct,
                   help="target degrees")
    p.add_argument("--plugin", nargs="+", default=[], metavar="[LABEL=]PATH",
                   help="ToCom plugins (.safetensors), optionally labelled (e.g. shared=plugins/shared.safetensors); "
                        "the label fills the `variant` column (default: the plugin's variant)")
    p.add_argument("--plugin-targets", nargs="+", default=[], metavar="LABEL=R[,R...]",
                   help="evaluate a plugin at only these of --targets (e.g. shared=2,4; default: every target)")
    _eval_args(p)


@command("evaluate", "top-1 at every target r, with and without ToCom (one tidy CSV)",
         _configure_evaluate, reads=("checkpoint", "select_checkpoint", "plugin", "data_root"))
def _evaluate(args):
    from .engine.evaluate import cross_evaluate
    from .lineage import backbone_of, check_backbones, file_entry
    from .models import load_model

    s, run, method = EvalSettings.from_args(args), RunSettings.from_args(args), EvalMethodSettings.from_args(args).method
    plugin_targets = _plugin_targets(args.plugin_targets)
    model, meta = load_model(args.checkpoint)
    run, allowed = _seed_of(args, run, meta, args.checkpoint), []
    _dataset_of(args, meta, args.checkpoint, allowed)
    _check_degree(model, "target r", args.targets)
    plugins, identity, lineage = _model_lineage(args, meta, "the model", allowed)
    selector = None
    if args.select_checkpoint:
        sel_model, sel_meta = load_model(args.select_checkpoint)
        if sel_meta.get("dataset") != meta.get("dataset"):
            raise TocomError(f"--select-checkpoint {args.select_checkpoint} was fine-tuned on {sel_meta.get('dataset')}, "
                             f"the evaluated model on {meta.get('dataset')}; choose s with a companion fine-tuned on "
                             "the same dataset")
        theirs = backbone_of(args.select_checkpoint, sel_meta)
        check_backbones(f"the model {args.checkpoint}", identity, f"--select-checkpoint {args.select_checkpoint}", theirs)
        lineage["selector"] = {**file_entry(args.select_checkpoint), "backbone": theirs}
        selector = (sel_model, sel_meta, _dataset(args, sel_model, s.select_split, s.limit, run.seed))
    splits = {name: _dataset(args, model, name, s.limit, run.seed) for name in s.splits
              if not (selector and name == s.select_split)}
    cross_evaluate(model, {**meta, "dataset": args.dataset}, splits, args.targets, plugins, s, run,
                   selector=selector, out=args.out, method=method, plugin_targets=plugin_targets)
    _record(args, "evaluate", run, lineage, {**splits, **({s.select_split: selector[2]} if selector else {})}, allowed)


def _configure_transfer(p):
    p.add_argument("--model-b", required=True, help="M_0^B: fine-tuned on B at r = 0")
    p.add_argument("--high-a", required=True, help="M_16^A: fine-tuned on A at the high degree")
    p.add_argument("--low-a", required=True, help="M_0^A: fine-tuned on A at r = 0")
    _data_args(p, required=False, dataset_help="B (default: the dataset of --model-b)")
    p.add_argument("--split", default="test", choices=SPLITS, help="split of B to score")
    p.add_argument("--target-r", type=int, required=True, help="degree the models run at (paper: 16)")
    EvalMethodSettings.add_arguments(p)
    _eval_args(p, "CSV to write (its record: OUT.json)")


def _check_transfer(args, meta_b: dict, high: dict, low: dict, allowed: list) -> dict:
    """Everything the row "M{high}_A - M0_A + M0_B" claims, before any work: three different models (not plugins:
    `read_meta` refuses those), M_0^A and M_0^B at r = 0 and M_high^A above it, A's two on one dataset, all three
    from B's pretrained backbone. Returns their lineage."""
    from .lineage import backbone_of, check_backbones, file_entry

    models = {"--high-a": (args.high_a, high), "--low-a": (args.low_a, low), "--model-b": (args.model_b, meta_b)}
    entries = {flag: file_entry(path) for flag, (path, _) in models.items()}
    if entries["--high-a"]["sha256"] == entries["--low-a"]["sha256"]:
        raise TocomError(f"--high-a {args.high_a} and --low-a {args.low_a} are the same model; pass M_high^A "
                         "(fine-tuned on A at the high degree) and M_0^A (fine-tuned on A at r = 0)")
    for flag, name in (("--low-a", "M_0^A"), ("--model-b", "M_0^B")):
        r = models[flag][1].get("source_r", 0)
        if r != 0:
            raise TocomError(f"{flag} {models[flag][0]} was fine-tuned at r={r}, but the row uses it as {name}; "
                             "pass the model fine-tuned at r = 0")
    if not high.get("source_r"):
        raise TocomError(f"--high-a {args.high_a} was fine-tuned at r={high.get('source_r')}, not above 0; pass "
                         "M_high^A, fine-tuned on A at the high degree (the row is named after it)")
    if high.get("dataset") != low.get("dataset"):
        raise TocomError(f"--high-a {args.high_a} was fine-tuned on {high.get('dataset')} but --low-a {args.low_a} on "
                         f"{low.get('dataset')}; A's two models are fine-tuned on the same dataset A")
    identity = {flag: backbone_of(path, m) for flag, (path, m) in models.items()}
    for first, second in (("--high-a", "--low-a"), ("--low-a", "--model-b")):
        if check_backbones(f"{first} {models[first][0]}", identity[first], f"{second} {models[second][0]}",
                           identity[second], args.allow_other_backbone):
            allowed.append("other_backbone")
    return {flag.lstrip("-").replace("-", "_"): {**entries[flag], "backbone": identity[flag],
                                                 "source_r": models[flag][1].get("source_r")} for flag in models}


@command("transfer", "task-arithmetic check (Table 1): M_16^A - M_0^A + M_0^B evaluated on B",
         _configure_transfer, reads=("model_b", "high_a", "low_a", "data_root"))
def _transfer(args):
    from .engine.evaluate import transfer
    from .models import load_model, read_meta, read_state_dict

    s, run, method = EvalSettings.from_args(args), RunSettings.from_args(args), EvalMethodSettings.from_args(args).method
    model, meta = load_model(args.model_b)
    run, allowed = _seed_of(args, run, meta, args.model_b), []
    _dataset_of(args, meta, args.model_b, allowed)
    _check_degree(model, "--target-r", [args.target_r])
    high, low = read_meta(args.high_a), read_meta(args.low_a)
    lineage = _check_transfer(args, meta, high, low, allowed)
    data = _dataset(args, model, args.split, s.limit, run.seed)
    transfer(model, {**meta, "dataset": args.dataset}, read_state_dict(args.high_a), read_state_dict(args.low_a),
             data, args.target_r, s, run, out=args.out, method=method, high_r=high["source_r"])
    _record(args, "transfer", run, lineage, {args.split: data}, allowed)


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


@command("segment-finetune", "fine-tune a Segmenter on a segmentation dataset at a source r, tome_ffn active (Table 11)",
         _configure_segment_finetune, reads=("checkpoint", "data_root"), writes=_trained)
def _segment_finetune(args):
    from .data import get_spec
    from .engine.segment import build_segmenter, segment_finetune
    from .lineage import start
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
                     record={"dataset": args.dataset, "checkpoint": args.checkpoint},
                     lineage=start(args.checkpoint, backbone, args.pretrained, run.seed))


def _configure_segment_evaluate(p):
    p.add_argument("--checkpoint", required=True, help="Segmenter from `tocom segment-finetune`")
    _data_args(p, required=False, dataset_help="default: the dataset the Segmenter was fine-tuned on")
    p.add_argument("--targets", nargs="+", type=int, required=True, metavar="R", action=_Distinct,
                   help="target degrees")
    p.add_argument("--plugin", nargs="+", default=[], metavar="[LABEL=]PATH",
                   help="ToCom plugins distilled with --method tome_ffn on the encoder's backbone")
    _eval_args(p)


@command("segment-evaluate", "mIoU at every target r, with and without ToCom (s chosen on val; one tidy CSV)",
         _configure_segment_evaluate, reads=("checkpoint", "plugin", "data_root"))
def _segment_evaluate(args):
    from .engine.segment import load_segmenter, segment_evaluate

    s, run = EvalSettings.from_args(args), RunSettings.from_args(args)
    model, meta = load_segmenter(args.checkpoint)
    run, allowed = _seed_of(args, run, meta, args.checkpoint), []
    _dataset_of(args, meta, args.checkpoint, allowed)
    plugins, _, lineage = _model_lineage(args, meta, "the Segmenter", allowed)
    splits = {name: _seg_dataset(args, name, s.limit, run.seed, meta["img_size"]) for name in s.splits}
    segment_evaluate(model, {**meta, "dataset": args.dataset}, splits, args.targets, plugins, s, run, out=args.out)
    _record(args, "segment-evaluate", run, lineage, splits, allowed)


# ---- generated downstream tasks (the CPU configs' fmnist_vtab/*) --------------------------------------
def _configure_make_tasks(p):
    p.add_argument("--out", required=True, help="folder to write into: one VTAB-1k task folder per task")
    p.add_argument("--fashion-root", default=argparse.SUPPRESS,
                   help="folder with Fashion-MNIST's t10k IDX files (default: where the Debian package "
                        "dataset-fashion-mnist puts them)")
    p.add_argument("--tasks", nargs="+", default=argparse.SUPPRESS, metavar="TASK",
                   help="tasks to write, e.g. count or fmnist_vtab/count (default: all; tocom/data/fmnist_tasks.py)")
    TaskSettings.add_arguments(p)


def _task_folders(args) -> list[str]:
    from .data.fmnist_tasks import TASKS, task_names

    return [os.path.join(args.out, name) for name in task_names(getattr(args, "tasks", list(TASKS)))]


@command("make-tasks", "write the fmnist_vtab/* downstream tasks (VTAB-1k layout) from Fashion-MNIST's t10k images",
         _configure_make_tasks, reads=("fashion_root",), writes=_task_folders, folder=True)
def _make_tasks(args):
    from .data.fmnist_tasks import write_tasks

    given = {k: getattr(args, k) for k in ("fashion_root", "tasks") if hasattr(args, k)}
    write_tasks(args.out, TaskSettings.from_args(args), log=print, **given)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag and pointing at --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tocom", description="Token Compensator: compression-degree arithmetic for ViTs")
    parser.add_argument("--version", action="version", version=f"tocom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name, (fn, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        fn.configure(p)
        p.set_defaults(func=fn)
    return parser


# ---- checks before any work -----------------------------------------------------------------------
def _inputs(args) -> list[tuple[str, str]]:
    """(flag, path) of every input file or folder the command was given (its `reads`)."""
    return [("--" + dest.replace("_", "-"), _plugin_spec(v)[1] if dest == "plugin" else v)
            for dest in args.func.reads for value in [getattr(args, dest, None)]
            for v in (value if isinstance(value, list) else [value]) if v]


def _within(path: str, folder: str) -> bool:
    """`path` is `folder` or lies inside it, symlinks resolved (or they are one file under two names)."""
    a, b = os.path.realpath(path), os.path.realpath(folder)
    if a == b or a.startswith(b.rstrip(os.sep) + os.sep):
        return True
    try:
        return os.path.samefile(path, folder)
    except OSError:
        return False


def check_files(args) -> None:
    """Before any work: no output of the command is, or lies inside, one of its inputs (or holds one), and
    --out can be written (not a folder where a file goes, its folder writable)."""
    outputs, out = args.func.writes(args), getattr(args, "out", None)
    for output in outputs:
        written = f"--out {out}" if output == out else f"--out {out} writes {output}, which"
        for flag, path in _inputs(args):
            how = {(True, True): "is", (True, False): "lies inside", (False, True): "holds"}.get(
                (_within(output, path), _within(path, output)))
            if how:
                raise TocomError(f"{written} {how} the input {flag} {path}: the output would overwrite what it is "
                                 "made from; write it elsewhere")
    if not out:
        return
    path, folder = Path(out), args.func.writes_folder
    if folder and path.exists() and not path.is_dir():
        raise TocomError(f"--out {out} is a file; name a folder to write into")
    if not folder and path.is_dir():
        raise TocomError(f"--out {out} is a folder; name the file to write (e.g. {path / 'NAME'})")
    where = path if folder else path.parent
    while not os.path.lexists(where) and where != where.parent:     # the folder that exists and gets the output
        where = where.parent
    if not where.is_dir():
        raise TocomError(f"--out {out}: {where} is a file, so no folder can be made there; write elsewhere")
    if not os.access(where, os.W_OK | os.X_OK):
        raise TocomError(f"--out {out}: the folder {where} is not writable (read-only or not yours); make it "
                         "writable or write elsewhere")


def check_device(args) -> None:
    """A --device that names no usable device is one line, before any model is built."""
    device = getattr(args, "device", None)
    if not device or device == "cpu":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise TocomError(f"--device {device!r} is not a torch device; use cpu or cuda (cuda:N for one GPU)") from None
    if dev.type != "cuda":
        raise TocomError(f"--device {device}: tocom runs on cpu or cuda; use one of them")
    if not torch.cuda.is_available():
        raise TocomError(f"--device {device}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                         "use --device cpu, or run on a GPU node")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise TocomError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) are visible (cuda:0.."
                         f"{torch.cuda.device_count() - 1})")


# ---- one line per error ------------------------------------------------------------------------------
def _one_line(text: str) -> str:
    """The message as one line. A data-loading worker's error reaches the main process as its whole
    traceback ("Caught TocomError in DataLoader worker process 0. Original Traceback ... TocomError: msg",
    torch's ExceptionWrapper): keep the worker's own message."""
    if "\nOriginal Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last) + " (in a data-loading worker)"
    return " ".join(text.split())


_OS_FIXES = {errno.ENOSPC: "free some space or write elsewhere, then rerun",
             errno.EDQUOT: "free some of your quota or write elsewhere, then rerun",
             errno.EROFS: "write to a writable file system", errno.EACCES: "fix its permissions or use another path",
             errno.EPERM: "fix its permissions or use another path"}


def _os_message(e: OSError) -> str:
    what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else _one_line(str(e))
    return f"{what}; {_OS_FIXES.get(e.errno, 'check the path and rerun')}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for settings in getattr(args, "settings_classes", ()):   # every flag's value, before torch is imported
            settings.from_args(args)
        check_files(args)
        check_device(args)
        if args.command not in ("select", "link-chosen"):   # before any model is built: fresh heads and inits are seeded too
            seed = RunSettings.from_args(args).seed       # checked before torch is imported
            from .engine.common import seed_everything

            seed_everything(seed)
        args.func(args)
    except (TocomError, OSError) as e:    # OSError: the file system refused (full, read-only, permissions), not a bug
        message = _os_message(e) if isinstance(e, OSError) else _one_line(str(e))
        print(f"tocom {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tocom {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
