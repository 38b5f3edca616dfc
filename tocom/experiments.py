"""The experiment grid: a pipeline config expanded into the runs it asks for, checked up front.

The workflow (Snakefile) asks this module which backbones to pretrain, which plugins to distill,
which models to fine-tune and evaluate, and where each output lives; it adds no logic of its own.
Everything a run could trip over later (an unknown dataset or backbone, an r the backbone cannot
carry, a plugin too small for the degrees it must bridge, a missing data root or checkpoint) is
found here, before any job starts, and reported as one `TocomError` line.

Where each run's output lives is the run layout's (tocom/layout.py); paths are relative to the run's
folder, results/<config name>/.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from . import layout
from .errors import TocomError
from .layout import GENERATED_FAMILY
from .settings import (DENSE_METHODS, UNCOMPRESSED, BenchSettings, config_schema, DistillSettings, EvalSettings, FinetuneSettings,
                       PretrainSettings, SearchSettings, SegmentSettings, TaskSettings, splits_overlap)


def validate_config(config: dict, schema_path: str | Path) -> None:
    """Check `config` against the JSON schema (the stage settings' parts generated from their dataclasses);
    the most relevant violation as one TocomError line."""
    import jsonschema

    schema = config_schema(schema_path)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise TocomError(f"{where}: {error.message}")


def is_generated(dataset: str) -> bool:
    """A task the workflow writes itself (`tocom make-tasks`) rather than one read from a release."""
    return dataset.split("/")[0] == GENERATED_FAMILY


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


@lru_cache(maxsize=None)
def backbone_patch_size(timm_name: str) -> int:
    """Patch size of a timm ViT (meta device, no weights)."""
    import timm
    import torch

    from . import models  # noqa: F401

    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False)
    return int(model.patch_embed.patch_size[0])


SEGMENT_METHOD = DENSE_METHODS[0]   # the plugins of Table 11 are distilled with tokens merged before each FFN


def paper_variants(main: DistillSettings) -> dict[str, dict]:
    """The plugins of Tables 5-7 as overrides of the main plugin's settings `main` (the config's `distill`);
    a config's `variants` section adds plugins or replaces these (`resolve_variants`)."""
    return {
        "tocom": {},                                            # the main plugin
        # Table 5: one LoRA for every pair, the same parameter budget (R pairs x rank h)
        "shared": {"variant": "shared", "rank": main.r_max // main.r_step * main.rank},
        "cls": {"loss": "cls"},                                 # Table 5: cross-entropy on labels instead of KD
        "no_inversion": {"variant": "no_inversion"},            # Table 5: separate groups up and down
        **{f"h{h}": {"rank": h} for h in (1, 4, 8)},            # Table 7: LoRA rank
        **{f"s{s:g}": {"scale": s} for s in (1.0, 0.01)},       # Table 6: training scale
    }


def resolve_variants(config: dict) -> dict[str, dict]:
    """Every plugin variant of a config as overrides of its `distill`: the paper's (`paper_variants`,
    relative to the config's main plugin), then the config's `variants` section (more plugins; an entry
    named like one of the paper's replaces it)."""
    main = {k: v for k, v in config["distill"].items() if k != "dataset"}
    return {**paper_variants(DistillSettings.from_mapping(main, "distill")), **(config.get("variants") or {})}


def job_processes(resource: dict) -> int:
    """Processes (DDP ranks) a job of one `resources` entry runs: one per GPU; on CPU, `processes` (gloo)."""
    gpus = resource.get("gpus", 0)
    if gpus > 0 and resource.get("processes", gpus) != gpus:
        raise TocomError(f"resources: processes {resource['processes']} with gpus {gpus}; a GPU job runs one "
                         "process per GPU, so leave processes out (it is for CPU jobs)")
    return gpus if gpus > 0 else resource.get("processes", 1)


def job_workers(resource: dict) -> int:
    """Loader workers per rank of one `resources` entry: its `workers`, else the CPUs each rank gets less one
    for the rank itself; at least one on a GPU job (decoding in the training process starves the GPU), none
    on a CPU job with one CPU per rank."""
    if "workers" in resource:
        return resource["workers"]
    per_rank = resource.get("cpus", 1) // job_processes(resource)
    return max(1 if resource.get("gpus", 0) > 0 else 0, per_rank - 1)


def config_digest(config: dict) -> str:
    """What a run computed from, as 16 hex digits: the sha256 of the config with its plugin variants resolved
    (`resolve_variants`), as canonical JSON. Comments, key order and spelling out a paper variant do not change
    it; any value that reaches a step does."""
    import hashlib
    import json

    resolved = {**config, "variants": resolve_variants(config)}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Laid:
    """A run whose output lives at `template` filled with `fields` (tocom/layout.py)."""
    template = ""

    @property
    def fields(self) -> dict:
        return {f: getattr(self, f) for f in layout.fields_of(self.template)}

    @property
    def path(self) -> str:
        return layout.path(self.template, **self.fields)

    @property
    def job(self) -> str:
        """Its name in the log and benchmark files."""
        return layout.job(self.template, **self.fields)


@dataclass(frozen=True)
class SegmentRun(_Laid):
    """One Segmenter fine-tuned at a source degree (tome_ffn), evaluated at every target (Table 11)."""
    backbone: str
    dataset: str
    source: int
    seed: int
    template = layout.SEGMENT

    @property
    def eval_path(self) -> str:
        return layout.path(layout.SEGMENT_EVAL, **self.fields)


@dataclass(frozen=True)
class FinetuneRun(_Laid):
    """One fine-tune. role "final": the model that is evaluated; "select": its companion trained on
    `train` at the same source r, which chooses s on `val` when the final model trained on val too.
    `method` is the compression active while training: UNCOMPRESSED for the source r = 0 model that
    every method shares (see `Grid._finetune`)."""
    backbone: str
    method: str
    dataset: str
    source: int
    seed: int
    recipe: str
    role: str = "final"

    @property
    def template(self) -> str:
        return layout.ROLES[self.role]


@dataclass(frozen=True)
class SearchRun(_Laid):
    """One candidate of a hyper-parameter search: trained on `train` and scored on `val`."""
    backbone: str
    method: str
    dataset: str
    seed: int
    recipe: str
    source: int
    overrides: tuple
    template = layout.SEARCH

    @property
    def candidate(self) -> str:
        from .search import candidate_label

        return candidate_label(dict(self.overrides))

    @property
    def chosen_path(self) -> str:
        return layout.path(layout.CHOSEN, **self.fields)


@dataclass
class EvalRun(_Laid):
    """One fine-tuned model evaluated under `method` (the fine-tune's own, or any method for a model
    fine-tuned at source r = 0)."""
    finetune: FinetuneRun
    method: str
    targets: set[int] = field(default_factory=set)
    variants: set[str] = field(default_factory=set)
    selector: FinetuneRun | None = None
    template = layout.EVAL

    @property
    def fields(self) -> dict:
        return {**self.finetune.fields, "method": self.method}


@dataclass(frozen=True)
class TransferRun(_Laid):
    backbone: str
    method: str
    a: str
    b: str
    high_r: int
    target_r: int
    seed: int
    models: tuple = field(default=(), compare=False)   # its FinetuneRuns: M_high^A, M_0^A, M_0^B
    template = layout.TRANSFER

    @property
    def fields(self) -> dict:
        return dict(backbone=self.backbone, method=self.method, a=self.a, b=self.b, high=self.high_r, seed=self.seed)


@dataclass(frozen=True)
class BenchRun(_Laid):
    backbone: str
    method: str
    mode: str
    template = layout.BENCH


class Grid:
    """All runs of one config, each stage's settings resolved. Raises TocomError on the first problem."""

    def __init__(self, config: dict, check_files: bool = True, check_geometry: bool = True):
        """check_files: data roots and checkpoints exist. check_geometry: every r fits its backbone
        (builds each backbone on the meta device, so it imports torch and timm; the workflow's jobs
        re-read a config the main process has already checked and skip both)."""
        self.config = config
        self.check_geometry = check_geometry
        self.name = config["name"]
        self.seeds = list(config.get("seeds", [0]))
        self.backbones: dict = config["backbones"]
        self.eval_settings = EvalSettings.from_mapping(config.get("evaluate", {}), "evaluate")
        self.variants = resolve_variants(config)
        self.recipes = {k: self._recipe(k, v) for k, v in config["recipes"].items()}
        self.finetunes: dict[str, FinetuneRun] = {}
        self.searches: dict[str, SearchRun] = {}
        self.evals: dict[str, EvalRun] = {}
        self.plugins: set[tuple[str, str, str]] = set()
        self.transfers: list[TransferRun] = []
        self.benches: list[BenchRun] = []
        self.segments: dict[str, SegmentRun] = {}
        self._check_backbones(check_files)
        for resource in config.get("resources", {}).values():
            job_processes(resource)             # (processes given to a GPU job is an error)
        self._expand_studies()
        self._expand_transfer()
        self._expand_bench()
        self._expand_segmentation()
        self._check_plugins()
        if check_files:
            self._check_data()

    # ---- settings ------------------------------------------------------------------------------
    @staticmethod
    def _recipe(name: str, values: dict) -> tuple[FinetuneSettings, SearchSettings | None]:
        values = dict(values)
        search = values.pop("search", None)
        s = FinetuneSettings.from_mapping(values, f"recipes.{name}")
        return s, SearchSettings.from_mapping(search, f"recipes.{name}.search") if search else None

    def finetune_settings(self, run: FinetuneRun | SearchRun) -> FinetuneSettings:
        """The recipe, with the dataset's own values (`dataset_settings`) on top; a selection model or
        a search candidate trains on `train` (the final model on the recipe's split)."""
        s, _ = self.recipes[run.recipe]
        own = (self.config.get("dataset_settings") or {}).get(run.dataset, {})
        s = s.replace(**FinetuneSettings.from_mapping({**s.asdict(), **own}, f"dataset_settings.{run.dataset}").asdict())
        if isinstance(run, SearchRun):
            return s.replace(split="train", **dict(run.overrides))
        return s.replace(split="train") if run.role == "select" else s

    def search_for(self, run: FinetuneRun | SearchRun) -> SearchSettings | None:
        return self.recipes[run.recipe][1]

    def distill_settings(self, backbone: str, variant: str) -> tuple[str, DistillSettings]:
        """(pre-training dataset, settings) of a plugin: `distill`, the backbone's overrides, the variant's."""
        values = {**self.config["distill"], **self.backbones[backbone].get("distill", {}),
                  **self.variants[variant]}
        dataset = values.pop("dataset")
        return dataset, DistillSettings.from_mapping(values, f"distill ({backbone}, {variant})")

    def pretrain_settings(self, backbone: str) -> tuple[str, PretrainSettings]:
        values = dict(self.backbones[backbone]["pretrain"])
        dataset = values.pop("dataset")
        return dataset, PretrainSettings.from_mapping(values, f"backbones.{backbone}.pretrain")

    def bench_settings(self, bench: dict) -> BenchSettings:
        return BenchSettings.from_mapping({k: v for k, v in bench.items() if k not in ("backbone", "method", "r", "modes")},
                                          "bench")

    def segment_settings(self) -> SegmentSettings:
        return SegmentSettings.from_mapping(dict(self.config["segmentation"].get("recipe") or {}),
                                            "segmentation.recipe")

    # ---- expansion -----------------------------------------------------------------------------
    def _finetune(self, backbone, method, dataset, source, seed, recipe) -> FinetuneRun:
        """The fine-tune `method` asks for. At source r = 0 nothing is compressed while training, so
        every method shares one run (filed under UNCOMPRESSED), unless the recipe's search runs at a
        source r > 0: then the settings it applies depend on the method, and so does the model."""
        if recipe not in self.recipes:
            raise TocomError(f"recipe {recipe!r} is not defined under `recipes`; define it or use one of "
                             f"{', '.join(self.recipes)}")
        search = self.recipes[recipe][1]
        shared = int(source) == 0 and not (search and search.source_r)
        run = FinetuneRun(backbone, UNCOMPRESSED if shared else method, dataset, int(source), int(seed), recipe)
        other = self.finetunes.get(run.path)
        if other is not None and other.recipe != recipe:
            where = (f"{backbone} at source r = 0 (one fine-tune serves every method)" if shared
                     else f"{backbone}/{method}")
            raise TocomError(f"{dataset} is fine-tuned with two recipes ({other.recipe}, {recipe}) for "
                             f"{where}; use one recipe per dataset and backbone")
        self.finetunes[run.path] = run
        for cand in self._search_runs(run):
            self.searches[cand.path] = cand
        return run

    def _search_runs(self, run: FinetuneRun) -> list[SearchRun]:
        """The candidates whose winner `run` uses. At source r = 0 nothing is compressed, so one search
        (filed under UNCOMPRESSED) serves every method of a backbone and dataset."""
        search = self.search_for(run)
        if not search:
            return []
        method = run.method if search.source_r else UNCOMPRESSED
        return [SearchRun(run.backbone, method, run.dataset, run.seed, run.recipe, search.source_r,
                          tuple(sorted(overrides.items()))) for overrides in search.candidates()]

    def _selector(self, run: FinetuneRun) -> FinetuneRun | None:
        """The companion that chooses s when the final model trained on the selection split too."""
        select = self.eval_settings.select_split
        if not splits_overlap(self.finetune_settings(run).split, select):
            return None
        if splits_overlap("train", select):
            raise TocomError(f"evaluate.select_split {select!r} overlaps every training split; choose s on 'val'")
        sel = FinetuneRun(run.backbone, run.method, run.dataset, run.source, run.seed, run.recipe, role="select")
        self.finetunes[sel.path] = sel
        return sel

    def _expand_studies(self) -> None:
        for study in self.config.get("studies", []):
            backbone, method = study["backbone"], study["method"]
            self._backbone(backbone)
            for block in study["sets"]:
                variants = list(block.get("variants", []))
                for v in variants:
                    if v not in self.variants:
                        raise TocomError(f"study {study['name']}: variant {v!r} is not defined under `variants`; "
                                         f"define it or use one of {', '.join(self.variants)}")
                    self.plugins.add((backbone, method, v))
                self._check_degrees(backbone, [*block["sources"], *block["targets"]], f"study {study['name']}")
                for dataset in block["datasets"]:
                    for source in block["sources"]:
                        for seed in self.seeds:
                            run = self._finetune(backbone, method, dataset, source, seed, block["recipe"])
                            ev = EvalRun(run, method)
                            ev = self.evals.setdefault(ev.path, ev)
                            ev.targets.update(int(t) for t in block["targets"])
                            ev.variants.update(variants)
                            ev.selector = self._selector(run)

    def _check_degrees(self, backbone: str, rs, where: str) -> None:
        geometry = self.geometry(backbone)
        too_big = sorted({int(r) for r in rs if r > geometry["max_r"]})
        if too_big:
            raise TocomError(f"{where}: r {too_big} exceeds what {backbone} carries (max r = {geometry['max_r']} "
                             f"for {geometry['patches']} patch tokens over {geometry['depth']} blocks)")

    def _expand_transfer(self) -> None:
        for t in self.config.get("transfer", []):
            self._backbone(t["backbone"])
            self._check_degrees(t["backbone"], [t["high_r"], t["target_r"]], "transfer")
            for b in t["b"]:
                for seed in self.seeds:
                    models = tuple(self._finetune(t["backbone"], t["method"], dataset, source, seed, recipe)
                                   for source, dataset, recipe in ((t["high_r"], t["a"], t["recipe_a"]),
                                                                   (0, t["a"], t["recipe_a"]), (0, b, t["recipe_b"])))
                    self.transfers.append(TransferRun(t["backbone"], t["method"], t["a"], b, int(t["high_r"]),
                                                      int(t["target_r"]), seed, models))

    def _expand_bench(self) -> None:
        for b in self.config.get("bench", []):
            self._backbone(b["backbone"])
            self._check_degrees(b["backbone"], b["r"], "bench")
            self.bench_settings(b)
            for mode in b["modes"]:
                self.benches.append(BenchRun(b["backbone"], b["method"], mode))

    def _expand_segmentation(self) -> None:
        """Table 11: Segmenters at each source (tome_ffn), each evaluated at every target with the
        backbone's tome_ffn plugins; degrees must be multiples of each plugin's r_step, within its r_max
        and within half the encoder's patch tokens at the crop size."""
        seg = self.config.get("segmentation")
        if not seg:
            return
        backbone = seg["backbone"]
        bb = self._backbone(backbone)
        s = self.segment_settings()
        degrees = sorted({int(r) for r in [*seg["sources"], *seg["targets"]]})
        if self.check_geometry:
            patch_size = backbone_patch_size(bb["timm"])
            half = (s.crop_size // patch_size) ** 2 // 2
            if degrees[-1] > half:
                raise TocomError(f"segmentation: r {degrees[-1]} exceeds what {backbone} carries with tome_ffn at "
                                 f"{s.crop_size} px (max r = {half}, half of the patch tokens)")
        for v in seg.get("variants", []):
            if v not in self.variants:
                raise TocomError(f"segmentation: variant {v!r} is not defined under `variants`; define it or use "
                                 f"one of {', '.join(self.variants)}")
            _, ds = self.distill_settings(backbone, v)
            off = [r for r in degrees if r > ds.r_max or r % ds.r_step]
            if off:
                raise TocomError(f"segmentation: degrees {off} are not on plugin {v!r}'s ladder (multiples of "
                                 f"r_step {ds.r_step} up to r_max {ds.r_max})")
            self.plugins.add((backbone, SEGMENT_METHOD, v))
        for source in seg["sources"]:
            for seed in self.seeds:
                run = SegmentRun(backbone, seg["dataset"], int(source), int(seed))
                self.segments[run.path] = run

    def segment_run(self, **fields) -> SegmentRun:
        return self.segments[layout.path(layout.SEGMENT, **fields)]

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
            if bb.get("pretrain"):
                self.pretrain_settings(key)
            if check_files and bb.get("checkpoint") and not Path(bb["checkpoint"]).is_file():
                raise TocomError(f"backbone {key}: no checkpoint at {bb['checkpoint']}; download the official "
                                 "weights there or fix the path")

    def _check_plugins(self) -> None:
        for backbone, method, variant in self.plugins:
            _, settings = self.distill_settings(backbone, variant)
            geometry = self.geometry(backbone)
            if method == SEGMENT_METHOD:        # checked against the tome_ffn ladder in _expand_segmentation
                if settings.r_max % settings.r_step:
                    raise TocomError(f"distill ({backbone}, {variant}): r_step {settings.r_step} does not divide "
                                     f"r_max {settings.r_max}")
                continue
            if settings.r_max > geometry["max_r"]:
                raise TocomError(f"distill: r_max {settings.r_max} exceeds what {backbone} carries "
                                 f"(max r = {geometry['max_r']})")
            if settings.loss != "features" and not geometry["has_head"] and \
                    not self.backbones[backbone].get("pretrain"):
                raise TocomError(f"backbone {backbone} has no classification head: set distill.loss: features "
                                 "for it (as the paper does for MAE)")
        for ev in self.evals.values():
            if not ev.variants:
                continue
            r_max = min(self.distill_settings(ev.finetune.backbone, v)[1].r_max for v in ev.variants)
            needed = max([ev.finetune.source, *ev.targets])
            if needed > r_max:
                raise TocomError(f"{ev.finetune.dataset}: degrees up to {needed} need a plugin with r_max >= {needed}, "
                                 f"but distill.r_max is {r_max}")
        for run in self.finetunes.values():     # every dataset-level override must be a valid setting
            self.finetune_settings(run)

    def data_root(self, dataset: str) -> str | None:
        """The root passed to `tocom --data-root` (None: the dataset's documented default).

        A configured `data_root` is never ignored: datasets whose documented default is an absolute
        system path (Fashion-MNIST's Debian package) are looked for under data_root/<its folder name>.
        Tasks the workflow generates live with the run's results (`generated_root`).
        """
        roots = self.config.get("data_roots") or {}
        if dataset in roots:
            return roots[dataset]
        if is_generated(dataset):
            return self.generated_root
        base = self.config.get("data_root")
        if base:
            from .data import get_spec

            default = get_spec(dataset).default_root
            if default:
                sub = Path(default).name if os.path.isabs(default) else default.removeprefix("data/")
                return os.path.join(base, sub)
        return None

    def datasets(self) -> set[str]:
        names = {r.dataset for r in self.finetunes.values()}
        names |= {self.pretrain_settings(k)[0] for k, bb in self.backbones.items() if bb.get("pretrain")}
        names |= {self.distill_settings(bb, v)[0] for bb, _, v in self.plugins}
        names |= {r.dataset for r in self.segments.values()}
        return names

    @property
    def generated_root(self) -> str:
        """Where the workflow writes the generated tasks (one folder per task), relative to the workdir."""
        return layout.pattern(layout.TASKS, layout.run_dir(self.name))

    def generated_datasets(self) -> list[str]:
        """The grid's datasets that the workflow generates itself (`tocom make-tasks`), unless a
        `data_roots` entry points at a copy made elsewhere."""
        roots = self.config.get("data_roots") or {}
        return sorted(d for d in self.datasets() if is_generated(d) and d not in roots)

    def task_settings(self) -> TaskSettings:
        return TaskSettings.from_mapping(dict(self.config.get("tasks") or {}), "tasks")

    def _check_data(self) -> None:
        from .data import get_spec
        from .data.registry import resolve_root

        self.task_settings()
        generated = set(self.generated_datasets())
        for name in sorted(self.datasets()):
            spec = get_spec(name)              # unknown names fail here, generated or not
            if name not in generated:          # written by the workflow's tasks rule before any job reads it
                resolve_root(spec, self.data_root(name))

    # ---- what the workflow asks for ------------------------------------------------------------
    def pretrained_backbones(self) -> list[str]:
        return [k for k, bb in self.backbones.items() if bb.get("pretrain")]

    def finetune_run(self, role: str = "final", **fields) -> FinetuneRun:
        """The fine-tune whose path these fields (e.g. a rule's wildcards) fill in."""
        return self.finetunes[layout.path(layout.ROLES[role], **fields)]

    def search_run(self, **fields) -> SearchRun:
        return self.searches[layout.path(layout.SEARCH, **fields)]

    def search_candidates(self, run: FinetuneRun) -> list[SearchRun]:
        return self._search_runs(run)

    def chosen_path(self, run: FinetuneRun) -> str | None:
        """The search result `run` applies (None when its recipe searches nothing)."""
        cands = self._search_runs(run)
        return cands[0].chosen_path if cands else None

    def eval_run(self, **fields) -> EvalRun:
        return self.evals[layout.path(layout.EVAL, **fields)]

    def transfer_run(self, **fields) -> TransferRun:
        path = layout.path(layout.TRANSFER, **fields)
        return next(t for t in self.transfers if t.path == path)

    def final_outputs(self) -> list[str]:
        outs = [layout.path(layout.PLUGIN, backbone=b, method=m, variant=v) for b, m, v in sorted(self.plugins)]
        outs += sorted(self.evals)
        outs += [t.path for t in self.transfers]
        outs += [b.path for b in self.benches]
        outs += sorted(r.eval_path for r in self.segments.values())
        return outs
