"""GPU memory per job (tocom/gpus.py) and the cost model (workflow/scripts/estimate_gpu_hours.py): the activation
constants re-measured, the paper's jobs against the GPUs they name, a config that cannot fit refused in one line,
and jobs bounded by their data loader."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import timm
import torch
import yaml

from tocom.compress import patch, set_r
from tocom.errors import TocomError
from tocom.experiments import Grid
from tocom.gpus import ACT_FP32, ACT_PER_BYTE, GPUS, activation_bytes, memory_need

REPO = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((REPO / "config/paper.yaml").read_text())
GPU = yaml.safe_load((REPO / "config/gpu.yaml").read_text())

spec = importlib.util.spec_from_file_location("estimate", REPO / "workflow/scripts/estimate_gpu_hours.py")
estimate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(estimate)


def saved_activation_bytes(model, autocast: bool, batch: int = 2) -> float:
    """Bytes per image autograd keeps of one training forward: every saved tensor but the weights and their
    autocast copies (recognised by their shapes, or the transposed shapes the linear layers save, which carry no
    batch dimension)."""
    weights = {p.data_ptr() for p in model.parameters()}
    shapes = {s for p in model.parameters() for s in (tuple(p.shape), tuple(reversed(p.shape)))}
    saved = {}

    def pack(t):
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if t.data_ptr() not in weights and tuple(t.shape) not in shapes:
            saved[key] = t.numel() * t.element_size()
        return t

    x = torch.randn(batch, 3, *model.patch_embed.img_size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(x)
    return sum(saved.values()) / batch


@pytest.mark.parametrize("method", ["tome", "evit"])
def test_activation_constants_match_a_measured_vit(method):
    """The per-token, per-width, per-block bytes of tocom/gpus.py are what autograd keeps of a ViT's training
    forward (here ViT-Ti/16 at 224 px, patched as the pipeline runs it), under bf16 autocast and without it."""
    torch.manual_seed(0)
    model = patch(timm.create_model("vit_tiny_patch16_224"), method).train()
    set_r(model, 0)
    tokens, width, depth = 197, model.embed_dim, len(model.blocks)
    for autocast, dtype_bytes in ((True, 2), (False, 4)):
        measured = saved_activation_bytes(model, autocast)
        assert measured == pytest.approx(activation_bytes(tokens, width, depth, dtype_bytes), rel=0.08), \
            (autocast, measured / (tokens * width * depth), ACT_FP32 + ACT_PER_BYTE * dtype_bytes)


def test_memory_need_by_hand():
    """DeiT-B (86.6 M parameters, 197 tokens, width 768, 12 blocks), fp16/bf16 autocast."""
    act = 197 * 768 * 12 * (ACT_FP32 + 2 * ACT_PER_BYTE)                     # ~70 MB per image
    full = memory_need(params=86_567_656, tokens=197, width=768, depth=12, batch=1024, gpus=8)
    assert full.batch_per_gpu == 128 and full.activations_gb == pytest.approx(128 * act / 1e9)
    assert full.state_gb == pytest.approx(86_567_656 * 18 / 1e9)             # weights, copy, grads, AdamW
    plugin = memory_need(params=86_567_656, tokens=197, width=768, depth=12, batch=1024, gpus=8, trains_all=False)
    assert plugin.state_gb == pytest.approx(86_567_656 * 6 / 1e9) and plugin.activations_gb == full.activations_gb
    infer = memory_need(params=86_567_656, tokens=197, width=768, depth=12, batch=256, backward=False)
    assert infer.activations_gb == pytest.approx(2 * 256 * act / 12 / 1e9)
    one = memory_need(params=86_567_656, tokens=197, width=768, depth=12, batch=1024)
    assert not any(one.fits(g) for g in GPUS)                                # 1,024 images on one GPU: ~74 GB
    assert full.fits("V100-16GB") and one.total_gb > 72


def test_paper_and_gpu_configs_fit_the_gpus_they_name():
    for config in (PAPER, GPU):
        grid = Grid(config, check_files=False)                                # the start-up check passes
        named = [(k, n) for k, _, n in grid.gpu_needs() if grid.resources_of(*k.split(".", 1)).get("gpu_model")]
        assert named and all(n.fits(grid.resources_of(*k.split(".", 1))["gpu_model"]) for k, n in named)
    needs = {(k, j): n for k, j, n in Grid(PAPER, check_files=False).gpu_needs()}
    assert needs[("finetune.cifar", "deit_b_none_cifar100_r0_seed0")].batch_per_gpu == 128       # 1,024 over 8
    assert needs[("distill", "deit_b384_tome_ffn_tocom")].batch_per_gpu == 64                     # 512 px: 512 over 8


def test_a_config_whose_batch_cannot_fit_its_gpu_is_refused_in_one_line():
    config = copy.deepcopy(PAPER)
    config["resources"].pop("finetune.cifar")                                 # CIFAR-100's 1,024 on one V100
    with pytest.raises(TocomError) as e:
        Grid(config, check_files=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("resources.finetune.gpu_model V100-32GB (32 GB): job deit_b_")
    assert "cifar100" in msg and "1024 images per GPU" in msg and "give it more GPUs or a smaller batch" in msg
    config["resources"]["finetune"].pop("gpu_model")                          # no GPU named: nothing to check
    Grid(config, check_files=False)
    config = copy.deepcopy(PAPER)
    config["resources"]["finetune.cifar"]["runtime"] = 60
    config["resources"]["finetune"].pop("runtime")
    with pytest.raises(TocomError, match="resources.finetune.cifar sets runtime, which resources.finetune leaves"):
        Grid(config, check_files=False)


def test_jobs_are_bounded_by_their_loader(tmp_path):
    """A job's device-hours: its V100-hours over the named GPU's speed, or its loader's wall-clock x GPUs when
    that is longer (images / (images/s per worker x workers per GPU x GPUs))."""
    grid = Grid(GPU, check_files=False)
    rates = {"deit_train": 100.0, "eval": 200.0}
    a100 = GPUS["A100-40GB"].speed
    workers = estimate.loader_workers(GPU["resources"]["finetune"])
    assert workers == 15                                                      # 16 CPUs, one GPU: one core kept
    fast = SimpleNamespace(key="finetune", v100_hours=10.0, images=1000, transform="deit_train")
    assert estimate.device_hours(grid, fast, rates) == (10.0 / a100, False)
    slow = SimpleNamespace(key="finetune", v100_hours=1.0, images=3600 * 100 * 15 * 2, transform="deit_train")
    assert estimate.device_hours(grid, slow, rates) == (pytest.approx(2.0), True)
    csv = tmp_path / "loader.csv"
    pd.DataFrame({"transform": ["deit_train", "deit_train", "eval", "eval"], "workers": [0, 4, 1, 2],
                  "images_per_s": [90.0, 480.0, 150.0, 320.0]}).to_csv(csv, index=False)
    assert estimate.loader_rates(str(csv)) == {"deit_train": 120.0, "eval": 160.0}
    assert estimate.loader_rates(None) == estimate.LOADER_IMAGES_PER_S


@pytest.mark.slow
def test_gpu_config_fits_a_day_on_one_a100():
    """config/gpu.yaml's estimate: at most 24 A100-hours, every job on one GPU."""
    df = estimate.estimate(GPU)
    assert df.gpu_hours.sum() <= 24 and set(df.key) <= {"distill", "finetune", "eval", "bench"}
