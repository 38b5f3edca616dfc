"""Backbones by timm name, the tiny ViT family for CPU runs, and checkpoint loading.

The paper's backbones are timm models (`deit_base_patch16_224`, `deit_small_patch16_224`,
`vit_base_patch16_224.mae`, `deit_base_patch16_384`). Their weights come from a local checkpoint
(the official DeiT/MAE `.pth` files load as they are) or from timm's pretrained tags on a machine
that is online; nothing here downloads unless `pretrained=True` is asked for explicitly.

The tiny family exists because no pretrained weights are reachable offline: the pipeline
pretrains one from scratch. `tocom_vit_tiny_patch4_56` mirrors the paper's token geometry
(14 x 14 = 196 patch tokens + class token, 12 blocks, so r runs 0..16 exactly as for DeiT-B);
`tocom_vit_micro_patch4_56` is the same geometry at width 64 (the CPU default), and
`tocom_vit_tiny_patch8_56` (49 tokens) is the cheap setting where compression barely hurts (smoke runs).
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import timm
import torch
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _create_vision_transformer

from .errors import TocomError
from .io import header_json, read_safetensors, read_safetensors_header, write_safetensors

PAPER_BACKBONES = ("deit_base_patch16_224", "deit_small_patch16_224", "vit_base_patch16_224.mae",
                   "deit_base_patch16_384")


# Tiny models are trained by the pipeline at 56 px on inputs normalised to [-1, 1].
default_cfgs = generate_default_cfgs({
    name: dict(url="", num_classes=10, input_size=(3, 56, 56), crop_pct=1.0, mean=(0.5, 0.5, 0.5),
               std=(0.5, 0.5, 0.5), first_conv="patch_embed.proj", classifier="head")
    for name in ("tocom_vit_tiny_patch4_56.untrained", "tocom_vit_tiny_patch8_56.untrained",
                 "tocom_vit_micro_patch4_56.untrained")
})


def _tiny(variant: str, pretrained: bool, kwargs: dict, **arch) -> VisionTransformer:
    return _create_vision_transformer(variant, pretrained=pretrained, **{"img_size": 56, "depth": 12, **arch, **kwargs})


@register_model
def tocom_vit_tiny_patch4_56(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """12 blocks, width 96, 3 heads, 56 px / patch 4 = 196 patches: the paper's geometry, ~0.35 GFLOPs."""
    return _tiny("tocom_vit_tiny_patch4_56", pretrained, kwargs, patch_size=4, embed_dim=96, num_heads=3)


@register_model
def tocom_vit_tiny_patch8_56(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """12 blocks, width 96, 3 heads, 56 px / patch 8 = 49 patches: cheap, r runs 0..4."""
    return _tiny("tocom_vit_tiny_patch8_56", pretrained, kwargs, patch_size=8, embed_dim=96, num_heads=3)


@register_model
def tocom_vit_micro_patch4_56(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """12 blocks, width 64, 2 heads, 196 patches: the paper's geometry at half the tiny cost (CPU default)."""
    return _tiny("tocom_vit_micro_patch4_56", pretrained, kwargs, patch_size=4, embed_dim=64, num_heads=2)


def mae_pooling(name: str) -> bool:
    """Whether a backbone follows MAE's fine-tuning recipe: a timm name tagged `.mae` (the paper's Table 10)."""
    return name.split(".")[-1] == "mae" and "." in name


def to_average_pooling(model: VisionTransformer) -> VisionTransformer:
    """MAE's fine-tuning head (He et al., 2022; its `global_pool`): the patch tokens averaged (token-size
    weighted once compressed, as ToMe's MAE patch does) into a fresh LayerNorm `fc_norm`, the pre-training's
    final `norm` dropped. Idempotent."""
    if model.global_pool == "avg" and not isinstance(model.fc_norm, torch.nn.Identity):
        return model
    norm = model.norm
    model.global_pool = "avg"
    model.fc_norm = type(norm)(model.embed_dim, eps=norm.eps)
    model.norm = torch.nn.Identity()
    return model


def backbone_names() -> list[str]:
    return list(PAPER_BACKBONES) + ["tocom_vit_tiny_patch4_56", "tocom_vit_micro_patch4_56", "tocom_vit_tiny_patch8_56"]


def create_backbone(name: str, num_classes: int | None = None, checkpoint: str | Path | None = None,
                    pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """A timm ViT by name; weights from `checkpoint` (safetensors or .pth) or timm's hub if `pretrained`.

    `num_classes` replaces the head (0 removes it); a checkpoint's own head is kept when the class
    counts agree and dropped (with the new head freshly initialised) when they do not.
    """
    if not timm.is_model(name.split(".")[0]):
        raise TocomError(f"unknown backbone {name!r}; use a timm ViT name such as {', '.join(backbone_names())}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        if pretrained:
            raise TocomError(f"could not fetch pretrained weights for {name} ({e}); pass a local checkpoint "
                             "path instead (the official DeiT/MAE .pth files load as they are)") from None
        raise
    if not isinstance(model, VisionTransformer):
        raise TocomError(f"{name} is a {type(model).__name__}, not a Vision Transformer; tocom compresses the tokens "
                         "of timm's VisionTransformer family (vit_*, deit_*, deit3_*), e.g. "
                         f"{', '.join(backbone_names())}")
    if mae_pooling(name):
        to_average_pooling(model)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model


def _torch_load_reason(e: Exception) -> str:
    """One line out of torch.load's multi-paragraph refusal (the part naming what it refused)."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|Check the documentation|$)", text, re.S)
    detail = m.group(1) if m else (text.strip().splitlines() or [type(e).__name__])[0]
    detail = " ".join(detail.split())
    detail = detail.split(". ")[0].rstrip(".")        # 'Unsupported global: GLOBAL os.system was not allowed'
    return f"{type(e).__name__}: {detail[:200]}"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from our safetensors files or third-party .pth files (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise TocomError(f"no checkpoint at {path}; fix the path or produce it with the pipeline's earlier step")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        with warnings.catch_warnings():   # torch warns (on several lines) about the pickle protocol of old files
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TocomError(f"{path} is not a plain weights file: torch.load(weights_only=True) refused it "
                         f"({_torch_load_reason(e)}); pass a checkpoint holding only tensors (the official DeiT/MAE "
                         ".pth files do) or convert it to .safetensors where you trust its source") from None
    for key in ("model", "state_dict", "module"):        # DeiT and MAE releases nest the weights
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TocomError(f"{path} holds no state dict (a mapping of names to tensors); pass a model checkpoint")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Load weights into `model`, dropping a classifier head whose shape differs (a new task)."""
    state = read_state_dict(path)
    own = model.state_dict()
    for key in [k for k in state if k.startswith(("head.", "head_dist.", "fc_norm.")) and k in own]:
        if state[key].shape != own[key].shape:
            del state[key]
    if "norm.weight" not in own and "fc_norm.weight" in own:     # MAE's fine-tuning drops the pre-training's norm
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "head_dist.", "fc_norm."))]
    if missing or unexpected:
        raise TocomError(f"checkpoint {path} does not fit {type(model).__name__}: "
                         f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")


# ---- our own checkpoints: weights + the recipe to rebuild the model -------------------------------
def save_model(model: torch.nn.Module, path: str | Path, meta: dict) -> None:
    """Safetensors with a `tocom` header (backbone, num_classes, adapters, provenance) for `load_model`."""
    write_safetensors(model.state_dict(), path, {"tocom": meta})


def read_meta(path: str | Path) -> dict:
    """The `tocom` header of a checkpoint written by `save_model` (one-line errors when it is damaged)."""
    path = Path(path)
    if not path.is_file():
        raise TocomError(f"no model checkpoint at {path}; run the step that produces it or fix the path")
    fix = "the header is damaged or was edited; re-run the step that wrote it (or pass --backbone to ignore it)"
    header = read_safetensors_header(path)[0]
    meta = header_json(path, header, "tocom", "tocom header", fix)
    if meta is None:
        if header.get("format") == "tocom":
            raise TocomError(f"{path} is a ToCom plugin, not a model checkpoint; pass a model written by "
                             "`tocom finetune` (plugins go to --plugin)")
        raise TocomError(f"{path} has no tocom header; it was not written by tocom (pass third-party .pth "
                         "files as --checkpoint together with --backbone)")
    if not isinstance(meta.get("backbone"), str) or not meta["backbone"]:
        raise TocomError(f"{path}: its tocom header names no backbone; {fix}")
    check_header_values(path, meta, "tocom header", fix, required={"num_classes": 0},
                        optional={"source_r": 0, "seed": 0, "epochs": 1})
    return meta


#: What a record's fields must hold when present (the numbers: `check_header_values`' minimums).
_HEADER_TEXT = ("dataset", "method", "mode", "split")
_HEADER_OBJECTS = ("model_kwargs", "adapter", "settings", "lineage")


def check_header_values(path, meta: dict, what: str, fix: str, required: dict[str, int],
                        optional: dict[str, int] = {}) -> None:  # noqa: B006  (read only)
    """One line for a header value that is not what the code will use it as: whole numbers with a minimum
    (`required` must be present), names as strings, records as objects. A header edited to source_r "abc" or a
    seed of 2.5 would otherwise be a traceback (or a wrong row) far from the file."""
    for key, least in {**required, **optional}.items():
        if key not in meta and key not in required:
            continue
        v = meta.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise TocomError(f"{path}: its {what} has {key}={v!r}, not a whole number >= {least}; {fix}")
    for key in _HEADER_TEXT:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise TocomError(f"{path}: its {what} has {key}={meta[key]!r}, not a name; {fix}")
    for key in _HEADER_OBJECTS:
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise TocomError(f"{path}: its {what} has {key}={meta[key]!r}, not an object; {fix}")


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model saved by `save_model` (with its adapters) and load its weights.

    The header is checked against the tensors before any are loaded, so a header that names the wrong
    backbone or class count is reported in one line instead of as a size-mismatch traceback.
    """
    from .adapters import add_adapters

    meta = read_meta(path)
    fix = "the header does not match the weights (damaged or edited file); re-run the step that wrote it"
    state = read_state_dict(path)
    head = state.get("head.weight")
    if head is not None and head.ndim == 2 and head.shape[0] != meta["num_classes"]:
        raise TocomError(f"{path}: header says {meta['num_classes']} classes but head.weight has "
                         f"{head.shape[0]} rows; {fix}")
    try:
        model = create_backbone(meta["backbone"], num_classes=meta["num_classes"], **(meta.get("model_kwargs") or {}))
        if meta.get("adapter"):
            add_adapters(model, **meta["adapter"])
    except TocomError as e:
        raise TocomError(f"{path}: {e}") from None
    except (TypeError, ValueError, AssertionError) as e:
        raise TocomError(" ".join(f"{path}: cannot build {meta['backbone']!r} with the header's settings "
                                  f"({type(e).__name__}: {e}); {fix}".split())) from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(items[:3])}{'...' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
        raise TocomError(f"{path}: its weights do not fit the header's backbone {meta['backbone']!r} "
                         f"({'; '.join(parts)}); {fix}")
    check_finite(path, state, fix)
    model.load_state_dict(state)
    return model, meta


def check_finite(path, tensors: dict[str, torch.Tensor], fix: str) -> None:
    """Refuse weights holding NaN or inf: they give chance-level numbers, not an error."""
    for k, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise TocomError(f"{path}: tensor {k} holds NaN or inf; {fix}")


def resolve_model(backbone: str | None, checkpoint: str | None, pretrained: bool = False,
                  num_classes: int | None = None) -> tuple[torch.nn.Module, dict]:
    """Any way a user names a starting model: our checkpoint, a third-party file + name, or a timm tag."""
    if checkpoint and Path(checkpoint).suffix == ".safetensors" and not backbone:
        model, meta = load_model(checkpoint)
        if num_classes is not None and num_classes != meta["num_classes"]:
            model.reset_classifier(num_classes)
            meta = {**meta, "num_classes": num_classes}
        return model, meta
    if not backbone:
        raise TocomError("name the backbone (--backbone, a timm name) or pass a tocom .safetensors checkpoint")
    model = create_backbone(backbone, num_classes=num_classes, checkpoint=checkpoint, pretrained=pretrained)
    return model, {"backbone": backbone, "num_classes": model.num_classes}


def at_resolution(model: torch.nn.Module, name: str, img_size: int, **kwargs) -> torch.nn.Module:
    """The same ViT laid out for `img_size` px: position embeddings resized bilinearly (prefix kept), head kept.

    The paper distils the segmentation plugin on ImageNet resized to 512 x 512 (Table 11)."""
    if int(model.patch_embed.img_size[0]) == int(img_size):
        return model
    new = create_backbone(name, num_classes=model.num_classes, img_size=img_size, **kwargs)
    state = dict(model.state_dict())
    if "pos_embed" in state and state["pos_embed"].shape != new.pos_embed.shape:
        prefix = 0 if getattr(new, "no_embed_class", False) else new.num_prefix_tokens
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], tuple(new.patch_embed.grid_size), prefix,
                                              tuple(model.patch_embed.grid_size))
    new.load_state_dict(state)
    return new


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix: int,
                     old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(1, prefix + gh*gw, C) -> (1, prefix + new_gh*new_gw, C): bilinear on the patch grid, prefix kept.

    timm's resampler with Segmenter's choice (bilinear, no antialiasing) instead of timm's bicubic default;
    an old grid that is not given must be square."""
    from timm.layers import resample_abs_pos_embed

    if old_grid is None:
        n = pos_embed.shape[1] - num_prefix
        side = math.isqrt(n)
        if side * side != n:
            raise TocomError(f"position embeddings of {n} patch tokens are not a square grid; pass old_grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    return resample_abs_pos_embed(pos_embed, list(new_grid), list(old_grid), num_prefix_tokens=num_prefix,
                                  interpolation="bilinear", antialias=False, align_corners=False)
