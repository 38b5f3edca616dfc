"""Data loading as the GPU jobs run it: loader workers (persistent, per-item seeds: batches independent of the
worker count and of restarts), DeiT's repeated augmentation, the workers and DDP processes a job of the workflow
gets from its `resources` entry, and the data-loading benchmark."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tocom.engine import common
from tocom.engine.bench import write_jpeg_folder
from tocom.errors import TocomError
from tocom.experiments import Grid, job_processes, job_workers

REPO = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
CPU = common.Runtime(torch.device("cpu"))


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """12 small photo-like JPEGs in ImageNet's layout, read with DeiT's training augmentation at 32 px."""
    from tocom.data import build_dataset

    root = tmp_path_factory.mktemp("jpegs")
    write_jpeg_folder(root, 12, 64, 48)
    return build_dataset("imagenet", root=str(root), split="trainval", img_size=32, augment=True)


def epochs(dl, which) -> list[torch.Tensor]:
    """The images of each epoch in `which`, concatenated, as `fit` iterates them (set_epoch first)."""
    out = []
    for epoch in which:
        dl.sampler.set_epoch(epoch)
        out.append(torch.cat([images for images, _ in dl]))
    return out


# ---- workers: persistent, and the batches do not depend on them ---------------------------------------------
def test_training_batches_are_the_same_with_any_worker_count_and_after_a_restart(jpegs):
    """Every item is augmented from its own seed (seed, epoch, rank, position): 0 workers, 2 persistent workers
    and a loader created afresh at epoch 2 (a resumed run) deliver the same images, while the augmentation does
    differ from epoch to epoch."""
    main = epochs(common.loader(jpegs, 4, CPU, train=True, seed=3), [0, 1, 2])
    workers = common.loader(jpegs, 4, CPU, train=True, seed=3, workers=2)
    assert workers.persistent_workers and workers.num_workers == 2
    two = epochs(workers, [0, 1, 2])
    resumed = epochs(common.loader(jpegs, 4, CPU, train=True, seed=3, workers=2), [2])
    for a, b in zip(main, two):
        assert torch.equal(a, b)
    assert torch.equal(main[2], resumed[0])
    assert not torch.equal(main[0], main[1])
    assert not torch.equal(main[0], epochs(common.loader(jpegs, 4, CPU, train=True, seed=4), [0])[0])


def test_loading_in_the_main_process_leaves_the_models_random_draws_alone(jpegs):
    """With 0 workers the augmentations run in the training process: its RNGs (degrees, dropout, mixup) must go on
    as if no image had been loaded, so a run draws the same with any worker count."""
    import random

    import numpy as np

    dl = common.loader(jpegs, 4, CPU, train=True, seed=0)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = torch.rand(3), np.random.rand(), random.random()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    next(iter(dl))
    drawn = torch.rand(3), np.random.rand(), random.random()
    assert torch.equal(expected[0], drawn[0]) and expected[1:] == drawn[1:]


def test_evaluation_loaders_take_workers_in_order(jpegs):
    dl = common.loader(jpegs, 5, CPU, train=False, seed=0, workers=2)
    assert dl.num_workers == 2 and dl.persistent_workers
    labels = torch.cat([y for _, y in dl])
    assert labels.tolist() == jpegs.targets and len(dl) == 3          # every image, in order, the last batch short


# ---- repeated augmentation -----------------------------------------------------------------------------------
class Indexed(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i


def order(n, repeats, world=1, rank=0, seed=0, epoch=0) -> list[int]:
    s = common.EpochOrder(Indexed(n), common.Runtime(torch.device("cpu"), rank=rank, world=world), seed, repeats)
    s.set_epoch(epoch)
    return [i for _, i in s]


def test_repeated_augmentation_draws_a_third_of_the_images_three_times_each():
    """DeiT's sampler: an epoch keeps its length (rounded down to 256s) but holds len / 3 distinct images, each three
    times, the copies on different ranks under DDP; deterministic in (seed, epoch)."""
    one = order(600, 3)
    assert len(one) == 512 and len(set(one)) == 512 // 3 + 1
    assert one[:3] == [one[0]] * 3                                          # one process: the copies side by side
    ranks = [order(600, 3, world=2, rank=k) for k in (0, 1)]
    assert [len(r) for r in ranks] == [256, 256]
    assert ranks[0][:2] == [ranks[0][0], ranks[1][0]] and ranks[0][0] == ranks[1][0] == ranks[0][1]  # 3 copies
    assert order(600, 3, seed=1) == order(600, 3, seed=1) != order(600, 3)  # the run seed, not the epoch alone
    assert order(600, 3, epoch=1) != one
    plain = order(600, 1)
    assert sorted(plain) == list(range(600))                                 # off: every image once


def test_repeated_copies_are_augmented_differently(jpegs):
    dl = common.loader(jpegs, 3, CPU, train=True, seed=0, repeats=3)
    dl.sampler.set_epoch(0)
    images, labels = next(iter(dl))
    assert len({int(y) for y in labels}) == 1                               # one image, three times
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])


def test_the_fine_tune_reaches_the_sampler_with_its_repeats(tmp_path):
    """`repeated_aug` of the recipe is what the training loop iterates: each drawn image three times per epoch."""
    from tocom.engine.finetune import train_classifier
    from tocom.models import create_backbone
    from tocom.settings import FinetuneSettings, RunSettings

    seen = []

    class Recording(Indexed):
        num_classes = 3

        def __getitem__(self, i):
            seen.append(i)
            return torch.zeros(3, 56, 56), i % 3

    model = create_backbone("tocom_vit_tiny_patch8_56", num_classes=3, embed_dim=24, num_heads=2, depth=2)
    s = FinetuneSettings(epochs=1, batch_size=6, repeated_aug=3, drop_path=0.0)
    train_classifier(model, Recording(12), tmp_path / "m.safetensors", {"backbone": "tocom_vit_tiny_patch8_56"}, s,
                     RunSettings(device="cpu", quiet=True))
    assert len(seen) == 12 and all(seen.count(i) == 3 for i in set(seen)) and len(set(seen)) == 4


def test_the_paper_config_repeats_where_the_authors_do():
    """On (ImageNet distillation, CIFAR-100 and FGVC fine-tuning: the authors' DeiT launch, appendix 6.0.1); off
    for VTAB-1k (resize only, 6.0.2) and in the CPU configs."""
    grid = Grid(PAPER, check_files=False, check_geometry=False)
    assert grid.distill_settings("deit_b", "tocom")[1].repeated_aug == 3
    assert {k: s.repeated_aug for k, (s, _) in grid.recipes.items()} == {"cifar": 3, "fgvc": 3, "vtab": 1}
    for name in ("cpu", "smoke"):
        config = yaml.safe_load((REPO / f"config/{name}.yaml").read_text())
        grid = Grid(config, check_files=False, check_geometry=False)
        assert all(s.repeated_aug == 1 for s, _ in grid.recipes.values())


# ---- workers and processes of a workflow job ---------------------------------------------------------------
@pytest.mark.parametrize("resource, processes, workers", [
    ({"gpus": 8, "cpus": 32}, 8, 3),          # the paper's distillation: 4 CPUs per rank, one for the rank
    ({"gpus": 1, "cpus": 8}, 1, 7),
    ({"gpus": 1, "cpus": 1}, 1, 1),           # a GPU job always gets a worker
    ({"gpus": 0, "cpus": 1}, 1, 0),           # a one-CPU CPU job decodes in its own process
    ({"gpus": 0, "cpus": 4}, 1, 3),
    ({"gpus": 0, "cpus": 4, "processes": 2}, 2, 1),
    ({"gpus": 0, "cpus": 1, "processes": 2, "workers": 1}, 2, 1),
    ({"gpus": 2, "cpus": 8, "workers": 0}, 2, 0),
])
def test_jobs_get_workers_from_their_cpus(resource, processes, workers):
    assert job_processes(resource) == processes and job_workers(resource) == workers


def test_processes_are_for_cpu_jobs():
    with pytest.raises(TocomError, match="one process per GPU"):
        job_processes({"gpus": 2, "processes": 4})


def _dry_run_commands(configfile: str, *config) -> list[str]:
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", "--configfile", configfile,
                          "--config", *config], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return [line for line in res.stdout.splitlines() if "-m tocom.cli" in line]


def test_paper_dry_run_commands_carry_workers_from_the_jobs_cpus(tmp_path):
    """Every training and evaluation command of the paper DAG loads its data with --workers N (N >= 1, from its
    resources entry) in the authors' precision; the 8-GPU distillation runs 8 ranks under torchrun."""
    for d in ("imagenet", "cifar100", "cub200", "stanford_cars", "stanford_dogs", "oxford_flowers102", "vtab-1k",
              "ade20k"):
        (tmp_path / d).mkdir()
    commands = _dry_run_commands("config/paper.yaml", f"data_root={tmp_path}")
    kind = {"distill": "distill", "finetune": "finetune", "evaluate": "eval", "transfer": "eval",
            "segment-finetune": PAPER["resources"].get("segment") and "segment" or "finetune",
            "segment-evaluate": "eval"}
    grid = Grid(PAPER, check_files=False, check_geometry=False)
    recipe_of = {run.dataset: run.recipe for run in grid.finetunes.values()}
    seen = set()
    for line in commands:
        step = re.search(r"-m tocom\.cli (\S+)", line)[1]
        if step not in kind:
            continue
        seen.add(step)
        workers = re.findall(r"--workers (\d+)", line)
        dataset = re.search(r"--dataset (\S+)", line)
        recipe = recipe_of.get(dataset[1]) if step == "finetune" and dataset else None   # e.g. CIFAR-100's 8 GPUs
        expected = job_workers(grid.resources_of(kind[step], recipe))
        assert workers == [str(expected)] and expected >= 1, line[:300]
        assert "--precision fp16" in line, line[:300]
        if step == "distill":
            assert "--nproc-per-node 8" in line and "OMP_NUM_THREADS=4" in line
    assert seen == set(kind)


# ---- the data-loading benchmark -----------------------------------------------------------------------------
def test_data_bench_times_the_real_transforms_per_worker_count(tmp_path):
    out = tmp_path / "data.csv"
    res = subprocess.run([sys.executable, "-m", "tocom.cli", "bench", "--mode", "data", "--worker-counts", "0", "1",
                          "--images", "8", "--width", "120", "--height", "90", "--img-size", "64", "--batch-size", "4",
                          "--repeats", "1", "--warmup", "0", "--model", "tocom_vit_tiny_patch8_56", "--r", "0", "4",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    df = pd.read_csv(out)
    from tocom.engine.bench import DATA_COLUMNS

    assert list(df.columns) == DATA_COLUMNS
    assert sorted(zip(df["transform"], df.workers)) == [("eval", 0), ("eval", 1), ("train", 0), ("train", 1)]
    assert (df.images_per_s > 0).all() and (df.images == 8).all() and (df.source_width == 120).all()
    assert "workers_per_gpu" in res.stdout and "distill" in res.stdout


def test_photo_like_jpegs_weigh_what_imagenet_photos_do(tmp_path):
    """~110 KB at ImageNet's median 500 x 375 (its train set: 1.28 M files, ~140 GB); noise would be 3x that."""
    kb = write_jpeg_folder(tmp_path, 4, 500, 375)
    assert 80 < kb < 150


def test_gpu_demand_follows_the_flops():
    """One GPU's appetite per job type: peak x utilisation / FLOPs per image; full fine-tuning costs 3 forwards,
    AdaptFormer 2, evaluation 1; the distillation 3 x the mean forward over the degrees it draws."""
    from tocom.engine.bench import gpu_demand, workers_needed
    from tocom.settings import MeasureSettings

    df = gpu_demand(MeasureSettings(model="tocom_vit_tiny_patch8_56", r=(0, 4)), tflops=1.0, utilisation=0.5,
                    r_max=4).set_index("job")
    ev, full = df.loc["evaluate"], df.loc["finetune_full"]
    assert full.images_per_s == pytest.approx(ev.images_per_s / 3)
    assert df.loc["finetune_adaptformer"].images_per_s == pytest.approx(ev.images_per_s / 2)
    assert ev.images_per_s == pytest.approx(0.5e12 / (ev.gflops_per_image * 1e9))
    assert df.loc["distill"].images_per_s > full.images_per_s            # compressed degrees are cheaper
    data = pd.DataFrame({"transform": ["train", "train", "eval"], "workers": [0, 2, 1],
                         "images_per_s": [50.0, 80.0, 300.0]})
    need = workers_needed(df.reset_index(), data).set_index("job")
    assert need.loc["finetune_full"].images_per_s_per_worker == 40.0
    assert need.loc["finetune_full"].workers_per_gpu == -(-full.images_per_s // 40)
