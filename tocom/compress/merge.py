"""ToMe: bipartite soft matching (Bolya et al., ICLR 2023), as pure functions.

Why pure functions: the same matching is used by the patched blocks, by the tests on hand-built
inputs and by anyone who wants ToMe outside a timm model. Nothing here knows about nn.Modules.

Conventions: `x` is (B, N, C) with the `prefix` class/distillation/register tokens first; those
are never merged and stay first. `size` is (B, N, 1): how many input patches each token stands for.

Why the layout matters: the next layer splits its tokens into sets A/B by position, so the order
a merge leaves behind decides every later merge. The ToMe paper's numbers (and the ToCom paper's,
which build on them) come from the reference code, so for the layouts it handles -- no prefix
token, a class token, class + distillation token (DeiT-distilled) -- we reproduce its order
exactly. Other prefixes (register tokens) it does not handle; there we set the prefix aside.

One matching, two uses: `merge_plan` returns the plan as a value, so dense prediction (ToMe before
the FFN, undone after it; the ToCom paper's segmentation appendix) can send each merged token's
output back to every token it absorbed (`unmerge`); `bipartite_soft_matching` is its merge alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Merge = Callable[[torch.Tensor, str], torch.Tensor]


def capped_r(r: int, n_patch: int) -> int:
    """ToMe merges at most half the mergeable tokens per layer (set A is half of them)."""
    return max(0, min(r, n_patch // 2))


def whole_sequence(prefix: int, distilled: bool = False) -> bool:
    """True for the layouts the reference alternates over whole: none, class, class + distillation.

    A single prefix token is taken to be the class token (timm puts it first).
    """
    return prefix <= 1 or (prefix == 2 and distilled)


@dataclass(frozen=True)
class MergePlan:
    """One bipartite soft matching: enough to merge any (B, N, C) tensor and to undo the merge.

    `src_idx` (B, r, 1): positions in set A of the tokens merged away; `dst_idx` (B, r, 1): their
    partners' positions in set B; `keep_idx` (B, Na - r, 1): the A tokens that stay, in output order.
    `start` is where the A/B alternation begins (0 for the reference layouts, else the prefix) and
    `dist` says the output interleaves a distillation token ([class, distillation, kept A, B]).
    """

    n: int
    r: int
    start: int = 0
    dist: bool = False
    src_idx: torch.Tensor | None = None
    dst_idx: torch.Tensor | None = None
    keep_idx: torch.Tensor | None = None

    @property
    def n_out(self) -> int:
        return self.n - self.r

    def merge(self, x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        """(B, N, C) -> (B, N - r, C), the merged tokens reduced by `mode` ("mean", "sum", ...)."""
        if self.r == 0:
            return x
        head, tokens = x[:, :self.start], x[:, self.start:]
        xa, xb = tokens[:, ::2], tokens[:, 1::2]
        c = x.shape[-1]
        kept = xa.gather(dim=1, index=self.keep_idx.expand(-1, -1, c))
        moved = xa.gather(dim=1, index=self.src_idx.expand(-1, -1, c))
        xb = xb.scatter_reduce(1, self.dst_idx.expand(-1, -1, c), moved, reduce=mode)
        if self.dist:
            return torch.cat([kept[:, :1], xb[:, :1], kept[:, 1:], xb[:, 1:]], dim=1)
        return torch.cat([head, kept, xb], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        return unmerge(self, y)


def merge_plan(metric: torch.Tensor, r: int, prefix: int = 1, distilled: bool = False) -> MergePlan:
    """Match `r` token pairs; the plan merges any (B, N, C) tensor (`.merge`) and undoes it (`.unmerge`).

    metric: (B, N, D) keys (mean over heads). Tokens alternate into sets A (even positions) and B
    (odd); each A token proposes its most cosine-similar B token, and the `r` best proposals are
    merged into their B partner. `r` is capped at half the patch tokens.

    Reference layouts (see `whole_sequence`): the alternation runs over the whole sequence. A class
    token is A[0] and may not propose; a distillation token (`distilled`, prefix 2) is B[0] and may
    not be proposed to. Output [kept A, B], kept A in original order if there is a class token (so
    it stays first) and, as in the reference, in descending-score order if there is not; with a
    distillation token [class, distillation, other kept A, other B].
    Any other prefix (e.g. register tokens) is set aside and only patch tokens alternate:
    [prefix, kept A in original order, B].
    """
    n = metric.shape[1]
    r = capped_r(r, n - prefix)
    if r == 0:
        return MergePlan(n=n, r=0)
    whole = whole_sequence(prefix, distilled)
    start = 0 if whole else prefix                 # where the A/B alternation begins
    cls, dist = whole and prefix >= 1, whole and prefix == 2
    with torch.no_grad():
        m = metric[:, start:]
        m = m / m.norm(dim=-1, keepdim=True)
        scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)    # (B, Na, Nb)
        if cls:
            scores[:, 0, :] = -torch.inf                      # the class token never proposes
        if dist:
            scores[:, :, 0] = -torch.inf                      # nor is the distillation token a partner
        best_val, best_dst = scores.max(dim=-1)               # each A token's best B partner
        order = best_val.argsort(dim=-1, descending=True)
        src_idx = order[:, :r, None]                          # A tokens that get merged away
        keep_idx = order[:, r:, None]
        if cls or not whole:
            keep_idx = keep_idx.sort(dim=1).values            # original order (class token first)
        dst_idx = best_dst[..., None].gather(dim=1, index=src_idx)
    return MergePlan(n=n, r=r, start=start, dist=dist, src_idx=src_idx, dst_idx=dst_idx, keep_idx=keep_idx)


def bipartite_soft_matching(metric: torch.Tensor, r: int, prefix: int = 1, distilled: bool = False) -> Merge:
    """ToMe's matching as the reference calls it: `merge(x, mode)` of the plan `merge_plan` makes."""
    return merge_plan(metric, r, prefix, distilled).merge


def merge_wavg(merge: Merge, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge by size-weighted average, so a merged token is the mean of all patches it covers."""
    dtype = x.dtype
    x = merge(x * size, "sum")
    size = merge(size, "sum")
    return (x / size).to(dtype), size


def unmerge(plan: MergePlan, y: torch.Tensor) -> torch.Tensor:
    """Undo `plan.merge`: (B, N - r, C) -> (B, N, C), every token gets the value of the token it went into.

    ToMe's unmerge: kept A tokens and all B tokens get their own slot back; each merged-away A token
    gets a copy of its B partner. It is a gather (no arithmetic), so merge -> unmerge of a sequence
    whose merged tokens are equal is the identity, and r = 0 is the identity. Differentiable.
    """
    if plan.r == 0:
        return y
    if y.shape[1] != plan.n_out:
        raise ValueError(f"unmerge: expected {plan.n_out} tokens (the plan merged {plan.n} into {plan.n_out}), "
                         f"got {y.shape[1]}")
    b, _, c = y.shape
    head, rest = y[:, :plan.start], y[:, plan.start:]
    n_a = (plan.n - plan.start + 1) // 2
    n_kept = n_a - plan.r
    if plan.dist:    # [class, distillation, other kept A, other B]
        kept = torch.cat([rest[:, :1], rest[:, 2:n_kept + 1]], dim=1)
        xb = torch.cat([rest[:, 1:2], rest[:, n_kept + 1:]], dim=1)
    else:            # [kept A, B]
        kept, xb = rest[:, :n_kept], rest[:, n_kept:]
    xa = y.new_zeros(b, n_a, c)
    xa = xa.scatter(1, plan.keep_idx.expand(-1, -1, c), kept)
    xa = xa.scatter(1, plan.src_idx.expand(-1, -1, c), xb.gather(1, plan.dst_idx.expand(-1, -1, c)))
    m = plan.n - plan.start                                  # re-interleave A (even) and B (odd)
    pos = torch.cat([torch.arange(0, m, 2), torch.arange(1, m, 2)]).to(y.device)
    tokens = torch.cat([xa, xb], dim=1)[:, pos.argsort()]
    return torch.cat([head, tokens], dim=1)
