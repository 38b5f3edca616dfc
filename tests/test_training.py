"""How `fit` steps the weights as the paper's recipes do: timm's weight-decay groups, the autocast precision (fp16
with a gradient scaler, as the authors train; bf16; off) with the scaler's state resumed, and MAE's pooling.

What torch allows on CPU is exercised here: torch.amp.GradScaler("cpu") and autocast(cpu, float16). What needs a
GPU (CUDA kernels in fp16, the V100's lack of native bf16 as torch reports it) is covered by the resolution logic
with torch.cuda's answers stubbed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tocom.engine import common
from tocom.models import create_backbone

BACKBONE = "tocom_vit_tiny_patch8_56"


def tiny(**kw):
    return create_backbone(BACKBONE, num_classes=3, embed_dim=24, num_heads=2, depth=2, **kw)


class Loss(nn.Module):
    """A classifier's loss, `scale` times; zero when `scale` is 0 (gradients of exactly zero)."""

    def __init__(self, model, scale=1.0):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, images, labels):
        return nn.functional.cross_entropy(self.model(images).float(), labels) * self.scale


def data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 3, 56, 56, generator=g), torch.arange(n) % 3)


# ---- weight decay --------------------------------------------------------------------------------------------
def test_weight_decay_groups_spare_biases_norms_position_embedding_and_class_token():
    model = tiny()
    groups = common.param_groups(Loss(model), 0.05)
    names = {id(p): n for n, p in Loss(model).named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] for p in g["params"]}
    spared = {names[id(p)] for g in groups if not g["weight_decay"] for p in g["params"]}
    assert {"model.pos_embed", "model.cls_token", "model.norm.weight", "model.blocks.0.attn.qkv.bias",
            "model.head.bias", "model.blocks.1.norm2.weight"} <= spared
    assert {"model.blocks.0.attn.qkv.weight", "model.blocks.1.mlp.fc2.weight", "model.head.weight",
            "model.patch_embed.proj.weight"} <= decayed
    assert not decayed & spared and decayed | spared == set(names.values())


def test_fit_decays_only_the_decayed_group(tmp_path):
    """With zero gradients AdamW only decays: after one step the weights shrink by lr x wd, the exempt stay put."""
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    job = common.Fit(Loss(model, scale=0.0), epochs=1, lr=0.1, min_lr=0.1, weight_decay=0.5)
    common.fit(job, common.loader(data(4), 4, common.Runtime(torch.device("cpu")), True, 0), tmp_path / "m", 
               common.Runtime(torch.device("cpu")), 0, False)
    common.finish(tmp_path / "m", common.Runtime(torch.device("cpu")), lambda: None)
    after = model.state_dict()
    for key in ("blocks.0.attn.qkv.weight", "head.weight"):
        assert torch.allclose(after[key], before[key] * (1 - 0.1 * 0.5)), key
    for key in ("pos_embed", "cls_token", "blocks.0.attn.qkv.bias", "norm.weight"):
        assert torch.equal(after[key], before[key]), key


# ---- precision -----------------------------------------------------------------------------------------------
def test_auto_precision_is_bf16_where_the_gpu_has_it_else_fp16_and_off_on_cpu(monkeypatch):
    cuda = torch.device("cuda", 0)
    asked = []

    def supported(value):
        def is_bf16_supported(including_emulation=True):
            asked.append(including_emulation)
            return value
        return is_bf16_supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported(False))    # a V100 (emulation not counted)
    assert common.resolve_precision("auto", cuda) == "fp16" and asked == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported(True))     # an A100
    assert common.resolve_precision("auto", cuda) == "bf16"
    assert common.resolve_precision("auto", torch.device("cpu")) == "off"
    assert common.resolve_precision("fp16", torch.device("cpu")) == "fp16"     # asked for: honoured
    assert common.Runtime(torch.device("cpu"), precision="fp16").scaler().is_enabled()
    assert not common.Runtime(torch.device("cpu"), precision="bf16").scaler().is_enabled()


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("off", torch.float32)])
def test_autocast_follows_the_precision(precision, dtype):
    rt = common.Runtime(torch.device("cpu"), precision=precision)
    with rt.autocast():
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == dtype


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_lowered():
    p = nn.Parameter(torch.ones(3))
    stepper = common.Stepper(torch.optim.SGD([p], lr=0.1), common.Runtime(torch.device("cpu"), precision="fp16").scaler())
    scale = stepper.scaler.get_scale()
    stepper.step((p * torch.tensor([1.0, 2.0, float("inf")])).sum(), [p], None)
    assert torch.equal(p.detach(), torch.ones(3)) and stepper.scaler.get_scale() == scale / 2
    stepper.step((p * torch.tensor([1.0, 2.0, 3.0])).sum(), [p], clip_grad=1.0)   # unscaled before clipping
    assert torch.allclose(p.detach(), 1 - 0.1 * torch.tensor([1.0, 2.0, 3.0]) / 14 ** 0.5)
    state = stepper.state_dict()
    fresh = common.Stepper(torch.optim.SGD([p], lr=0.1), common.Runtime(torch.device("cpu"), precision="fp16").scaler())
    fresh.load_state_dict(state)
    assert fresh.scaler.get_scale() == scale / 2


class Killed(Exception):
    pass


def _fp16_fit(out, monkeypatch=None):
    """Two epochs under fp16 autocast whose loss overflows fp16 at the initial scale 2^16: the scaler skips steps
    and backs off in epoch 1; epoch 2 must start from the backed-off scale."""
    torch.manual_seed(0)
    model = tiny()
    rt = common.Runtime(torch.device("cpu"), precision="fp16")
    job = common.Fit(Loss(model, scale=10.0), epochs=2, lr=1e-3, min_lr=1e-4)
    common.fit(job, common.loader(data(16), 4, rt, True, 0), out, rt, 0, False)
    common.finish(out, rt, lambda: None)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fp16_resume_restores_the_gradient_scale(tmp_path, monkeypatch):
    """Killed after epoch 1 and rerun, an fp16 run ends with the uninterrupted run's weights: the scaler's scale
    is in the resume state (a fresh scaler would start at 2^16 again, skip more steps and end elsewhere)."""
    straight = _fp16_fit(tmp_path / "straight")
    real = common._save_resume
    saved = {}

    def save_then_die(out, params, opt, epoch, stamp):
        real(out, params, opt, epoch, stamp)
        saved.update(opt.state_dict()["scaler"])
        raise Killed

    monkeypatch.setattr(common, "_save_resume", save_then_die)
    with pytest.raises(Killed):
        _fp16_fit(tmp_path / "resumed")
    monkeypatch.setattr(common, "_save_resume", real)
    common.release_output_lock(tmp_path / "resumed")
    assert saved["scale"] < 2.0 ** 16                                   # epoch 1 did back off
    resumed = _fp16_fit(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_fp16_resume_state_of_another_precision_is_discarded(tmp_path, capsys):
    """Precision shapes the result: state written under fp16 does not resume a float32 run."""
    torch.manual_seed(0)
    out = tmp_path / "m"
    for precision in ("fp16", "off"):
        rt = common.Runtime(torch.device("cpu"), precision=precision)
        job = common.Fit(Loss(tiny()), epochs=1, lr=1e-3, min_lr=1e-4)
        common.fit(job, common.loader(data(4), 4, rt, True, 0), out, rt, 0, False)
        common.release_output_lock(out)
    assert "precision" in capsys.readouterr().err


# ---- MAE --------------------------------------------------------------------------------------------------------
def test_mae_backbones_pool_as_maes_fine_tuning_does(tmp_path):
    """A `.mae` backbone averages its patch tokens into a fresh fc_norm (no class-token pooling, no pre-training
    norm), loads an official-style checkpoint (which holds that norm and no fc_norm), and its distillation
    features are that pooled, normalised vector."""
    from tocom.models import mae_pooling, to_average_pooling

    assert mae_pooling("vit_base_patch16_224.mae") and not mae_pooling("deit_base_patch16_224")
    mae = create_backbone("vit_base_patch16_224.mae")
    assert mae.global_pool == "avg" and isinstance(mae.norm, nn.Identity) and isinstance(mae.fc_norm, nn.LayerNorm)
    # the same on a tiny ViT (the conversion is the recipe; the name only selects it)
    official = create_backbone(BACKBONE, num_classes=0, embed_dim=24, num_heads=2, depth=2)
    torch.save({"model": official.state_dict()}, tmp_path / "mae.pth")
    model = to_average_pooling(create_backbone(BACKBONE, num_classes=0, embed_dim=24, num_heads=2, depth=2))
    from tocom.models import load_checkpoint

    load_checkpoint(model, tmp_path / "mae.pth")
    assert torch.equal(model.blocks[1].mlp.fc2.weight, official.blocks[1].mlp.fc2.weight)
    assert torch.equal(model.fc_norm.weight, torch.ones(24)) and torch.equal(model.fc_norm.bias, torch.zeros(24))
    x = torch.randn(2, 3, 56, 56)
    tokens = model.forward_features(x)
    expected = nn.functional.layer_norm(tokens[:, 1:].mean(dim=1), (24,), eps=1e-6)
    assert torch.allclose(model.forward_head(tokens, pre_logits=True), expected, atol=1e-5)


def test_mae_fc_norm_trains_with_the_head_under_adaptformer(tmp_path):
    """AdaptFormer trains what the pre-trained checkpoint lacks: adapters, head, and MAE's fresh fc_norm."""
    from tocom.engine.finetune import train_classifier
    from tocom.models import to_average_pooling
    from tocom.settings import FinetuneSettings, RunSettings

    model = to_average_pooling(tiny())
    fc_norm = model.fc_norm.weight.detach().clone()
    train_classifier(model, data(8), tmp_path / "m.safetensors", {"backbone": BACKBONE},
                     FinetuneSettings(mode="adaptformer", epochs=1, batch_size=4, lr=1e-2, drop_path=0.0),
                     RunSettings(device="cpu", quiet=True))
    assert model.fc_norm.weight.requires_grad and not torch.equal(model.fc_norm.weight.detach(), fc_norm)
    assert not model.blocks[0].attn.qkv.weight.requires_grad
