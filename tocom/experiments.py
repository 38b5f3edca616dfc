"""The experiment grid: a pipeline config expanded into the runs it asks for, checked up front.

The workflow (Snakefile) asks this module which backbones to pretrain, which plugins to distill,
which models to fine-tune and evaluate, and where each output lives; it adds no logic of its own.
Everything a run could trip over later (an unknown dataset or backbone, an r the backbone cannot
carry, a plugin too small for the degrees it must bridge, a missing data root or checkpoint) is
found here, before any job starts, and reported as one `TocomError` line.

Paths are relative to the run's results folder, results/<config name>/.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import TocomError


def validate_config(config: dict, schema_path: str | Path) -> None:
    """Check `config` against the JSON schema; the most relevant violation as one TocomError line."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise TocomError(f"{where}: {error.message}")


def dataset_key(name: str) -> str:
    """File-name form of a dataset name: vtab/cifar -> vtab__cifar."""
    return name.replace("/", "__")


def dataset_name(key: str) -> str:
    return key.replace("__", "/")


@lru_cache(maxsize=None)
def backbone_geometry(timm_name: str) -> dict:
    """Patch tokens, depth and max r of a timm ViT, built on the meta device (no memory, no weights)."""
    import timm
    import torch

    from . import models  # noqa: F401  (registers the tiny ViT family with timm)
    from .compress import max_r

    if not timm.is_model(timm_name.split(".")[0]):
        raise TocomError(f"unknown backbone {timm_name!r}; use a timm ViT name (e.g. deit_base_patch16_224)")
    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False)
    return {"patches": model.patch_embed.num_patches, "depth": len(model.blocks), "max_r": max_r(model),
            "has_head": model.num_classes > 0}


# Output layout; the workflow's rules use the same templates as output patterns ({dataset}, {a}, {b}:
# dataset keys, see dataset_key).
FINETUNE = "finetune/{backbone}/{method}/{dataset}/r{source}_seed{seed}.safetensors"
EVAL = "eval/{backbone}/{method}/{dataset}/r{source}_seed{seed}.csv"
TRANSFER = "transfer/{backbone}/{method}/{a}_to_{b}_r{high}_seed{seed}.csv"


@dataclass(frozen=True)
class FinetuneRun:
    backbone: str
    method: str
    dataset: str
    source: int
    seed: int
    recipe: str

    def _fields(self) -> dict:
        return dict(backbone=self.backbone, method=self.method, dataset=dataset_key(self.dataset),
                    source=self.source, seed=self.seed)

    @property
    def path(self) -> str:
        return FINETUNE.format(**self._fields())

    @property
    def eval_path(self) -> str:
        return EVAL.format(**self._fields())


@dataclass
class EvalRun:
    finetune: FinetuneRun
    targets: set[int] = field(default_factory=set)
    variants: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class TransferRun:
    backbone: str
    method: str
    a: str
    b: str
    high_r: int
    target_r: int
    seed: int

    @property
    def path(self) -> str:
        return TRANSFER.format(backbone=self.backbone, method=self.method, a=dataset_key(self.a),
                               b=dataset_key(self.b), high=self.high_r, seed=self.seed)


@dataclass(frozen=True)
class BenchRun:
    backbone: str
    method: str
    mode: str

    @property
    def path(self) -> str:
        return f"bench/{self.backbone}/{self.method}_{self.mode}.csv"


def plugin_path(backbone: str, method: str, variant: str) -> str:
    return f"plugins/{backbone}/{method}/{variant}.safetensors"


def backbone_path(backbone: str) -> str:
    return f"backbones/{backbone}.safetensors"


class Grid:
    """All runs of one config. Raises TocomError on the first problem found."""

    def __init__(self, config: dict, check_files: bool = True, check_geometry: bool = True):
        """check_files: data roots and checkpoints exist. check_geometry: every r fits its backbone
        (builds each backbone on the meta device, so it imports torch and timm; the workflow's jobs
        re-read a config the main process has already checked and skip both)."""
        self.config = config
        self.check_geometry = check_geometry
        self.name = config["name"]
        self.seeds = list(config.get("seeds", [0]))
        self.backbones: dict = config["backbones"]
        self.finetunes: dict[str, FinetuneRun] = {}
        self.evals: dict[str, EvalRun] = {}
        self.plugins: set[tuple[str, str, str]] = set()
        self.transfers: list[TransferRun] = []
        self.benches: list[BenchRun] = []
        self._check_backbones(check_files)
        self._expand_studies()
        self._expand_transfer()
        self._expand_bench()
        self._check_plugins()
        if check_files:
            self._check_data()

    # ---- expansion -----------------------------------------------------------------------------
    def _finetune(self, backbone, method, dataset, source, seed, recipe) -> FinetuneRun:
        if recipe not in self.config["recipes"]:
            raise TocomError(f"recipe {recipe!r} is not defined under `recipes`; define it or use one of "
                             f"{', '.join(self.config['recipes'])}")
        run = FinetuneRun(backbone, method, dataset, int(source), int(seed), recipe)
        other = self.finetunes.get(run.path)
        if other is not None and other.recipe != recipe:
            raise TocomError(f"{dataset} is fine-tuned with two recipes ({other.recipe}, {recipe}) for "
                             f"{backbone}/{method}; use one recipe per dataset and backbone")
        self.finetunes[run.path] = run
        return run

    def _expand_studies(self) -> None:
        for study in self.config.get("studies", []):
            backbone, method = study["backbone"], study["method"]
            self._backbone(backbone)
            for block in study["sets"]:
                variants = list(block.get("variants", []))
                for v in variants:
                    if v not in self.config.get("variants", {}):
                        raise TocomError(f"study {study['name']}: variant {v!r} is not defined under `variants`")
                    self.plugins.add((backbone, method, v))
                geometry = self.geometry(backbone)
                too_big = sorted({r for r in [*block["sources"], *block["targets"]] if r > geometry["max_r"]})
                if too_big:
                    raise TocomError(f"study {study['name']}: r {too_big} exceeds what {backbone} carries "
                                     f"(max r = {geometry['max_r']} for {geometry['patches']} patch tokens over "
                                     f"{geometry['depth']} blocks)")
                for dataset in block["datasets"]:
                    for source in block["sources"]:
                        for seed in self.seeds:
                            run = self._finetune(backbone, method, dataset, source, seed, block["recipe"])
                            ev = self.evals.setdefault(run.eval_path, EvalRun(run))
                            ev.targets.update(int(t) for t in block["targets"])
                            ev.variants.update(variants)

    def _expand_transfer(self) -> None:
        for t in self.config.get("transfer", []):
            self._backbone(t["backbone"])
            for b in t["b"]:
                for seed in self.seeds:
                    for source, dataset, recipe in ((t["high_r"], t["a"], t["recipe_a"]), (0, t["a"], t["recipe_a"]),
                                                    (0, b, t["recipe_b"])):
                        self._finetune(t["backbone"], t["method"], dataset, source, seed, recipe)
                    self.transfers.append(TransferRun(t["backbone"], t["method"], t["a"], b, int(t["high_r"]),
                                                      int(t["target_r"]), seed))

    def _expand_bench(self) -> None:
        for b in self.config.get("bench", []):
            self._backbone(b["backbone"])
            too_big = [r for r in b["r"] if r > self.geometry(b["backbone"])["max_r"]]
            if too_big:
                raise TocomError(f"bench: r {too_big} exceeds what {b['backbone']} carries")
            for mode in b["modes"]:
                self.benches.append(BenchRun(b["backbone"], b["method"], mode))

    # ---- checks --------------------------------------------------------------------------------
    def _backbone(self, key: str) -> dict:
        if key not in self.backbones:
            raise TocomError(f"backbone {key!r} is not defined under `backbones`; define it or use one of "
                             f"{', '.join(self.backbones)}")
        return self.backbones[key]

    def geometry(self, key: str) -> dict:
        """The backbone's geometry, or an unbounded stand-in when geometry checks are off."""
        if not self.check_geometry:
            return {"patches": None, "depth": None, "max_r": float("inf"), "has_head": True}
        return backbone_geometry(self._backbone(key)["timm"])

    def _check_backbones(self, check_files: bool) -> None:
        for key, bb in self.backbones.items():
            sources = [s for s in ("pretrain", "checkpoint", "pretrained") if bb.get(s)]
            if len(sources) != 1:
                raise TocomError(f"backbone {key}: give exactly one of pretrain (train from scratch), checkpoint "
                                 f"(a local file) or pretrained: true (timm hub); got {sources or 'none'}")
            self.geometry(key)
            if check_files and bb.get("checkpoint") and not Path(bb["checkpoint"]).is_file():
                raise TocomError(f"backbone {key}: no checkpoint at {bb['checkpoint']}; download the official "
                                 "weights there or fix the path")

    def distill_settings(self, backbone: str, variant: str) -> dict:
        settings = {**self.config["distill"], **self.backbones[backbone].get("distill", {}),
                    **self.config["variants"][variant]}
        return settings

    def _check_plugins(self) -> None:
        for backbone, method, variant in self.plugins:
            settings = self.distill_settings(backbone, variant)
            geometry = self.geometry(backbone)
            if settings["r_max"] > geometry["max_r"]:
                raise TocomError(f"distill: r_max {settings['r_max']} exceeds what {backbone} carries "
                                 f"(max r = {geometry['max_r']})")
            if settings.get("loss", "kd") != "features" and not geometry["has_head"] and \
                    not self.backbones[backbone].get("pretrain"):
                raise TocomError(f"backbone {backbone} has no classification head: set distill.loss: features "
                                 "for it (as the paper does for MAE)")
        for ev in self.evals.values():
            if not ev.variants:
                continue
            r_max = min(self.distill_settings(ev.finetune.backbone, v)["r_max"] for v in ev.variants)
            needed = max([ev.finetune.source, *ev.targets])
            if needed > r_max:
                raise TocomError(f"{ev.finetune.dataset}: degrees up to {needed} need a plugin with r_max >= {needed}, "
                                 f"but distill.r_max is {r_max}")

    def data_root(self, dataset: str) -> str | None:
        """The root passed to `tocom --data-root` (None: the dataset's documented default)."""
        roots = self.config.get("data_roots") or {}
        if dataset in roots:
            return roots[dataset]
        base = self.config.get("data_root")
        if base:
            from .data import get_spec

            default = get_spec(dataset).default_root
            if default:
                return os.path.join(base, default.removeprefix("data/"))
        return None

    def datasets(self) -> set[str]:
        names = {r.dataset for r in self.finetunes.values()}
        names |= {s["dataset"] for s in (bb.get("pretrain") for bb in self.backbones.values()) if s}
        names |= {self.distill_settings(bb, v)["dataset"] for bb, _, v in self.plugins}
        return names

    def _check_data(self) -> None:
        from .data import get_spec
        from .data.registry import resolve_root

        for name in sorted(self.datasets()):
            resolve_root(get_spec(name), self.data_root(name))

    # ---- what the workflow asks for ------------------------------------------------------------
    def pretrained_backbones(self) -> list[str]:
        return [k for k, bb in self.backbones.items() if bb.get("pretrain")]

    def finetune_run(self, **fields) -> FinetuneRun:
        """The fine-tune whose FINETUNE path these fields (e.g. a rule's wildcards) fill in."""
        return self.finetunes[FINETUNE.format(**fields)]

    def eval_run(self, **fields) -> EvalRun:
        return self.evals[EVAL.format(**fields)]

    def transfer_run(self, **fields) -> TransferRun:
        path = TRANSFER.format(**fields)
        return next(t for t in self.transfers if t.path == path)

    def final_outputs(self) -> list[str]:
        outs = [plugin_path(*p) for p in sorted(self.plugins)]
        outs += sorted(self.evals)
        outs += [t.path for t in self.transfers]
        outs += [b.path for b in self.benches]
        return outs
