"""Every stage's settings: one dataclass each, whose field defaults are the only defaults.

Why: a hyper-parameter used to cross four layers (config -> a flag built in a rule -> an argparse
default -> a function default) and Table 13 was written three times. Now a setting is one field:

    config/*.yaml --Grid--> PretrainSettings/DistillSettings/FinetuneSettings/EvalSettings
        --rule: settings.cli_args()--> `tocom <step> --field value ...`
        --CLI: parser built from the fields, Settings.from_args()--> the engine
        --> the output's metadata (asdict), which the report reads.

Adding a hyper-parameter means one field here: its flag, its config key's schema (type, choices,
range, meaning, default: `Settings.json_schema`, filled into workflow/schemas/config.schema.yaml by
`config_schema`) and its line in config/README.md (workflow/scripts/config_readme.py) follow from it.
Values are checked in `__post_init__`, so a bad value fails where it is written (config at start-up,
CLI at parse time) with one line. The command-line-only knobs (`--r`, `--method`, bench's `--threads`...)
are small dataclasses of their own at the end. Torch-free: the Snakefile imports this in every job.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import shlex
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from .errors import TocomError

METHODS = ("tome", "evit", "idle")   # token compression; the first (ToMe, the paper's main method) is the default
UNCOMPRESSED = "none"              # a model fine-tuned at r = 0: nothing compressed, so no method applies
DENSE_METHODS = ("tome_ffn",)      # dense prediction (Table 11): merged before each FFN, unmerged after
VARIANTS = ("tocom", "shared", "no_inversion")
LOSSES = ("kd", "cls", "features")
TEACHER_SIDES = ("source", "target")
TEACHER_MODES = ("live", "once")
MODES = ("full", "adaptformer", "linear")
TRAIN_SPLITS = ("train", "trainval")
SPLITS = ("train", "val", "trainval", "test")
BENCH_MODES = ("infer", "train")
FLOPS_HEADS = ("classifier", "segmenter")   # what `tocom flops` counts on top of the ViT
DATA_BENCH = "data"                # `tocom bench --mode data`: data loading, not a workflow bench job
PRECISIONS = ("auto", "fp16", "bf16", "off")   # autocast dtype; auto: bf16 where the GPU has it, else fp16; off on CPU
PLUGIN_CHECK = "plugin"            # a bench job of the workflow: `tocom bench --plugin-check` (inference)
BENCH_JOBS = (*BENCH_MODES, PLUGIN_CHECK)
SEARCHABLE = ("lr", "adapter_scale")   # the FinetuneSettings fields a search varies (SearchSettings, in this order)
#: s, the plugin's scale (Sec. 5.1): what a plugin trains at, what the inference grid is written for, and
#: what `compensate` applies unless told otherwise.
SCALE = 0.1

#: Which official items each logical split holds (the data layer guarantees train and val are
#: disjoint and trainval = train + val). Used to refuse selecting anything on training images.
SPLIT_ITEMS = {"train": {"train"}, "val": {"val"}, "trainval": {"train", "val"}, "test": {"test"}}


def splits_overlap(a: str, b: str) -> bool:
    return bool(SPLIT_ITEMS[a] & SPLIT_ITEMS[b])


#: The largest seed: numpy's legacy seeding takes 32 bits, and every seed derived from it (seed x 1000 + epoch,
#: engine/common.py) must stay a 64-bit integer for torch.
MAX_SEED = 2**32 - 1


#: The split nothing is ever chosen on (s, a learning rate, an adapter scale): it only reports.
REPORT_ONLY = "test"


def check_choosing_split(choosing: str, reported=(), name: str = "the selection split") -> None:
    """What chooses (s, a search candidate) is never the test split and shares no image with a split the choice
    is reported on: else the reported number is the best of several looks at the same images."""
    if choosing == REPORT_ONLY:
        raise TocomError(f"{name} is {REPORT_ONLY!r}: nothing is ever chosen on the {REPORT_ONLY} split; choose on "
                         "'val' (held out from training) and report on test")
    shared = [r for r in reported if r != choosing and splits_overlap(choosing, r)]
    if shared:
        raise TocomError(f"{name} {choosing!r} overlaps the reported split {shared[0]!r}: the choice would be "
                         f"reported on the images that made it; report on splits disjoint from {choosing!r}")


def setting(default, help: str, *, choices: tuple | None = None, check: str | None = None,
            maximum: int | float | None = None):
    """A field with its help text and its check: positive, nonneg, unit (0..1) or a choice; `maximum` caps it.
    A list's values must differ (a repeated value would repeat a run or a row)."""
    kw = {"default_factory": lambda: default} if isinstance(default, (list, dict)) else {"default": default}
    return field(metadata={"help": help, "choices": choices, "check": check, "maximum": maximum}, **kw)


def _base_type(tp):
    """(element type, is_sequence, optional) of a field annotation."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
    if optional:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    seq = typing.get_origin(tp) in (tuple, list)
    return (typing.get_args(tp)[0] if seq else tp), seq, optional


@dataclass(frozen=True)
class Settings:
    """Base of every stage's settings: checking, CLI flags, config mapping, fingerprint."""

    stage = "settings"

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            tp, seq, optional = _base_type(hints[f.name])
            if value is None:
                if not optional:
                    raise TocomError(f"{self.stage}.{f.name} must be set")
                continue
            if seq and not isinstance(value, (list, tuple)):
                raise TocomError(f"{self.stage}.{f.name} must be a list, got {value!r}")
            items = [_coerce(self.stage, f.name, v, tp) for v in (value if seq else [value])]
            object.__setattr__(self, f.name, tuple(items) if seq else items[0])
            if not items:
                raise TocomError(f"{self.stage}.{f.name} needs at least one value")
            repeated = sorted({v for v in items if items.count(v) > 1}, key=str)
            if repeated:
                raise TocomError(f"{self.stage}.{f.name} lists {', '.join(map(_fmt, repeated))} more than once; "
                                 "give each value once")
            for v in items:
                _check(self.stage, f, v)

    # ---- config ----------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: dict, where: str | None = None):
        """Build from a config mapping; an unknown key is an error (a typo must not be ignored)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TocomError(f"{where or cls.stage}: unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(names))}")
        return cls(**values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def asdict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    # ---- command line ----------------------------------------------------------------------------
    def cli_args(self) -> str:
        """The flags that rebuild exactly these settings through the CLI (every field, explicitly)."""
        parts = []
        for f in fields(self):
            value, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                parts.append(flag if value else "--no-" + flag[2:])
            else:
                values = value if isinstance(value, tuple) else ["none" if value is None else value]
                parts.append(" ".join([flag, *(shlex.quote(_fmt(v)) for v in values)]))
        return " ".join(parts)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field; a flag left out keeps the field's default (argparse holds no default). The parsed
        arguments list the settings classes they hold (`settings_classes`), so a command checks every value
        before it starts."""
        hints = typing.get_type_hints(cls)
        parser.set_defaults(settings_classes=(*(parser.get_default("settings_classes") or ()), cls))
        group = parser.add_argument_group(f"{cls.stage} settings (defaults: tocom/settings.py {cls.__name__})")
        for f in fields(cls):
            tp, seq, optional = _base_type(hints[f.name])
            choices = f.metadata["choices"]
            help = f"{f.metadata['help']} ({f'one of {_choices(choices)}; ' if choices else ''}default: {_default(f)})"
            how = (dict(action=argparse.BooleanOptionalAction) if tp is bool else dict(
                type=_parser(tp, optional), nargs="+" if seq else None, metavar=f.name.upper(), choices=choices))
            group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS, help=help,
                               **how)

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    # ---- config schema ---------------------------------------------------------------------------
    @classmethod
    def json_schema(cls) -> dict:
        """These settings as a config mapping's JSON schema: per field its type (nullable when Optional),
        choices (enum), check (minimum/maximum), help (description) and default. Open: a use closes it
        with `unevaluatedProperties: false`, so it may add keys of its own (e.g. distill's `dataset`)."""
        hints = typing.get_type_hints(cls)
        return {"type": "object", "description": " ".join(cls.__doc__.split()),
                "properties": {f.name: _field_schema(f, hints[f.name]) for f in fields(cls)}}

    def fingerprint(self) -> dict:
        """What shapes a result (every field here does); stored with resume state and outputs."""
        return {"stage": self.stage, **self.asdict()}


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}
_RANGES = {("positive", int): {"minimum": 1}, ("positive", float): {"exclusiveMinimum": 0},
           ("nonneg", int): {"minimum": 0}, ("nonneg", float): {"minimum": 0},
           ("unit", float): {"minimum": 0, "maximum": 1}}


def _default(f):
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return list(value) if isinstance(value, tuple) else value


def _field_schema(f, annotation) -> dict:
    tp, seq, optional = _base_type(annotation)
    schema = {"type": _JSON_TYPES[tp], **_RANGES.get((f.metadata["check"], tp), {})}
    if f.metadata["maximum"] is not None:
        schema["maximum"] = f.metadata["maximum"]
    if f.metadata["choices"]:
        schema["enum"] = list(f.metadata["choices"])
    if seq:
        schema = {"type": "array", "items": schema, "minItems": 1, "uniqueItems": True}
    if optional:
        schema["type"] = [schema["type"], "null"]
    return {**schema, "description": f.metadata["help"], "default": _default(f)}


def _subclasses(cls) -> list:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def config_schema(path: str | Path) -> dict:
    """The config schema: the hand-written YAML at `path` (top-level keys, studies, report, resources...)
    with its `$defs` given one entry per settings dataclass (`#/$defs/DistillSettings`, ...), the method names,
    bench jobs and GPUs (`#/$defs/METHODS`, `#/$defs/BENCH_JOBS`, `#/$defs/GPU_MODELS`: tocom/gpus.py), so that no
    field, choice or range is written twice."""
    import yaml

    schema = yaml.safe_load(Path(path).read_text())
    from .gpus import GPUS

    schema.setdefault("$defs", {}).update({c.__name__: c.json_schema() for c in _subclasses(Settings)},
                                          METHODS={"type": "string", "enum": list(METHODS)},
                                          GPU_MODELS={"type": "string", "enum": list(GPUS)},
                                          BENCH_JOBS={"type": "string", "enum": list(BENCH_JOBS)})
    return schema


def _choices(choices) -> str:
    return ", ".join("none" if c is None else str(c) for c in choices)


def _fmt(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def _parser(tp, optional: bool):
    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {tp.__name__}") from None
    parse.__name__ = tp.__name__
    return parse


def _coerce(stage, name, value, tp):
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):      # YAML reads 1e-3 (no dot) as a string
            return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise TocomError(f"{stage}.{name} must be {tp.__name__}, got {value!r}")
    return value


_CHECKS = {"positive": (lambda v: v > 0, "> 0"), "nonneg": (lambda v: v >= 0, ">= 0"),
           "unit": (lambda v: 0 <= v <= 1, "within [0, 1]")}


def _check(stage, f, v) -> None:
    choices, check = f.metadata["choices"], f.metadata["check"]
    if choices and v not in choices:
        raise TocomError(f"{stage}.{f.name} must be one of {', '.join(map(str, choices))}, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise TocomError(f"{stage}.{f.name} must be a finite number, got {v!r}")
    if check and not _CHECKS[check][0](v):
        raise TocomError(f"{stage}.{f.name} must be {_CHECKS[check][1]}, got {v!r}")
    if f.metadata["maximum"] is not None and v > f.metadata["maximum"]:
        raise TocomError(f"{stage}.{f.name} must be <= {f.metadata['maximum']}, got {v!r}")


# ---- the stages ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSettings(Settings):
    """How a step runs, not what it computes: `seed` and `precision` change results, `workers` does not (every
    training item is augmented from its own seed, in whichever process loads it)."""
    stage = "run"
    seed: int = setting(0, "random seed (data order, initialisation, sampled degrees)", check="nonneg",
                        maximum=MAX_SEED)
    device: str | None = setting(None, "cpu or cuda (none: cuda when available)", choices=("cpu", "cuda", None))
    precision: str = setting("auto", "autocast dtype: fp16 (with a gradient scaler), bf16, or off (float32); auto: "
                             "bf16 on GPUs that support it, fp16 on older ones (V100), off on CPU", choices=PRECISIONS)
    workers: int = setting(0, "data-loading worker processes per DDP rank (persistent; 0: in the main process)",
                           check="nonneg")
    quiet: bool = setting(False, "no progress bars (one log line per epoch stays)")


@dataclass(frozen=True)
class TrainSettings(Settings):
    """What every training step shares: data, AdamW with warm-up + cosine."""
    split: str = setting("train", "training split", choices=TRAIN_SPLITS)
    limit: int | None = setting(None, "use at most this many training images (smoke runs)", check="positive")
    epochs: int = setting(30, "training epochs", check="positive")
    batch_size: int = setting(64, "global batch size (split across DDP ranks)", check="positive")
    lr: float = setting(1e-3, "learning rate (a base lr x batch/512 when scale_lr)", check="positive")
    scale_lr: bool = setting(False, "DeiT's rule: the learning rate is lr x batch_size / 512")
    min_lr: float = setting(1e-5, "cosine schedule floor (DeiT's default)", check="nonneg")
    weight_decay: float = setting(0.05, "AdamW weight decay", check="nonneg")
    warmup_epochs: float = setting(0.0, "linear warm-up epochs", check="nonneg")
    repeated_aug: int = setting(1, "DeiT's repeated augmentation: each drawn image appears this many times per epoch, "
                                "differently augmented, the epoch keeping its length (3 in DeiT and the authors' "
                                "ImageNet/CIFAR/FGVC runs; 1: off)", check="positive")

    def __post_init__(self):
        super().__post_init__()
        if self.min_lr > self.effective_lr:     # the cosine would climb from lr to min_lr
            scaled = f" (lr x batch_size / 512 = {self.effective_lr:g})" if self.scale_lr else ""
            raise TocomError(f"{self.stage}.min_lr {self.min_lr:g} is above the learning rate {self.lr:g}{scaled}; "
                             "the schedule decays from the learning rate to min_lr: lower min_lr")

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / 512 if self.scale_lr else self.lr


@dataclass(frozen=True)
class PretrainSettings(TrainSettings):
    """Training the tiny backbone from scratch (the CPU stand-in for DeiT's ImageNet pretraining)."""
    stage = "pretrain"
    label_smoothing: float = setting(0.1, "label smoothing", check="unit")
    # Fixed, not settings: the stand-in backbone trains every weight plainly (as every config has), and a
    # field would change every backbone's recorded settings. `train_classifier` reads them like
    # FinetuneSettings' fields.
    mode: ClassVar[str] = "full"
    drop_path: ClassVar[float] = 0.0
    mixup: ClassVar[float] = 0.0
    cutmix: ClassVar[float] = 0.0


@dataclass(frozen=True)
class DistillSettings(TrainSettings):
    """ToCom self-distillation (Sec. 4.2, Table 13's ImageNet column, the authors' released script)."""
    stage = "distill"
    split: str = setting("trainval", "training split (all of the pre-training data: nothing is selected on it)",
                         choices=TRAIN_SPLITS)
    epochs: int = setting(10, "training epochs", check="positive")
    batch_size: int = setting(1024, "global batch size", check="positive")
    scale_lr: bool = setting(True, "DeiT's rule: the learning rate is lr x batch_size / 512")
    method: str = setting(METHODS[0], "token compression the plugin compensates (tome_ffn: the segmentation plugin, "
                          "Table 11)", choices=METHODS + DENSE_METHODS)
    r_max: int = setting(16, "R: the plugin covers degrees 0..R", check="positive")
    r_step: int = setting(1, "degree step k: group i bridges k*i -> k*(i+1), degrees are multiples of k "
                          "(tome_ffn's r runs to half the tokens)", check="positive")
    img_size: int | None = setting(None, "distil at this resolution (position embeddings resized; none: the "
                                   "backbone's own; the paper's segmentation plugin: 512)", check="positive")
    rank: int = setting(2, "LoRA rank h of each group", check="positive")
    variant: str = setting("tocom", "tocom, or an ablation of Table 5", choices=VARIANTS)
    loss: str = setting("kd", "kd (Eq. 9), cls (Table 5) or features (L1, headless backbones)", choices=LOSSES)
    scale: float = setting(SCALE, "training scale s of the plugin", check="positive")
    teacher_side: str = setting("source", "source: student at n with P_m->n, teacher at m (authors' code); "
                                "target: Eq. 8 as printed", choices=TEACHER_SIDES)
    temperature: float = setting(1.0, "KD temperature", check="positive")
    drop_path: float = setting(0.1, "stochastic depth of the student (the frozen backbone runs in train mode)",
                               check="unit")
    lora_dropout: float = setting(0.1, "dropout on the LoRA bottleneck (authors' code)", check="unit")
    mixup: float = setting(0.8, "mixup alpha on the distillation images (0: off)", check="nonneg")
    cutmix: float = setting(1.0, "cutmix alpha on the distillation images (0: off)", check="nonneg")
    teacher: str = setting("live", "live: the teacher runs every step (authors' script); once: its output per image "
                           "and degree is computed once and kept, shared by the plugins of a backbone and method "
                           "(needs unaugmented images: mixup and cutmix 0; the same losses up to rounding)",
                           choices=TEACHER_MODES)

    #: What a teacher's outputs depend on besides the model and the images' dataset and seed (`teacher = once`).
    TEACHER_KEYS: ClassVar[tuple[str, ...]] = ("method", "r_max", "r_step", "img_size", "split", "limit")

    def __post_init__(self):
        super().__post_init__()
        if self.teacher == "once" and (self.mixup > 0 or self.cutmix > 0):
            raise TocomError(f"{self.stage}.teacher once needs unmixed images (its outputs are computed once per "
                             f"image): set mixup and cutmix to 0, or teacher live")


@dataclass(frozen=True)
class FinetuneSettings(TrainSettings):
    """Downstream fine-tuning at a source degree (Table 13's CIFAR/FGVC/VTAB-1k columns)."""
    stage = "finetune"
    mode: str = setting("full", "full fine-tuning, AdaptFormer PET, or a linear probe", choices=MODES)
    label_smoothing: float = setting(0.1, "label smoothing", check="unit")
    drop_path: float = setting(0.1, "stochastic depth (max rate, linear over blocks)", check="unit")
    mixup: float = setting(0.0, "mixup alpha (0: off)", check="nonneg")
    cutmix: float = setting(0.0, "cutmix alpha (0: off)", check="nonneg")
    adapter_dim: int = setting(32, "AdaptFormer bottleneck width", check="positive")
    adapter_scale: float = setting(0.1, "AdaptFormer scale s of Eq. 10", check="positive")


@dataclass(frozen=True)
class SegmentSettings(Settings):
    """Segmenter fine-tuning at a source degree with tome_ffn active (Table 11): Segmenter's ADE20K recipe,
    which the paper 'completely follows' (SGD + poly decay, no weight decay, 512 x 512 crops)."""
    stage = "segment"
    split: str = setting("train", "training split", choices=TRAIN_SPLITS)
    limit: int | None = setting(None, "use at most this many training images (smoke runs)", check="positive")
    iterations: int = setting(160000, "training iterations (optimizer steps)", check="positive")
    epochs: int | None = setting(None, "train this many passes over the data instead of `iterations` (CPU scales)",
                                 check="positive")
    batch_size: int = setting(8, "global batch size", check="positive")
    lr: float = setting(1e-3, "SGD learning rate at step 0", check="positive")
    momentum: float = setting(0.9, "SGD momentum", check="unit")
    poly_power: float = setting(0.9, "poly decay: lr x (1 - step / steps) ** power", check="nonneg")
    weight_decay: float = setting(0.0, "SGD weight decay", check="nonneg")
    crop_size: int = setting(512, "training crop (and the encoder's resolution, the sliding window)", check="positive")
    drop_path: float = setting(0.1, "encoder stochastic depth", check="unit")
    decoder_depth: int = setting(2, "Mask Transformer layers", check="nonneg")
    ignore_index: int = setting(255, "label ignored by the cross-entropy and mIoU", check="nonneg")


@dataclass(frozen=True)
class TaskSettings(Settings):
    """The generated VTAB-1k-style tasks (`tocom make-tasks`, tocom/data/fmnist_tasks.py): sizes of the
    VTAB-1k splits and the seed that fixes every image."""
    stage = "tasks"
    seed: int = setting(0, "generation seed (same seed, byte-identical tasks)", check="nonneg", maximum=MAX_SEED)
    n_train: int = setting(800, "images in train800", check="positive")
    n_val: int = setting(200, "images in val200", check="positive")
    n_test: int = setting(500, "images in test", check="positive")


@dataclass(frozen=True)
class SearchSettings(Settings):
    """The hyper-parameter searches of the appendix: candidates trained on `train`, compared on `val`."""
    stage = "search"
    lr: tuple[float, ...] | None = setting(None, "base learning rates to try (Table 13 FGVC)", check="positive")
    adapter_scale: tuple[float, ...] | None = setting(None, "AdaptFormer scales to try (Eq. 10)", check="positive")
    source_r: int = setting(0, "the source degree the search runs at (the paper is silent; chosen values are "
                            "reused for every source)", check="nonneg")

    def candidates(self) -> list[dict]:
        """Every combination of the searched settings, as field overrides of FinetuneSettings."""
        grid = [{}]
        for name in (n for n in SEARCHABLE if getattr(self, n)):
            grid = [{**g, name: v} for g in grid for v in getattr(self, name)]
        return grid if grid != [{}] else []


@dataclass(frozen=True)
class EvalSettings(Settings):
    """Cross-evaluation at every target degree, with s chosen on held-out data (Sec. 5.1)."""
    stage = "evaluate"
    scales: tuple[float, ...] = setting([0.01, 0.02, 0.05, 0.08, 0.1, 0.12, 0.15], "inference scale grid s (Sec. 5.1), "
                                        "for a plugin trained at s = grid_scale", check="positive")
    grid_scale: float = setting(SCALE, "training s the grid is written for; a plugin trained at another s is "
                                "evaluated on the grid x (its s / grid_scale) (Table 6)", check="positive")
    splits: tuple[str, ...] = setting(["val", "test"], "splits to report", choices=SPLITS)
    select_split: str = setting("val", "split that picks s (never one the selecting model trained on)", choices=SPLITS)
    batch_size: int = setting(256, "evaluation batch size", check="positive")
    limit: int | None = setting(None, "evaluate at most this many images per split", check="positive")

    def __post_init__(self):
        super().__post_init__()
        check_choosing_split(self.select_split, self.splits, f"{self.stage}.select_split")

    def grid_for(self, train_scale: float) -> tuple[float, ...]:
        return tuple(round(s * (train_scale / self.grid_scale), 12) for s in self.scales)


@dataclass(frozen=True)
class BenchSettings(Settings):
    """Throughput per degree (Fig. 3)."""
    stage = "bench"
    batch_size: int = setting(8, "images per forward", check="positive")
    warmup: int = setting(2, "untimed passes per degree", check="nonneg")
    repeats: int = setting(5, "timed passes per degree (the median is reported)", check="positive")
    source_r: int = setting(0, "plugin check: the degree the model is taken as fine-tuned at", check="nonneg")
    plugin_rank: int = setting(2, "plugin check: rank h of each random ToCom group", check="positive")
    switch_repeats: int = setting(50, "plugin check: timed switches (and floors) per move", check="positive")


# ---- command-line-only settings: what a command is pointed at, which the workflow gives per job ----------
@dataclass(frozen=True)
class SweepSettings(Settings):
    """What `tocom flops` and `tocom bench` measure: one backbone under one method over a ladder of degrees."""
    stage = "sweep"
    model: str = setting("deit_base_patch16_224", "timm backbone name")
    method: str = setting(METHODS[0], "token compression", choices=METHODS)
    r: tuple[int, ...] = setting([0, 2, 4, 8, 12, 16], "compression degrees (tokens merged/pruned/idled per layer)",
                                 check="nonneg")


@dataclass(frozen=True)
class FlopsSettings(SweepSettings):
    """What `tocom flops` counts: the sweep, dense methods included, at a resolution, with a classifier or a
    Segmenter on top (Table 11: `--model deit_base_patch16_384 --method tome_ffn --img-size 512 --head segmenter`)."""
    stage = "flops"
    method: str = setting(METHODS[0], "token compression (tome_ffn: merged before each FFN, unmerged after)",
                          choices=METHODS + DENSE_METHODS)
    img_size: int | None = setting(None, "input resolution in px (none: the backbone's own)", check="positive")
    head: str = setting(FLOPS_HEADS[0], "classifier: the ViT and its head, every product counted (DeiT/ToMe); "
                        "segmenter: Segmenter's Mask Transformer for ADE20K (150 classes, 2 layers) on the encoder, "
                        "attention products left out (Table 11)", choices=FLOPS_HEADS)


@dataclass(frozen=True)
class MeasureSettings(SweepSettings):
    """`tocom bench`'s sweep, and what it times where (BenchSettings, from the config, says how often)."""
    stage = "measure"
    mode: str = setting("infer", "time inference (no grad) or training steps (forward, backward, SGD step); data: "
                        "time data loading instead (DataBenchSettings)", choices=BENCH_MODES + (DATA_BENCH,))
    plugin_check: bool = setting(False, "instead of Fig. 3, check the deployment claims with a random merged ToCom "
                                 "plugin: inference images/s merged vs plain at each r, and Compensation.switch() "
                                 "latency vs its floor (one rank-k addmm_ into each W_q/W_v); float32 inference only")
    device: str | None = setting(None, "torch device, e.g. cpu or cuda (none: cuda when available)")
    precision: str = setting("auto", "autocast dtype (RunSettings.precision: auto is off on CPU, so CPU timings are "
                             "float32 unless asked)", choices=PRECISIONS)
    threads: int | None = setting(None, "torch CPU threads (none: torch's default)", check="positive")


@dataclass(frozen=True)
class DataBenchSettings(Settings):
    """`tocom bench --mode data`: images/s of the real transforms on ImageNet-layout JPEGs it writes itself
    (ImageNet's median size by default), per number of loader workers (batch, warm-up and timed passes:
    BenchSettings), and the images/s a GPU consumes per job type."""
    stage = "data_bench"
    transforms: tuple[str, ...] = setting(["train", "eval"], "train: DeiT's augmentation (RandAugment, random "
                                          "erasing); eval: resize and centre crop", choices=("train", "eval"))
    worker_counts: tuple[int, ...] = setting([0, 1, 2], "numbers of loader workers to time", check="nonneg")
    images: int = setting(512, "images per timed pass (JPEGs written: up to 256, then reused)", check="positive")
    img_size: int = setting(224, "the model's input size", check="positive")
    width: int = setting(500, "fixture JPEG width (ImageNet's median)", check="positive")
    height: int = setting(375, "fixture JPEG height (ImageNet's median)", check="positive")
    gpu_tflops: float = setting(125.0, "the GPU's dense peak at the run's precision, TFLOPS (V100 SXM2 fp16 "
                                "tensor cores: 125; A100 bf16: 312), for the images/s a GPU consumes", check="positive")
    gpu_utilisation: float = setting(0.21, "share of that peak a ViT-B step reaches (0.21: DeiT-B's 300 epochs "
                                     "in 53 h on 8 V100s, 252 images/s per GPU)", check="unit")


@dataclass(frozen=True)
class SourceSettings(Settings):
    """The source degree a model is fine-tuned at (`tocom segment-finetune`; with its method, `tocom finetune`)."""
    stage = "source"
    r: int = setting(0, "source degree: tokens compressed per layer while training", check="nonneg")


@dataclass(frozen=True)
class SourceMethodSettings(SourceSettings):
    """The source degree and the compression active while `tocom finetune` trains."""
    method: str = setting(METHODS[0], f"token compression active while training; irrelevant at r = 0, where nothing "
                          f"is compressed (the checkpoint records method {UNCOMPRESSED!r} whatever this says)",
                          choices=METHODS + (UNCOMPRESSED,))


@dataclass(frozen=True)
class EvalMethodSettings(Settings):
    """The compression `tocom evaluate` and `tocom transfer` run the models under."""
    stage = "method"
    method: str | None = setting(None, f"token compression to evaluate under (none: the one the checkpoint was "
                                 f"fine-tuned with; {METHODS[0]} for a model fine-tuned uncompressed, at r = 0)",
                                 choices=METHODS + (None,))
