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

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from . import layout
from .errors import TocomError
from .gpus import GPUS, Need, gpu_spec, memory_need
from .settings import (DENSE_METHODS, UNCOMPRESSED, BenchSettings, config_schema, DistillSettings, EvalSettings, FinetuneSettings,
                       PretrainSettings, SearchSettings, SegmentSettings, TaskSettings, splits_overlap)


#: Ceilings of a config's grid (`check_grid_size`, on `grid_size`'s upper bounds): config/paper.yaml is bounded by
#: 3,640 jobs (1253 real ones) and 25,728 evaluation rows. A config asking for far more is a slip (a generated list
#: of seeds or degrees) that would run for minutes and fill memory before anything is said.
MAX_JOBS = 20_000
MAX_ROWS = 1_000_000


def validate_config(config: dict, schema_path: str | Path) -> None:
    """Check `config` against the JSON schema (the stage settings' parts generated from their dataclasses);
    the most relevant violation as one TocomError line. The grid's size is checked first: it needs only the
    lengths of the lists, where the schema would visit every item."""
    import jsonschema

    check_grid_size(config)
    schema = config_schema(schema_path)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise TocomError(f"{where}: {_schema_message(error)}")


def _schema_message(error) -> str:
    """jsonschema's message, with the values a uniqueness rule found twice named and a pattern explained."""
    if error.validator == "uniqueItems" and isinstance(error.instance, list):
        seen, twice = set(), []
        for v in error.instance:
            key = json.dumps(v, sort_keys=True, default=str)
            if key in seen and v not in twice:
                twice.append(v)
            seen.add(key)
        return (f"{', '.join(map(repr, twice))} listed more than once; give each value once (a repeated value "
                "would repeat runs and count them twice in the tables)")
    if error.validator == "pattern" and error.schema.get("description"):
        return f"{error.message}: {error.schema['description']}"
    return error.message


def grid_size(config: dict) -> dict[str, int]:
    """Upper bounds of the jobs and evaluation rows `config` expands to, from the lengths of its lists alone
    (nothing is expanded or validated, so it is instant on any config). It counts what `Grid` creates, without
    the sharing that makes Grid's real counts smaller: a fine-tune per method at every source, each with a
    selection companion and its search (candidates and the select job); an evaluation per fine-tune, with
    targets x (plain rows per split + per plugin variant the s grid on one split and the best s on the others)."""
    def n(x) -> int:
        return len(x) if isinstance(x, (list, tuple, dict)) else 1

    def get(d, key, default=None):
        return d.get(key, default) if isinstance(d, dict) else default

    seeds = n(get(config, "seeds", [0]))
    ev = get(config, "evaluate", {})
    scales, splits = n(get(ev, "scales", EvalSettings().scales)), n(get(ev, "splits", EvalSettings().splits))

    def finetune(recipe) -> int:     # the final model, its companion, its search candidates and their select job
        search = get(get(get(config, "recipes", {}), recipe, {}), "search", {})
        candidates = math.prod(n(get(search, name) or None) for name in ("lr", "adapter_scale"))   # unset: 1
        return 2 + (candidates + 1 if search else 0)

    def rows(targets, variants) -> int:
        return n(targets) * (splits + n(variants) * (scales + splits))

    jobs, row_count, datasets = n(get(config, "backbones", {})), 0, 0      # pretraining; tasks made: one per dataset
    for study in get(config, "studies", []) or []:
        for block in get(study, "sets", []) or []:
            datasets += n(get(block, "datasets", []))
            models = n(get(block, "datasets", [])) * n(get(block, "sources", [])) * seeds
            jobs += models * (finetune(get(block, "recipe")) + 1) + n(get(block, "variants", []))
            row_count += models * rows(get(block, "targets", []), get(block, "variants", []))
    for t in get(config, "transfer", []) or []:
        jobs += n(get(t, "b", [])) * seeds * (2 * finetune(get(t, "recipe_a")) + finetune(get(t, "recipe_b")) + 1)
    jobs += sum(n(get(b, "modes", [])) for b in get(config, "bench", []) or [])
    seg = get(config, "segmentation")
    if seg:
        models = n(get(seg, "sources", [])) * seeds
        jobs += 2 * models + n(get(seg, "variants", []))
        row_count += models * rows(get(seg, "targets", []), get(seg, "variants", []))
    return {"jobs": jobs + datasets, "rows": row_count}


def check_grid_size(config: dict) -> None:
    """Refuse, before anything is expanded, a config whose grid exceeds MAX_JOBS jobs or MAX_ROWS rows."""
    size = grid_size(config)
    for what, count, ceiling, name in (("jobs", size["jobs"], MAX_JOBS, "MAX_JOBS"),
                                       ("evaluation rows", size["rows"], MAX_ROWS, "MAX_ROWS")):
        if count > ceiling:
            raise TocomError(f"the grid would expand to up to {count:,} {what}, more than the ceiling of {ceiling:,} "
                             f"(tocom/experiments.py {name}); ask for fewer seeds, datasets, degrees or variants, "
                             "or split the config")


def _defined(name, section: dict, what: str, where: str = "") -> None:
    """Refuse a name that the config's `<what>s` section does not define, naming those it does."""
    if name not in section:
        raise TocomError(f"{where}{what} {name!r} is not defined under `{what}s`; define it or use one of "
                         f"{', '.join(section)}")


def is_generated(dataset: str) -> bool:
    """A task the workflow writes itself (`tocom make-tasks`) rather than one read from a release."""
    return dataset.split("/")[0] == layout.GENERATED_FAMILY


@lru_cache(maxsize=None)
def backbone_geometry(timm_name: str) -> dict:
    """Patch tokens, depth and max r of a timm ViT, built on the meta device (no memory, no weights)."""
    import torch

    from .compress import max_r
    from .models import create_backbone

    with torch.device("meta"):
        model = create_backbone(timm_name)            # an unknown name or a non-ViT is one TocomError line
    return {"patches": model.patch_embed.num_patches, "depth": len(model.blocks), "max_r": max_r(model),
            "has_head": model.num_classes > 0, "width": model.embed_dim, "prefix": model.num_prefix_tokens,
            "patch_size": int(model.patch_embed.patch_size[0]), "img_size": int(model.patch_embed.img_size[0]),
            "params": sum(p.numel() for p in model.parameters())}


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
    `train` at the same source r, which chooses s on `val` when the final model trained on val too;
    "chosen": a companion that would retrain its search's winning candidate (`Grid._selector`), so it is
    that candidate's model, linked (layout.CHOSEN_MODEL), and nothing trains.
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
        return layout.CHOSEN_MODEL if self.role == "chosen" else layout.ROLES[self.role]

    @property
    def chosen_path(self) -> str:
        """The search result a "chosen" companion is linked from."""
        return layout.path(layout.CHOSEN, **self.fields)


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

    chosen_path = FinetuneRun.chosen_path     # the search result this candidate competes in


@dataclass
class EvalRun(_Laid):
    """One fine-tuned model evaluated under `method` (the fine-tune's own, or any method for a model
    fine-tuned at source r = 0): plain at every target, each plugin at the targets of the study sets that name
    it for this model (`plugin_targets`), so a plugin is never evaluated at a degree pair no set asks for."""
    finetune: FinetuneRun
    method: str
    targets: set[int] = field(default_factory=set)
    plugin_targets: dict[str, set[int]] = field(default_factory=dict)    # variant -> its targets
    selector: FinetuneRun | None = None
    template = layout.EVAL

    @property
    def fields(self) -> dict:
        return {**self.finetune.fields, "method": self.method}

    @property
    def variants(self) -> set[str]:
        return set(self.plugin_targets)


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
        check_grid_size(config)
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
        self.teachers: dict[str, tuple[str, str, str]] = {}     # teacher-outputs file -> (backbone, method, variant)
        self._teacher_of: dict[tuple[str, str, str], str] = {}
        self._check_backbones(check_files)
        for resource in config.get("resources", {}).values():
            job_processes(resource)             # (processes given to a GPU job is an error)
        self._expand_studies()
        self._expand_transfer()
        self._expand_bench()
        self._expand_segmentation()
        self._check_plugins()
        self._check_resources()
        if check_geometry:
            self._check_gpu_fit()
        self._share_teachers()
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
        return s.replace(split="train") if run.role != "final" else s

    def distill_settings(self, backbone: str, variant: str) -> tuple[str, DistillSettings]:
        """(pre-training dataset, settings) of a plugin: `distill`, the backbone's overrides, the variant's."""
        values = {**self.config["distill"], **self.backbones[backbone].get("distill", {}), **self.variants[variant]}
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
        _defined(recipe, self.recipes, "recipe")
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
        self.searches.update({cand.path: cand for cand in self._search_runs(run)})
        return run

    def _search_runs(self, run: FinetuneRun) -> list[SearchRun]:
        """The candidates whose winner `run` uses. At source r = 0 nothing is compressed, so one search
        (filed under UNCOMPRESSED) serves every method of a backbone and dataset."""
        search = self.recipes[run.recipe][1]
        if not search:
            return []
        method = run.method if search.source_r else UNCOMPRESSED
        return [SearchRun(run.backbone, method, run.dataset, run.seed, run.recipe, search.source_r,
                          tuple(sorted(overrides.items()))) for overrides in search.candidates()]

    def _selector(self, run: FinetuneRun) -> FinetuneRun | None:
        """The companion that chooses s when the final model trained on the selection split too: trained on
        `train` (role "select"), or, when that would retrain its search's winning candidate, the winner
        itself (role "chosen": `retrains_winner`)."""
        select = self.eval_settings.select_split
        if not splits_overlap(self.finetune_settings(run).split, select):
            return None
        if splits_overlap("train", select):
            raise TocomError(f"evaluate.select_split {select!r} overlaps every training split; choose s on 'val'")
        sel = FinetuneRun(run.backbone, run.method, run.dataset, run.source, run.seed, run.recipe, role="select")
        if self.retrains_winner(sel):
            return replace(sel, role="chosen")
        self.finetunes[sel.path] = sel
        return sel

    def retrains_winner(self, run: FinetuneRun) -> bool:
        """Would `run`, with its search's choice applied (`tocom finetune --chosen`), be the winning candidate
        trained again? True when it trains on `train` at the search's source r and method, and applying any
        candidate's searched settings (search.applied) to its settings gives that candidate's exactly: the same
        model from the same seed, whichever candidate wins."""
        from .search import applied

        cands = self._search_runs(run)
        if not cands or any((c.method, c.source) != (run.method, run.source) for c in cands):
            return False
        mine = self.finetune_settings(run)
        theirs = [self.finetune_settings(c) for c in cands]
        keys = applied([t.asdict() for t in theirs])
        return all(mine.replace(**{k: getattr(t, k) for k in keys}) == t for t in theirs)

    def _expand_studies(self) -> None:
        for study in self.config.get("studies", []):
            backbone, method = study["backbone"], study["method"]
            self._backbone(backbone)
            for block in study["sets"]:
                variants = list(block.get("variants", []))
                for v in variants:
                    _defined(v, self.variants, "variant", f"study {study['name']}: ")
                    self.plugins.add((backbone, method, v))
                self._check_degrees(backbone, [*block["sources"], *block["targets"]], f"study {study['name']}")
                for dataset in block["datasets"]:
                    for source in block["sources"]:
                        for seed in self.seeds:
                            run = self._finetune(backbone, method, dataset, source, seed, block["recipe"])
                            ev = EvalRun(run, method)
                            ev = self.evals.setdefault(ev.path, ev)
                            ev.targets.update(int(t) for t in block["targets"])
                            for v in variants:
                                ev.plugin_targets.setdefault(v, set()).update(int(t) for t in block["targets"])
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
                    run = TransferRun(t["backbone"], t["method"], t["a"], b, int(t["high_r"]), int(t["target_r"]),
                                      seed, models)
                    if any(other.path == run.path for other in self.transfers):
                        raise TocomError(f"transfer: {t['a']} -> {b} at high_r {run.high_r} on {t['backbone']}/"
                                         f"{t['method']} is asked for twice (Table 1 would count it twice); list "
                                         "it once")
                    self.transfers.append(run)

    def _expand_bench(self) -> None:
        for b in self.config.get("bench", []):
            self._backbone(b["backbone"])
            self._check_degrees(b["backbone"], b["r"], "bench")
            self.bench_settings(b)
            for mode in b["modes"]:
                run = BenchRun(b["backbone"], b["method"], mode)
                if run in self.benches:
                    raise TocomError(f"bench: {b['backbone']}/{b['method']} {mode} is asked for twice (both would "
                                     "write one file); list it once")
                self.benches.append(run)

    def _expand_segmentation(self) -> None:
        """Table 11: Segmenters at each source (tome_ffn), each evaluated at every target with the
        backbone's tome_ffn plugins; degrees must be multiples of each plugin's r_step, within its r_max
        and within half the encoder's patch tokens at the crop size."""
        seg = self.config.get("segmentation")
        if not seg:
            return
        backbone = seg["backbone"]
        self._backbone(backbone)
        s = self.segment_settings()
        degrees = sorted({int(r) for r in [*seg["sources"], *seg["targets"]]})
        if self.check_geometry:
            half = (s.crop_size // self.geometry(backbone)["patch_size"]) ** 2 // 2
            if degrees[-1] > half:
                raise TocomError(f"segmentation: r {degrees[-1]} exceeds what {backbone} carries with tome_ffn at "
                                 f"{s.crop_size} px (max r = {half}, half of the patch tokens)")
        for v in seg.get("variants", []):
            _defined(v, self.variants, "variant", "segmentation: ")
            _, ds = self.distill_settings(backbone, v)
            off = [r for r in degrees if r > ds.r_max or r % ds.r_step]
            if off:
                raise TocomError(f"segmentation: degrees {off} are not on plugin {v!r}'s ladder (multiples of "
                                 f"r_step {ds.r_step} up to r_max {ds.r_max})")
            self.plugins.add((backbone, SEGMENT_METHOD, v))
        runs = (SegmentRun(backbone, seg["dataset"], int(r), int(seed)) for r in seg["sources"] for seed in self.seeds)
        self.segments.update({run.path: run for run in runs})

    def segment_run(self, **fields) -> SegmentRun:
        return self.segments[layout.path(layout.SEGMENT, **fields)]

    # ---- checks --------------------------------------------------------------------------------
    def _backbone(self, key: str) -> dict:
        _defined(key, self.backbones, "backbone")
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

    # ---- resources and GPU memory ----------------------------------------------------------------
    def resources_of(self, kind: str, recipe: str | None = None) -> dict:
        """The `resources` entry a job runs with: `kind`'s, with a recipe's fine-tunes (its searches, final models
        and companions) taking `finetune.<recipe>` over `finetune` (e.g. CIFAR-100's batch of 1,024 on 8 GPUs)."""
        res = self.config["resources"]
        return {**res[kind], **(res.get(f"{kind}.{recipe}") or {})} if recipe else dict(res[kind])

    def _check_resources(self) -> None:
        res = self.config["resources"]
        for key in res:
            kind, _, recipe = key.partition(".")
            if not recipe:
                continue
            if recipe not in self.recipes:
                raise TocomError(f"resources.{key}: no recipe {recipe!r} under `recipes`; name one of "
                                 f"{', '.join(self.recipes)}")
            extra = sorted(k for k in ("runtime", "mem_mb") if k in res[key] and k not in res[kind])
            if extra:
                raise TocomError(f"resources.{key} sets {', '.join(extra)}, which resources.{kind} leaves to the "
                                 f"profile; set it in resources.{kind} too")

    def resource_key(self, kind: str, recipe: str | None = None) -> str:
        """`kind`, or `kind.recipe` when the config gives that recipe's jobs an entry of their own."""
        return f"{kind}.{recipe}" if recipe and f"{kind}.{recipe}" in self.config["resources"] else kind

    def gpu_needs(self, dtype_bytes: int = 2) -> list[tuple[str, str, Need]]:
        """(resources key, job, per-GPU need) of every GPU job of the grid, each at its largest degree's cost (r = 0),
        with activations at `dtype_bytes` (2: fp16/bf16 autocast). See tocom/gpus.py."""
        def need(backbone, batch, key, img_size=None, trains_all=True, backward=True, extra_depth=0):
            g = self.geometry(backbone)
            tokens = g["prefix"] + (g["patches"] if not img_size else (img_size // g["patch_size"]) ** 2)
            gpus = self.resources_of(*key.split(".", 1)).get("gpus", 0) or 1
            return memory_need(params=g["params"], tokens=tokens, width=g["width"], depth=g["depth"] + extra_depth,
                               batch=batch, gpus=gpus, trains_all=trains_all, backward=backward,
                               dtype_bytes=dtype_bytes)

        out = []
        for backbone, method, variant in sorted(self.plugins):
            _, s = self.distill_settings(backbone, variant)
            out.append(("distill", layout.job(layout.PLUGIN, backbone=backbone, method=method, variant=variant),
                        need(backbone, s.batch_size, "distill", s.img_size, trains_all=False)))
        for run in [*self.finetunes.values(), *self.searches.values()]:
            s, key = self.finetune_settings(run), self.resource_key("finetune", run.recipe)
            out.append((key, run.job, need(run.backbone, s.batch_size, key, trains_all=s.mode == "full")))
        out += [("eval", r.job, need(r.fields["backbone"], self.eval_settings.batch_size, "eval", backward=False))
                for r in [*self.evals.values(), *self.transfers]]
        for b in self.benches:
            entry = next(x for x in self.config["bench"] if (x["backbone"], x["method"]) == (b.backbone, b.method))
            out.append(("bench", b.job, need(b.backbone, entry["batch_size"], "bench", backward=b.mode == "train")))
        if self.segments:
            seg, s = self.config["segmentation"], self.segment_settings()
            kind = "segment" if "segment" in self.config["resources"] else "finetune"
            ev = self.eval_settings.replace(**(seg.get("evaluate") or {}))
            for run in self.segments.values():
                out.append((kind, run.job, need(run.backbone, s.batch_size, kind, s.crop_size,
                                                extra_depth=s.decoder_depth)))
                out.append(("eval", layout.job(layout.SEGMENT_EVAL, **run.fields),
                            need(run.backbone, ev.batch_size, "eval", s.crop_size, backward=False,
                                 extra_depth=s.decoder_depth)))
        return out

    def _check_gpu_fit(self) -> None:
        """A job whose per-GPU batch cannot fit the GPU its `resources` entry names stops the run here."""
        for key, job, need in self.gpu_needs():
            entry = self.resources_of(*key.split(".", 1))
            gpu = entry.get("gpu_model")
            if not gpu or not entry.get("gpus") or need.fits(gpu):
                continue
            larger = [g for g in GPUS if need.fits(g)]
            raise TocomError(
                f"resources.{key}.gpu_model {gpu} ({gpu_spec(gpu).memory_gb:g} GB): job {job} needs "
                f"{need.total_gb:.1f} GB per GPU ({need.batch_per_gpu} images per GPU: {need.activations_gb:.1f} GB "
                f"of activations, {need.state_gb:.1f} GB of weights and optimizer state; tocom/gpus.py); give it "
                f"more GPUs or a smaller batch" + (f", or name {larger[0]}" if larger else ""))

    def _share_teachers(self) -> None:
        """Teacher outputs computed once (DistillSettings.teacher = "once") for several plugins: the plugins of a
        backbone and method whose teachers see the same images at the same degrees share one file
        (layout.TEACHER, made by its own job) when two or more do; one alone keeps its own as it goes (a file
        of every image at every degree would cost it more than it saves)."""
        groups: dict[tuple[str, str], dict[tuple, list[str]]] = {}
        for backbone, method, variant in sorted(self.plugins):
            dataset, s = self.distill_settings(backbone, variant)
            if s.teacher != "once" or s.loss == "cls":      # the cls loss has no teacher
                continue
            key = (dataset, s.loss == "features", *(getattr(s, k) for k in DistillSettings.TEACHER_KEYS if k != "method"))
            groups.setdefault((backbone, method), {}).setdefault(key, []).append(variant)
        for (backbone, method), by_key in groups.items():
            variants = max(by_key.values(), key=len)
            if len(variants) > 1:
                path = layout.path(layout.TEACHER, backbone=backbone, method=method)
                self.teachers[path] = (backbone, method, min(variants, key=lambda v: (v != "tocom", v)))
                self._teacher_of.update({(backbone, method, v): path for v in variants})

    def teacher_file(self, backbone: str, method: str, variant: str) -> str | None:
        """The teacher-outputs file a plugin reads (`_share_teachers`), or None."""
        return self._teacher_of.get((backbone, method, variant))

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
        return ({r.dataset for r in [*self.finetunes.values(), *self.segments.values()]}
                | {self.pretrain_settings(k)[0] for k in self.pretrained_backbones()}
                | {self.distill_settings(bb, v)[0] for bb, _, v in self.plugins})

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
        from .data.transforms import augments

        self.task_settings()
        for backbone, method, variant in sorted(self.plugins):
            dataset, s = self.distill_settings(backbone, variant)
            if s.teacher == "once" and augments(get_spec(dataset).default_transform, True):
                raise TocomError(f"distill ({backbone}, {variant}): teacher once needs images read without "
                                 f"augmentation, but {dataset} is read with DeiT's; use teacher live")
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
        return [*(layout.path(layout.PLUGIN, backbone=b, method=m, variant=v) for b, m, v in sorted(self.plugins)),
                *sorted(self.evals), *(t.path for t in self.transfers), *(b.path for b in self.benches),
                *sorted(r.eval_path for r in self.segments.values())]
