"""Analytic cost of a (compressed) ViT forward pass, from its shape and the token schedule.

Counted in the convention of the DeiT/ToMe papers (fvcore): one multiply-add is one FLOP, so
DeiT-B/16 at 224 px is 17.6 GFLOPs. Normalisations, softmax and the activation are left out; every
matrix product is counted, including ToMe's matching (a similarity matrix between the two token halves).

`attention_matmuls=False` leaves out the two activation-by-activation products of every attention
layer (q kᵀ and attention · v); everything else is counted as before. That is the convention of the
ToCom paper's Table 11 (segmentation; the Segmenter's count, encoder + decoder, is
`tocom.segment.segmenter_flops`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import TocomError
from ..settings import METHODS
from .merge import capped_r, whole_sequence
from .patch import is_patched, method_of, per_layer_r, token_schedule


def flops(model: torch.nn.Module, r: int | Sequence[int] = 0, method: str | None = None,
          attention_matmuls: bool = True) -> dict:
    """GFLOPs of one image at degree r, with the tokens each layer's qkv, attention and MLP see.

    The token counts are those of the patched forward pass (tests check it block by block).
    `method` defaults to the method the model is patched with (ToMe for an unpatched model).
    """
    if getattr(model, "tocom_backbone", None) is not None:
        raise TocomError(f"flops counts a ViT, not a {type(model).__name__} around one; count a Segmenter with "
                         "tocom.segment.segmenter_flops")
    method = method or method_of(model) or METHODS[0]
    depth = len(model.blocks)
    r = per_layer_r(r, depth)
    blk = model.blocks[0]
    dim = model.embed_dim
    hidden = blk.mlp.fc1.out_features
    head_dim = blk.attn.head_dim
    prefix = model.num_prefix_tokens
    whole = whole_sequence(prefix, getattr(model, "dist_token", None) is not None)
    n_patch = model.patch_embed.num_patches
    sched = token_schedule(n_patch, r)

    pe = model.patch_embed.proj
    total = n_patch * pe.in_channels * pe.kernel_size[0] * pe.kernel_size[1] * dim
    head = getattr(model, "head", None)
    if isinstance(head, torch.nn.Linear):
        total += head.in_features * head.out_features

    qkv_tokens, attn_tokens, mlp_tokens = [], [], []
    fused = 0
    for layer in range(depth):
        merged = 0                                         # tokens ToMe's matching merges in this layer
        if method == "idle":
            n_qkv = prefix + n_patch                      # every token is scored, only some attend
            n_attn = n_mlp = prefix + sched[layer + 1]
        elif method == "tome_ffn":
            n_qkv = n_attn = prefix + n_patch             # attention on every token, every layer
            merged = capped_r(r[layer], n_patch)
            n_mlp = n_attn - merged                       # MLP on the merged tokens, then unmerged
        else:
            n_attn = n_qkv = prefix + sched[layer] + fused
            if method == "evit" and sched[layer + 1] < sched[layer]:
                fused = 1
            n_mlp = prefix + sched[layer + 1] + fused
            if method == "tome":
                merged = sched[layer] - sched[layer + 1]
        layer_flops = (
            n_qkv * dim * 3 * dim                  # qkv projection
            + n_attn * dim * dim                   # output projection
            + n_mlp * 2 * dim * hidden             # MLP
        )
        if attention_matmuls:
            layer_flops += 2 * n_attn * n_attn * dim   # q k^T and attn @ v
        if merged > 0:
            n_match = n_attn if whole else n_attn - prefix   # tokens split into sets A and B
            layer_flops += (n_match + 1) // 2 * (n_match // 2) * head_dim
        total += layer_flops
        qkv_tokens.append(n_qkv)
        attn_tokens.append(n_attn)
        mlp_tokens.append(n_mlp)

    return {
        "method": method,
        "r": r,
        "gflops": total / 1e9,
        "qkv_tokens": qkv_tokens,
        "attn_tokens": attn_tokens,
        "mlp_tokens": mlp_tokens,
        "patched": is_patched(model),
    }

