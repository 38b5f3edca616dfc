"""The paper-shaped smoke (workflow/scripts/paper_smoke.py, docs/paper_smoke.md): config/paper.yaml's DAG,
real backbones and recipes on fixture data in every real layout, with random-init official-style checkpoints.

Fast: the derived config validates and expands to one job per rule type on the real timm backbones, it
follows config/paper.yaml (derived, not copied), every fixture dataset loads for every split, and a
Snakemake dry run has every rule type of the paper DAG. Slow (`slow`): DeiT-B/384 patched forward.
Opt-in (TOCOM_PAPER_SMOKE=1; ~10 minutes on 2 shared CPU cores, over CI's budget): the full run, and the
DeiT-B/384 distill -> fine-tune -> evaluate chain through the CLI.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tocom.data import VTAB_TASKS, build_dataset, get_spec
from tocom.experiments import Grid, job_processes, job_workers, resolve_variants, validate_config
from tocom.models import PAPER_BACKBONES, read_state_dict

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workflow" / "scripts" / "paper_smoke.py"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
FULL_RUN = os.environ.get("TOCOM_PAPER_SMOKE") == "1"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}

spec = importlib.util.spec_from_file_location("paper_smoke", SCRIPT)
paper_smoke = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paper_smoke)

# Jobs per rule of the derived config (docs/paper_smoke.md): 9 plugins (DeiT-B ToMe: tocom + the Table 5
# ablations + s = 1; EViT; IdleViT; DeiT-S; MAE), 8 fine-tunes (CIFAR r0 + r16 for Table 1, FGVC, VTAB-1k,
# EViT, IdleViT, DeiT-S, MAE), 7 companions of the evaluated models (every final model trains on all of its
# training data): 5 trained on `train` (CIFAR-100 r0, EViT and IdleViT CIFAR-100 r16, DeiT-S and MAE VTAB-1k r16)
# and 2 that are their r = 0 search's winner, linked (CUB-200, VTAB-1k cifar); searches of 2 candidates (FGVC lr;
# VTAB-1k adapter scale per backbone), 7 evaluations, 1 transfer, 3 bench modes; every report item once.
JOBS = {"distill": 9, "finetune": 8, "finetune_select": 5, "search_candidate": 8, "search_select": 4,
        "search_chosen": 2, "evaluate": 7, "transfer": 1, "bench": 3, "aggregate": 1, "assemble_report": 1}
PLUGINS = ([("deit_b", "tome", v) for v in ("tocom", "shared", "cls", "no_inversion", "s1")]
           + [("deit_b", "evit", "tocom"), ("deit_b", "idle", "tocom"), ("deit_s", "tome", "tocom"),
              ("mae_b", "tome", "tocom")])
SEGMENTATION = PAPER.get("segmentation")
if SEGMENTATION:      # Table 11: one Segmenter (and its tome_ffn plugins) on the distilled DeiT-B/384
    JOBS.update(distill=JOBS["distill"] + len(SEGMENTATION.get("variants", [])), segment_finetune=1,
                segment_evaluate=1)
    PLUGINS += [(SEGMENTATION["backbone"], "tome_ffn", v) for v in SEGMENTATION.get("variants", [])]
FGVC = ("cub200", "stanford_cars", "stanford_dogs", "oxford_flowers102")


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """FOLDER written by the script exactly as docs/paper_smoke.md runs it; the 1.1 GB of checkpoints go
    at the end of the session."""
    folder = tmp_path_factory.mktemp("paper_smoke")
    res = subprocess.run([sys.executable, str(SCRIPT), str(folder)], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    yield folder
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)


@pytest.fixture(scope="session")
def config(smoke):
    return yaml.safe_load((smoke / "paper_smoke.yaml").read_text())


# ---- fast: the derived config ------------------------------------------------------------------------
def test_config_validates_and_expands_to_one_job_per_rule_type(smoke, config):
    validate_config(config, SCHEMA)
    grid = Grid(config)                  # data roots, checkpoints, geometry: every check of the real run
    assert config["name"] == "paper_smoke" and config["device"] == "cpu" and config["scale"] == "paper"
    assert config["data_root"] == str(smoke / "data")
    timm_names = {bb["timm"] for bb in config["backbones"].values()}
    assert timm_names == {bb["timm"] for bb in PAPER["backbones"].values()}
    assert {"deit_base_patch16_224", "deit_small_patch16_224", "vit_base_patch16_224.mae"} <= timm_names
    for key, bb in config["backbones"].items():
        assert "pretrained" not in bb and Path(bb["checkpoint"]).parent == smoke / "checkpoints", key
    assert config["backbones"]["mae_b"]["distill"]["loss"] == "features"

    assert sorted(grid.plugins) == sorted(PLUGINS)
    finals = sorted((r.backbone, r.method, r.dataset, r.source) for r in grid.finetunes.values() if r.role == "final")
    assert finals == [("deit_b", "evit", "cifar100", 16), ("deit_b", "idle", "cifar100", 16),   # r = 0: shared ("none")
                      ("deit_b", "none", "cifar100", 0), ("deit_b", "none", "cub200", 0),
                      ("deit_b", "none", "vtab/cifar", 0), ("deit_b", "tome", "cifar100", 16),
                      ("deit_s", "tome", "vtab/patch_camelyon", 16), ("mae_b", "tome", "vtab/clevr_count", 16)]
    # one VTAB-1k task per group: natural (DeiT-B), specialized (DeiT-S), structured (MAE)
    assert [VTAB_TASKS[d.split("/")[1]] for *_, d, _ in finals if d.startswith("vtab/")] == \
        ["natural", "specialized", "structured"]
    selects = sorted((r.backbone, r.method, r.dataset, r.source) for r in grid.finetunes.values()
                     if r.role == "select")
    assert selects == [("deit_b", "evit", "cifar100", 16), ("deit_b", "idle", "cifar100", 16),
                       ("deit_b", "none", "cifar100", 0), ("deit_s", "tome", "vtab/patch_camelyon", 16),
                       ("mae_b", "tome", "vtab/clevr_count", 16)]
    chosen = sorted((e.selector.backbone, e.selector.dataset) for e in grid.evals.values()
                    if e.selector is not None and e.selector.role == "chosen")
    assert chosen == [("deit_b", "cub200"), ("deit_b", "vtab/cifar")] and len(chosen) == JOBS["search_chosen"]
    assert len(grid.searches) == JOBS["search_candidate"]
    assert len({c.chosen_path for c in grid.searches.values()}) == JOBS["search_select"]
    assert len(grid.evals) == JOBS["evaluate"] and all(ev.targets == {0, 16} for ev in grid.evals.values())
    assert [(t.a, t.b, t.high_r, t.target_r) for t in grid.transfers] == [("cifar100", "cub200", 16, 16)]
    assert sorted(b.mode for b in grid.benches) == ["infer", "plugin", "train"]
    # one optimisation step on a handful of images; evaluation, s grid and searches small
    for stage in [config["distill"], *config["recipes"].values()]:
        assert (stage["epochs"], stage["batch_size"], stage["limit"]) == (1, paper_smoke.N, paper_smoke.N)
    assert config["evaluate"]["limit"] == paper_smoke.N and len(config["evaluate"]["scales"]) == 2
    for name, recipe in config["recipes"].items():
        for key, values in (recipe.get("search") or {}).items():
            if isinstance(values, list):
                assert values == PAPER["recipes"][name]["search"][key][:2]
    assert all(r["gpus"] == 0 and r["cpus"] == 1 for r in config["resources"].values())
    # the GPU jobs' machinery on CPU: loader workers in every job, the distillation under 2-process DDP (gloo)
    assert all(job_workers(r) == paper_smoke.WORKERS >= 1 for r in config["resources"].values())
    assert job_processes(config["resources"]["distill"]) == paper_smoke.DDP_PROCESSES == 2
    assert config["precision"] == PAPER["precision"]
    assert config["bench"][0]["repeats"] == 1 and config["bench"][0]["r"] == [0, 16]
    if SEGMENTATION:
        seg = config["segmentation"]
        assert len(grid.segments) == 1 and seg["sources"] == [min(SEGMENTATION["sources"])]
        assert seg["targets"] == [min(SEGMENTATION["targets"]), max(SEGMENTATION["targets"])]
        assert seg["recipe"]["iterations"] == 1 and seg["recipe"]["crop_size"] == SEGMENTATION["recipe"]["crop_size"]


def test_config_keeps_the_papers_recipes_and_report(config):
    """Everything but the size of the run is config/paper.yaml's: the recipes (RandAugment comes with the
    datasets' transform; mixup, cutmix, drop-path, label smoothing, AdaptFormer), distillation, r_max, report."""
    resized = {"epochs", "batch_size", "limit", "search", "min_lr"}     # min_lr: 0 under a batch-scaled lr
    for name, recipe in PAPER["recipes"].items():
        assert {k: v for k, v in recipe.items() if k not in resized} == \
            {k: v for k, v in config["recipes"][name].items() if k not in resized}, name
    assert {k: v for k, v in PAPER["distill"].items() if k not in resized} == \
        {k: v for k, v in config["distill"].items() if k not in resized}
    assert resolve_variants(config) == resolve_variants(PAPER) and config["report"] == PAPER["report"]
    assert config["recipes"]["cifar"]["mixup"] == 0.8 and config["distill"]["r_max"] == 16
    assert {k: v for k, v in config["evaluate"].items() if k not in ("limit", "scales")} == \
        {k: v for k, v in PAPER["evaluate"].items() if k not in ("limit", "scales")}


def test_config_is_derived_from_the_paper_config(tmp_path):
    """A change to config/paper.yaml reaches the smoke config: it is computed, never a copy."""
    paper = copy.deepcopy(PAPER)
    paper["recipes"]["cifar"]["lr"] = 1.234e-4
    paper["recipes"]["vtab"]["adapter_dim"] = 16
    paper["distill"]["rank"] = 3
    paper["studies"][0]["sets"][0]["datasets"] = ["oxford_flowers102"]
    derived = paper_smoke.derive_config(paper, tmp_path)
    assert derived["recipes"]["cifar"]["lr"] == 1.234e-4 and derived["recipes"]["vtab"]["adapter_dim"] == 16
    assert derived["distill"]["rank"] == 3
    assert derived["studies"][0]["sets"][0]["datasets"] == ["oxford_flowers102"]
    assert paper_smoke.derive_config(PAPER, tmp_path)["recipes"]["cifar"]["lr"] == PAPER["recipes"]["cifar"]["lr"]


def test_checkpoints_are_official_style(smoke):
    """{"model": state_dict} of the real backbones (MAE headless), read as the pipeline reads them."""
    names = paper_smoke.backbones_of(PAPER)
    assert "deit_base_patch16_384" in names and set(PAPER_BACKBONES) <= set(names)
    for name in names:
        state = read_state_dict(smoke / "checkpoints" / paper_smoke.checkpoint_name(name))
        assert "pos_embed" in state and "blocks.11.attn.qkv.weight" in state, name
        if name.endswith(".mae"):
            assert not any(k.startswith("head") for k in state)
        else:
            assert state["head.weight"].shape[0] == 1000
    assert read_state_dict(smoke / "checkpoints" / paper_smoke.checkpoint_name("deit_base_patch16_384"))[
        "pos_embed"].shape[1] == 24 * 24 + 1
    assert not list((smoke / "checkpoints").glob("*.tmp"))


def _splits_used(config: dict, grid: Grid) -> dict[str, set[str]]:
    """Dataset -> every split the run reads: training splits, search train/val, evaluation splits."""
    used: dict[str, set[str]] = {}
    for bb, _, v in grid.plugins:
        dataset, s = grid.distill_settings(bb, v)
        used.setdefault(dataset, set()).add(s.split)
    for run in [*grid.finetunes.values(), *grid.searches.values()]:
        used.setdefault(run.dataset, set()).update({grid.finetune_settings(run).split, *grid.eval_settings.splits,
                                                    grid.eval_settings.select_split})
    for run in getattr(grid, "segments", {}).values():
        used.setdefault(run.dataset, set()).update({grid.segment_settings().split, *grid.eval_settings.splits,
                                                    grid.eval_settings.select_split})
    return used


def test_every_fixture_dataset_loads(smoke, config):
    """Every split the run uses (and all four of every fixture: the four FGVC releases and 19 VTAB-1k tasks),
    through build_dataset at 224 px with each dataset's own transform; labels within the heads, first and
    last class present."""
    grid = Grid(config, check_geometry=False)
    used = _splits_used(config, grid)
    assert set(used) == {"imagenet", "cifar100", "cub200", "vtab/cifar", "vtab/patch_camelyon",
                         "vtab/clevr_count"} | ({SEGMENTATION["dataset"]} if SEGMENTATION else set())
    names = {"imagenet", "cifar100", *FGVC, *(f"vtab/{t}" for t in VTAB_TASKS)}
    for name in sorted(names):
        for split in ("train", "val", "trainval", "test"):
            ds = build_dataset(name, root=grid.data_root(name), split=split, img_size=224, limit=paper_smoke.N
                               if split in used.get(name, ()) else None)
            assert len(ds) > 0 and max(ds.targets) < get_spec(name).num_classes
            x, y = ds[0]
            assert x.shape == (3, 224, 224) and 0 <= y < ds.num_classes, (name, split)
        full = build_dataset(name, root=grid.data_root(name), split="trainval", img_size=224)
        if name != "imagenet":        # (ImageNet: 1,000 classes, every one present in train)
            assert min(full.targets) == 0 and max(full.targets) == full.num_classes - 1, name
    if SEGMENTATION and SEGMENTATION["dataset"] == "ade20k":     # label maps: 0..149 and 255 (ADE's "other")
        crop = SEGMENTATION["recipe"]["crop_size"]
        for split in ("train", "val", "trainval", "test"):
            ds = build_dataset("ade20k", root=grid.data_root("ade20k"), split=split, img_size=crop)
            x, y = ds[0]
            assert x.shape[0] == 3 and y.ndim == 2 and set(y.unique().tolist()) <= set(range(150)) | {255}
            if split in ("val", "test"):     # whole label maps (training items are random crops)
                assert int(y.max()) == 255 and int(y[y != 255].max()) == 149
    # ImageNet: all 1,000 wnids, class index = timm's (the pretrained heads') index
    from timm.data import ImageNetInfo

    inet = build_dataset("imagenet", root=grid.data_root("imagenet"), split="trainval", img_size=224)
    assert inet.classes == ImageNetInfo().label_names() and sorted(set(inet.targets)) == list(range(1000))
    odd = [i for i, r in enumerate(inet.record_ids) if "_odd" in inet.paths[r]]     # grayscale, CMYK, PNG
    assert len(odd) == 3
    for i in odd:
        assert inet[i][0].shape == (3, 224, 224)


def test_dry_run_has_every_rule_type_of_the_paper_dag(smoke, tmp_path):
    args = ["--configfile", str(smoke / "paper_smoke.yaml"), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
    listed = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules", *args], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=600)      # the report's rules are generated
    assert listed.returncode == 0, listed.stderr[-3000:]
    rules = set(listed.stdout.split())
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", res.stdout, re.M) if k != "total"}
    # no pretraining, no generated tasks, and no teacher outputs computed once (the paper's distillation augments)
    assert set(counts) == (rules - {"pretrain_backbone", "make_task", "teacher_outputs"}) | {"all"}
    assert {k: counts[k] for k in JOBS} == JOBS
    assert all(n == 1 for k, n in counts.items() if k not in JOBS)    # every report item once


# ---- fast: config/gpu.yaml derives the same way ---------------------------------------------------------
GPU = yaml.safe_load((REPO / "config" / "gpu.yaml").read_text())
GPU_JOBS = {"distill": 4, "finetune": 2, "search_candidate": 2, "search_select": 1, "search_chosen": 1,
            "evaluate": 3, "bench": 3, "aggregate": 1, "assemble_report": 1}


@pytest.fixture(scope="session")
def gpu_smoke(smoke):
    """config/gpu.yaml's derived config, on the same fixtures (`--config config/gpu.yaml`)."""
    res = subprocess.run([sys.executable, str(SCRIPT), str(smoke), "--config", str(REPO / "config" / "gpu.yaml")],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return smoke / "gpu_smoke.yaml"


def test_gpu_config_derives_validates_and_expands(gpu_smoke):
    """The one-GPU config: official DeiT-B, ToMe and EViT, CIFAR-100 and VTAB-1k, the shared and no-inversion
    ablations; derived with one job per rule type (its first seed, r = 0, targets 0 and 16), every check passing."""
    config = yaml.safe_load(gpu_smoke.read_text())
    validate_config(config, SCHEMA)
    grid = Grid(config)
    assert (config["name"], config["seeds"], config["scale"]) == ("gpu_smoke", [0], "paper")
    assert {bb["timm"] for bb in config["backbones"].values()} == {"deit_base_patch16_224"}
    assert sorted(grid.plugins) == [("deit_b", "evit", "tocom"), ("deit_b", "tome", "no_inversion"),
                                    ("deit_b", "tome", "shared"), ("deit_b", "tome", "tocom")]
    assert sorted((r.dataset, r.source, r.role) for r in grid.finetunes.values()) == \
        [("cifar100", 0, "final"), ("vtab/caltech101", 0, "final")]
    assert sorted((e.method, e.finetune.dataset) for e in grid.evals.values()) == \
        [("evit", "cifar100"), ("tome", "cifar100"), ("tome", "vtab/caltech101")]
    assert len(grid.searches) == GPU_JOBS["search_candidate"]
    resized = {"epochs", "batch_size", "limit", "search", "min_lr"}     # min_lr: 0 under a batch-scaled lr
    for name, recipe in GPU["recipes"].items():
        assert {k: v for k, v in recipe.items() if k not in resized} == \
            {k: v for k, v in config["recipes"][name].items() if k not in resized}, name
    assert config["report"] == GPU["report"]


def test_gpu_config_keeps_its_claims_and_seeds():
    """What config/gpu.yaml is for: ToMe 0 <-> 16 and EViT 0 -> 16 on CIFAR-100 and VTAB-1k tasks of all three
    groups, the shared/no-inversion ablation, 3 seeds, official DeiT-B weights, one A100 named for every job."""
    grid = Grid(GPU, check_files=False)
    assert len(GPU["seeds"]) >= 3 and GPU["backbones"]["deit_b"] == {"timm": "deit_base_patch16_224",
                                                                      "pretrained": True}
    tome = {(e.finetune.dataset, e.finetune.source, t) for e in grid.evals.values() if e.method == "tome"
            for t in e.targets}
    evit = {(e.finetune.dataset, e.finetune.source, t) for e in grid.evals.values() if e.method == "evit"
            for t in e.targets}
    groups = GPU["report"]["vtab_groups"]
    for d in ["cifar100", *(d for ds in groups.values() for d in ds)]:
        assert {(d, 0, 16), (d, 16, 0)} <= tome and (d, 0, 16) in evit, d
    assert all(groups[g] for g in ("natural", "specialized", "structured"))
    vtab = next(e for e in grid.evals.values() if e.finetune.dataset == "vtab/dtd" and e.finetune.source == 16)
    assert {"shared", "no_inversion"} <= vtab.variants
    assert {e["gpus"] for e in GPU["resources"].values()} == {1}
    assert {e["gpu_model"] for e in GPU["resources"].values()} == {"A100-40GB"}


def test_gpu_dry_run_has_its_rule_types(gpu_smoke, tmp_path):
    args = ["--configfile", str(gpu_smoke), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", res.stdout, re.M) if k != "total"}
    assert {k: counts.get(k) for k in GPU_JOBS} == GPU_JOBS
    assert all(n == 1 for k, n in counts.items() if k not in GPU_JOBS)    # every report item once


# ---- slow: DeiT-B/384 (not in config/paper.yaml) ------------------------------------------------------
@pytest.mark.slow
def test_deit_b384_patched_forward(smoke):
    """The 384 px backbone from its official-style checkpoint: 576 patch tokens, each method at r = 16 and
    at its largest r, and a merged ToCom plugin moving it 0 -> 16."""
    import torch

    import tocom
    from tocom.compress import max_r
    from tocom.models import create_backbone

    model = create_backbone("deit_base_patch16_384",
                            checkpoint=smoke / "checkpoints" / paper_smoke.checkpoint_name("deit_base_patch16_384")).eval()
    assert model.patch_embed.num_patches == 576 and max_r(model) >= 16
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        for method in ("tome", "evit", "idle"):
            tocom.patch(model, method)
            for r in (16, max_r(model)):
                tocom.set_r(model, r)
                assert model(x).shape == (1, 1000), (method, r)
        tocom.patch(model, "tome")
        plain = model(x)
        plugin = tocom.ToCom.for_model(model, r_max=16, rank=2)
        with tocom.compensate(model, plugin, source_r=0, target_r=16, scale=0.1, merge=True):
            assert model(x).shape == (1, 1000)
        assert torch.equal(model(x), plain)          # weights and r restored
    assert tocom.flops(model, 16)["gflops"] < tocom.flops(model, 0)["gflops"]


# ---- opt-in: the full run ------------------------------------------------------------------------------
def _final_files(config: dict, results: Path) -> list[Path]:
    grid = Grid(config, check_files=False, check_geometry=False)
    files = [results / p for p in grid.final_outputs()]
    files += [results / p for p in grid.finetunes]
    files += [results / c.path for c in grid.searches.values()] + [results / f"{c.path}.score.json"
                                                                   for c in grid.searches.values()]
    files += sorted({results / c.chosen_path for c in grid.searches.values()})
    files += [results / "tables" / f"{t}.csv" for t in ("eval", "transfer", "bench", "plugins", "models", "search",
                                                        "runtime")]
    files += [results / "tables" / "summary.md", results / "report.md"]
    for run in getattr(grid, "segments", {}).values():
        files += [results / run.path, results / "tables" / "segment.csv"]
    return files


@pytest.mark.slow
@pytest.mark.skipif(not FULL_RUN, reason="the full paper-shaped smoke takes ~10 min on 2 CPU cores; "
                                          "set TOCOM_PAPER_SMOKE=1 to run it")
def test_full_paper_smoke_run(smoke, config, tmp_path):
    import tocom
    from tocom.models import load_model

    # --keep-going: every independent failure in one run (it changes no job)
    res = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--keep-going", "--configfile",
                          str(smoke / "paper_smoke.yaml"), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=3 * 3600)
    results = tmp_path / "results" / "paper_smoke"
    logs = "\n".join(f"== {p}\n{p.read_text()[-1500:]}" for p in sorted(results.glob("logs/*/*.log"))
                     if "Traceback" in p.read_text() or "error" in p.read_text())
    assert res.returncode == 0, res.stderr[-3000:] + logs

    grid = Grid(config, check_files=False, check_geometry=False)
    r_max = {(bb, m, v): grid.distill_settings(bb, v)[1].r_max for bb, m, v in grid.plugins}
    for f in _final_files(config, results):
        assert f.is_file() and f.stat().st_size > 0, f
        rel = f.relative_to(results)
        if rel.parts[0] == "plugins":
            plugin = tocom.ToCom.load(f)
            assert plugin.r_max == r_max[(rel.parts[1], rel.parts[2], rel.stem)], rel
        elif f.suffix == ".safetensors" and rel.parts[0] != "segment":     # (Segmenters: segment-evaluate loads them)
            model, meta = load_model(f)
            assert meta["num_classes"] == get_spec(meta["dataset"]).num_classes == model.num_classes
        elif f.suffix == ".csv":
            assert len(pd.read_csv(f)) > 0, f
        elif f.suffix == ".json":
            json.loads(f.read_text())
    evals = pd.read_csv(results / "tables" / "eval.csv")
    assert set(zip(evals.backbone_key, evals.method, evals.dataset)) == {
        (ev.finetune.backbone, ev.method, ev.finetune.dataset)
        for ev in grid.evals.values()}
    assert {"tocom", "shared", "cls", "no_inversion", "s1"} == set(evals.variant.dropna())
    report = (results / "report.md").read_text()
    assert "### Table 10" in report and "### Table 1:" in report
    for item in (results / "report").iterdir():
        assert item.stat().st_size > 0, item
    figures = tmp_path / "figures" / "paper_smoke"
    assert len(list(figures.glob("*.png"))) == len(list(figures.glob("*.pdf"))) >= 6
    # nothing half-written or left behind: temp files, locks, resume state, Snakemake's incomplete markers
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".lock", ".resume"))
                 and ".snakemake" not in p.parts]
    assert not leftovers, leftovers
    incomplete = tmp_path / ".snakemake" / "incomplete"
    assert not incomplete.exists() or not any(incomplete.rglob("*"))
    assert not list((smoke / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
@pytest.mark.skipif(not FULL_RUN, reason="set TOCOM_PAPER_SMOKE=1 to run the DeiT-B/384 CLI chain (~1.5 min)")
def test_deit_b384_distill_finetune_evaluate(smoke, tmp_path):
    """DeiT-B/384 through the steps the workflow runs (384 px data path, 576 tokens): distill on the
    ImageNet fixture, AdaptFormer fine-tune at r = 16 with mixup/cutmix, evaluate with the plugin."""
    from tocom.models import load_model

    ckpt = smoke / "checkpoints" / paper_smoke.checkpoint_name("deit_base_patch16_384")
    data = smoke / "data"
    n = str(paper_smoke.N)
    steps = [
        ["distill", "--backbone", "deit_base_patch16_384", "--checkpoint", str(ckpt), "--dataset", "imagenet",
         "--data-root", str(data / "imagenet"), "--limit", n, "--batch-size", n, "--epochs", "1", "--r-max", "16",
         "--min-lr", "0",     # DeiT's lr x batch / 512 at this batch is below the default floor (refused)
         "--out", str(tmp_path / "plugin.safetensors")],
        ["finetune", "--backbone", "deit_base_patch16_384", "--checkpoint", str(ckpt), "--dataset", "vtab/dtd",
         "--data-root", str(data / "vtab-1k"), "--mode", "adaptformer", "--split", "train", "--limit", n,
         "--batch-size", n, "--epochs", "1", "--mixup", "0.8", "--cutmix", "1.0", "--r", "16",
         "--out", str(tmp_path / "model.safetensors")],
        ["evaluate", "--checkpoint", str(tmp_path / "model.safetensors"), "--data-root", str(data / "vtab-1k"),
         "--targets", "0", "16", "--plugin", f"tocom={tmp_path / 'plugin.safetensors'}", "--scales", "0.05", "0.1",
         "--limit", n, "--out", str(tmp_path / "eval.csv")],
    ]
    for step in steps:
        res = subprocess.run([sys.executable, "-m", "tocom.cli", *step, "--device", "cpu", "--quiet"], cwd=REPO,
                             env=ENV, capture_output=True, text=True, timeout=1800)
        assert res.returncode == 0, (step[0], res.stderr[-3000:])
    model, meta = load_model(tmp_path / "model.safetensors")
    assert model.patch_embed.img_size == (384, 384) and meta["num_classes"] == 47
    evals = pd.read_csv(tmp_path / "eval.csv")
    assert set(evals.target_r) == {0, 16} and set(evals.variant.dropna()) == {"tocom"}
