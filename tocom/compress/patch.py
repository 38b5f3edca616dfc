"""Turn a timm VisionTransformer into a token-compressed one, in place: a class swap, one knob.

`patch(model, method)` swaps the classes of the model, its blocks and their attention for
subclasses that compress tokens between attention and MLP; the weights are untouched, so a
patched model loads and saves the same state dict. The degree is `model.r` (an int, or a list
with one entry per block) and can change between forward passes without re-patching.

Methods: "tome", "evit", "idle" (`METHODS`: classification, one shared r ladder on which the
token count falls layer by layer) and "tome_ffn" (`DENSE_METHODS`: dense prediction). tome_ffn is
the ToCom paper's segmentation setting (appendix, Table 11): in every block attention runs on all
tokens; then r patch tokens are merged by ToMe's bipartite soft matching on this layer's keys
(size-weighted average -- every token enters a layer with size 1, so it is the plain mean), the
norm and MLP run on the N - r merged tokens, and ToMe's unmerge hands each token its merged
token's MLP output at its own position, added to its own residual. Every layer therefore starts
from the full sequence and r can go up to half the patch tokens in every layer (`max_r`).
Proportional attention does not apply: attention only ever sees unmerged tokens of size 1, for
which ToMe's log-size bias is zero, so none is added.

A model that holds its ViT as `tocom_backbone` (the Segmenter of `tocom.segment`) can be passed
to `patch`, `set_r`, `max_r`, `is_patched` and `method_of`; they act on that backbone.

Every block shares one `CompressionState` with the model: the per-forward token sizes live
there because timm chains blocks through `nn.Sequential`, which passes a single tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block

from ..errors import TocomError
from ..settings import DENSE_METHODS, METHODS
from .idle import select_active
from .merge import bipartite_soft_matching, capped_r, merge_plan, merge_wavg, unmerge
from .prune import evit_prune

ALL_METHODS = METHODS + DENSE_METHODS


@dataclass
class CompressionState:
    method: str
    r: list[int]
    prefix: int
    distilled: bool = False                # class + distillation token (DeiT-distilled)
    size: torch.Tensor | None = None       # (B, N, 1) patches per token; None until a merge
    has_fused: bool = False                # EViT: the last token holds the pruned ones
    schedule: list[int] | None = field(default=None, repr=False)  # IdleViT active counts

    def reset(self) -> None:
        self.size, self.has_fused, self.schedule = None, False, None


def token_schedule(n_patch: int, r: Sequence[int]) -> list[int]:
    """Patch-token counts entering each layer, and after the last one, under ToMe's cap."""
    counts = [n_patch]
    for r_l in r:
        counts.append(counts[-1] - capped_r(r_l, counts[-1]))
    return counts


def class_attention(q: torch.Tensor, k: torch.Tensor, scale: float, prefix: int) -> torch.Tensor:
    """Attention each token receives, averaged over heads: (B, N).

    From the class token when there is one (EViT's attentiveness); without prefix tokens, the
    mean over all queries, so models without a class token still get a sensible ranking.
    """
    queries = q[:, :, :1] if prefix > 0 else q
    attn = ((queries * scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)
    return attn.mean(dim=(1, 2))


class CompressedAttention(Attention):
    """timm Attention split in two, so blocks can read keys and pick tokens in between."""

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def attend(self, x, q, k, v, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, _, n, _ = q.shape
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(out))

    def forward(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise TocomError("token compression does not support attention masks; call the model without attn_mask")
        return self.attend(x, *self.heads(x))


class CompressedBlock(Block):
    """A timm Block that compresses tokens between attention and MLP (ToMe, EViT) or idles them."""

    _state: CompressionState
    _layer: int

    def forward(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise TocomError("token compression does not support attention masks; call the model without attn_mask")
        st = self._state
        if st.method == "idle":
            return self._forward_idle(x, st)
        if st.method == "tome_ffn":
            return self._forward_tome_ffn(x, st)
        r = st.r[self._layer]
        h = self.norm1(x)
        q, k, v = self.attn.heads(h)
        bias = None
        if st.method == "tome" and st.size is not None:   # proportional attention
            bias = st.size.log()[:, None, None, :, 0].to(q.dtype)
        x = x + self.drop_path1(self.ls1(self.attn.attend(h, q, k, v, bias)))
        if r > 0:
            if st.size is None:
                st.size = x.new_ones(x.shape[0], x.shape[1], 1, dtype=torch.promote_types(x.dtype, torch.float32))
            if st.method == "tome":
                merge = bipartite_soft_matching(k.mean(dim=1), r, st.prefix, st.distilled)
                x, st.size = merge_wavg(merge, x, st.size)
            else:
                score = class_attention(q, k, self.attn.scale, st.prefix)
                x, st.size, st.has_fused = evit_prune(x, st.size, score, r, st.prefix, st.has_fused)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def _forward_tome_ffn(self, x: torch.Tensor, st: CompressionState) -> torch.Tensor:
        h = self.norm1(x)
        q, k, v = self.attn.heads(h)
        x = x + self.drop_path1(self.ls1(self.attn.attend(h, q, k, v)))   # every token, no size bias
        plan = merge_plan(k.mean(dim=1), st.r[self._layer], st.prefix, st.distilled)
        if plan.r == 0:
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        size = x.new_ones(x.shape[0], x.shape[1], 1, dtype=torch.promote_types(x.dtype, torch.float32))
        merged, _ = merge_wavg(plan.merge, x, size)
        return x + unmerge(plan, self.drop_path2(self.ls2(self.mlp(self.norm2(merged)))))

    def _forward_idle(self, x: torch.Tensor, st: CompressionState) -> torch.Tensor:
        if st.schedule is None:
            st.schedule = token_schedule(x.shape[1] - st.prefix, st.r)
        n_active = st.schedule[self._layer + 1]
        if n_active == x.shape[1] - st.prefix:
            return super().forward(x)
        h = self.norm1(x)
        q, k, v = self.attn.heads(h)
        idx = select_active(class_attention(q, k, self.attn.scale, st.prefix), n_active, st.prefix)
        head_idx = idx[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1])
        q, k, v = (t.gather(2, head_idx) for t in (q, k, v))
        tok_idx = idx[..., None].expand(-1, -1, x.shape[-1])
        xa = x.gather(1, tok_idx)
        xa = xa + self.drop_path1(self.ls1(self.attn.attend(h.gather(1, tok_idx), q, k, v)))
        xa = xa + self.drop_path2(self.ls2(self.mlp(self.norm2(xa))))
        return x.scatter(1, tok_idx, xa)   # idle tokens leave the layer as they came in


_MODEL_CLASSES: dict[type, type] = {}


def _compressed_model_class(cls: type) -> type:
    """A subclass of the model's own class (kept for DeiT-distilled heads etc.), made once."""
    if cls in _MODEL_CLASSES.values():
        return cls
    if cls not in _MODEL_CLASSES:

        class Compressed(cls):
            _tocom_state: CompressionState

            @property
            def r(self):
                r = self._tocom_state.r
                return r[0] if len(set(r)) == 1 else list(r)

            @r.setter
            def r(self, value):
                set_r(self, value)

            def forward_features(self, x, *args, **kwargs):
                if self.grad_checkpointing:
                    raise TocomError("token compression cannot run with gradient checkpointing "
                                     "(blocks would compress twice); call model.set_grad_checkpointing(False)")
                self._tocom_state.reset()
                return super().forward_features(x, *args, **kwargs)

            def pool(self, x, pool_type=None):
                # Average pooling must weight merged tokens by how many patches they stand for.
                st = self._tocom_state
                if st.size is None or self.attn_pool is not None or (pool_type or self.global_pool) != "avg":
                    return super().pool(x, pool_type)
                start = 0 if self.pool_include_prefix else self.num_prefix_tokens
                w = st.size[:, start:].to(x.dtype)
                return (x[:, start:] * w).sum(dim=1) / w.sum(dim=1)

        Compressed.__name__ = Compressed.__qualname__ = f"Compressed{cls.__name__}"
        _MODEL_CLASSES[cls] = Compressed
    return _MODEL_CLASSES[cls]


def _check_vit(model: torch.nn.Module) -> None:
    needed = ("blocks", "patch_embed", "num_prefix_tokens", "embed_dim")
    if not all(hasattr(model, a) for a in needed):
        raise TocomError(f"{type(model).__name__} is not a timm VisionTransformer; token compression "
                         "patches timm ViT/DeiT models (e.g. timm.create_model('deit_base_patch16_224'))")
    for i, blk in enumerate(model.blocks):
        if not isinstance(blk, Block) or not isinstance(blk.attn, Attention):
            raise TocomError(f"block {i} is {type(blk).__name__} with {type(blk.attn).__name__}; only timm's "
                             "standard Block/Attention (ViT, DeiT, MAE ViT) can be patched")


def _vit(model: torch.nn.Module) -> torch.nn.Module:
    """The ViT to act on: `model` itself, or the backbone a wrapper (Segmenter) exposes as `tocom_backbone`."""
    inner = getattr(model, "tocom_backbone", None)
    return model if inner is None else inner


def patch(model: torch.nn.Module, method: str = METHODS[0]) -> torch.nn.Module:
    """Make `model` compress tokens with `method` ("tome", "evit", "idle" or "tome_ffn"). In place, idempotent.

    Patching again with another method switches method and keeps r. Returns the model (a wrapper
    with a `tocom_backbone`, e.g. a Segmenter, gets its backbone patched and is returned itself).
    """
    if method not in ALL_METHODS:
        raise TocomError(f"unknown compression method {method!r}; choose one of {', '.join(ALL_METHODS)}")
    outer, model = model, _vit(model)
    if outer is not model:
        patch(model, method)
        return outer
    if is_patched(model):
        model._tocom_state.method = method
        return model
    _check_vit(model)
    state = CompressionState(method=method, r=[0] * len(model.blocks), prefix=model.num_prefix_tokens,
                             distilled=getattr(model, "dist_token", None) is not None)
    model.__class__ = _compressed_model_class(model.__class__)
    model._tocom_state = state
    for i, blk in enumerate(model.blocks):
        blk.__class__ = CompressedBlock
        blk.attn.__class__ = CompressedAttention
        blk._state, blk._layer = state, i
    return model


def is_patched(model: torch.nn.Module) -> bool:
    return isinstance(getattr(_vit(model), "_tocom_state", None), CompressionState)


def method_of(model: torch.nn.Module) -> str | None:
    return _vit(model)._tocom_state.method if is_patched(model) else None


def per_layer_r(r: int | Sequence[int], depth: int) -> list[int]:
    """Expand an int to one value per block and check a list has one value per block."""
    if isinstance(r, (int,)) and not isinstance(r, bool):
        r = [r] * depth
    r = [int(v) for v in r]
    if len(r) != depth:
        raise TocomError(f"r has {len(r)} entries but the model has {depth} blocks; give an int or one value per block")
    if any(v < 0 for v in r):
        raise TocomError(f"r must be >= 0, got {r}")
    return r


def set_r(model: torch.nn.Module, r: int | Sequence[int]) -> None:
    """Set the compression degree: tokens merged/pruned/idled per layer. Takes effect next forward."""
    if not is_patched(model):
        raise TocomError("the model is not patched for token compression; call tocom.patch(model, method) first")
    model = _vit(model)
    model._tocom_state.r = per_layer_r(r, len(model.blocks))


def max_r(model: torch.nn.Module) -> int:
    """Largest constant r that still leaves patch tokens for every layer (16 for DeiT-B/16 at 224 px).

    For "tome_ffn" every layer starts from all tokens again, so r goes up to half the patch tokens
    in every layer (512 for DeiT-B/16 at 512 px, 1,024 patch tokens).
    """
    model = _vit(model)
    if method_of(model) in DENSE_METHODS:
        return model.patch_embed.num_patches // 2
    return model.patch_embed.num_patches // len(model.blocks)
