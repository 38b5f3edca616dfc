"""ToMe: bipartite soft matching (Bolya et al., ICLR 2023), as pure functions.

Why pure functions: the same matching is used by the patched blocks, by the tests on hand-built
inputs and by anyone who wants ToMe outside a timm model. Nothing here knows about nn.Modules.

Conventions: `x` is (B, N, C) with the `prefix` class/distillation/register tokens first; those
are never merged (they are set aside before matching, so they stay at the same indices). `size`
is (B, N, 1): how many input patches each token stands for.
"""
from __future__ import annotations

from typing import Callable

import torch

Merge = Callable[[torch.Tensor, str], torch.Tensor]


def capped_r(r: int, n_patch: int) -> int:
    """ToMe merges at most half the mergeable tokens per layer (set A is half of them)."""
    return max(0, min(r, n_patch // 2))


def bipartite_soft_matching(metric: torch.Tensor, r: int, prefix: int = 1) -> Merge:
    """Plan the merge of `r` token pairs; return `merge(x, mode)` that applies it to any (B, N, C).

    metric: (B, N, D) keys (mean over heads). Patch tokens alternate into sets A (even) and B (odd);
    each A token proposes its most cosine-similar B token, and the `r` best proposals are merged
    into their B partner. The result is [prefix, unmerged A in original order, B].
    """
    n_patch = metric.shape[1] - prefix
    r = capped_r(r, n_patch)
    if r == 0:
        return lambda x, mode="mean": x

    with torch.no_grad():
        m = metric[:, prefix:]
        m = m / m.norm(dim=-1, keepdim=True)
        a, b = m[:, ::2], m[:, 1::2]
        scores = a @ b.transpose(-1, -2)                      # (B, Na, Nb)
        best_val, best_dst = scores.max(dim=-1)               # each A token's best B partner
        order = best_val.argsort(dim=-1, descending=True)
        src_idx = order[:, :r, None]                          # A tokens that get merged away
        keep_idx = order[:, r:].sort(dim=-1).values[..., None]  # A tokens kept, original order
        dst_idx = best_dst[..., None].gather(dim=1, index=src_idx)

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        head, tokens = x[:, :prefix], x[:, prefix:]
        xa, xb = tokens[:, ::2], tokens[:, 1::2]
        c = x.shape[-1]
        kept = xa.gather(dim=1, index=keep_idx.expand(-1, -1, c))
        moved = xa.gather(dim=1, index=src_idx.expand(-1, -1, c))
        xb = xb.scatter_reduce(1, dst_idx.expand(-1, -1, c), moved, reduce=mode)
        return torch.cat([head, kept, xb], dim=1)

    return merge


def merge_wavg(merge: Merge, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge by size-weighted average, so a merged token is the mean of all patches it covers."""
    dtype = x.dtype
    x = merge(x * size, "sum")
    size = merge(size, "sum")
    return (x / size).to(dtype), size
