"""Apply a ToCom plugin to a model: at run time (hooks) or merged into the qkv weights.

Both give the same function. Run-time mode adds x A^T B^T to the query and value outputs of each
block's qkv projection, so gradients reach the plugin (distillation uses it). Merged mode writes
W + s * sum B A into the W_q and W_v rows once, so inference costs exactly what the plain model
costs.

Merged mode stashes the original W_q/W_v rows (rows [0:D] and [2D:3D] of each qkv weight; W_k is
never touched, so it is not stashed) once, when the compensation is made. Every `switch` then
writes stash + B_cat A_cat into those rows with one rank-k addmm per projection per layer, from the
plugin's concatenated low-rank factors (k = groups moved x rank): the D x D delta is never formed,
and since each switch starts from the exact original there is no drift however often the degree is
switched. A switch to source == target is the copy alone, and `remove()` copies the stash back, so
the original weights return bit for bit. This is what makes real-time degree switching cost about
one rank-k update of W_q and W_v (`tocom bench --plugin-check` measures it against that floor).
"""
from __future__ import annotations

import torch
from torch import nn

from ..compress import is_patched, set_r
from ..errors import TocomError
from ..settings import SCALE
from .tocom import ToCom


class Compensation:
    """A plugin applied to a model for one source -> target move; undo with `remove()` or `with`."""

    def __init__(self, model: nn.Module, plugin: ToCom, source_r: int, target_r: int, scale: float = SCALE,
                 merge: bool = True, set_degree: bool = True, strict_backbone: bool = True, dropout: float = 0.0):
        plugin.check_fits(model, strict_backbone=strict_backbone)
        if dropout and merge:
            raise TocomError("LoRA dropout applies to the run-time plugin only (merge=False)")
        self.dropout = dropout
        if set_degree and not is_patched(model) and target_r != 0:
            raise TocomError("the model is not patched for token compression; call tocom.patch(model, method) "
                             "before compensating to a target r > 0")
        self.model, self.plugin, self.scale, self.merge = model, plugin, scale, merge
        self.source_r = source_r
        self.set_degree = set_degree and is_patched(model)
        self._previous_r = list(model._tocom_state.r) if self.set_degree else None
        # merged mode: the original W_q/W_v rows of each block, {"q": (D, D), "v": (D, D)} per layer
        self._stash: list[dict[str, torch.Tensor]] | None = None
        if merge:
            with torch.no_grad():
                self._stash = [{p: rows.detach().clone() for p, rows in self._rows(qkv).items()}
                               for qkv in self._qkv()]
        self._pristine = True           # merged mode: the rows hold exactly the stash
        self._concat = None             # merged mode: all groups' factors concatenated, and their key
        self._hooks: list = []
        self._factors = None
        self.target_r: int | None = None
        self.switch(target_r)

    # ---- public --------------------------------------------------------------------------------
    def switch(self, target_r: int, scale: float | None = None) -> None:
        """Move to another target degree (and optionally scale) without touching anything else."""
        self.plugin.coefficients(self.source_r, target_r)   # validates the degrees first
        self._remove_hooks()
        self.target_r = target_r
        if scale is not None:
            self.scale = scale
        if self.set_degree:
            set_r(self.model, target_r)
        if self.merge:
            self._merge()       # overwrites the rows from the stash: nothing to undo first
        else:
            self._hook()

    def remove(self) -> None:
        """Restore the exact original weights (and r) of the model."""
        self._remove_hooks()
        self._restore()
        if self.set_degree:
            set_r(self.model, self._previous_r)

    def __enter__(self) -> "Compensation":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # ---- merged mode ---------------------------------------------------------------------------
    def _qkv(self) -> list[nn.Linear]:
        return [blk.attn.qkv for blk in self.model.blocks]

    def _rows(self, qkv: nn.Linear) -> dict[str, torch.Tensor]:
        """Views of the W_q and W_v rows of one qkv weight (rows [0:D] and [2D:3D])."""
        d, w = self.plugin.dim, qkv.weight
        return {"q": w[:d], "v": w[2 * d:3 * d]}

    @torch.no_grad()
    def _merge(self) -> None:
        """rows = stash + alpha B_cat A_cat: one rank-k addmm per projection per layer, in place.

        When the rows hold the original weights already (after construction, remove() or a switch
        to the source) the stash copy is skipped: the addmm goes straight into the rows, which is
        the same arithmetic on the same values.
        """
        move = self._move_factors()
        if move is None:                    # source == target: the original weights
            self._restore()
            return
        for layer, (qkv, stash) in enumerate(zip(self._qkv(), self._stash)):
            for p, rows in self._rows(qkv).items():
                a, b, alpha = move[p]
                if self._pristine:
                    rows.addmm_(b[layer], a[layer], alpha=alpha)
                else:                       # copy and update in one call, no separate pass
                    torch.addmm(stash[p], b[layer], a[layer], alpha=alpha, out=rows)
        self._pristine = False

    def _move_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]] | None:
        """Per projection (A_cat (L, k, D), B_cat (L, D, k), alpha) with s * sum_g c_g B_g A_g = alpha B_cat A_cat.

        Every variant's move uses a contiguous run of groups with one coefficient (Eq. 6/7), so it is
        a slice of all groups concatenated once (re-concatenated only when the plugin's parameters
        change in place or are replaced); anything else falls back to `ToCom.factors`.
        """
        coef = self.plugin.coefficients(self.source_r, self.target_r)
        if not coef:
            return None
        w = self.model.blocks[0].attn.qkv.weight
        groups, values = sorted(coef), set(coef.values())
        if len(values) == 1 and groups == list(range(groups[0], groups[0] + len(groups))):
            params = [t for d in (self.plugin.A, self.plugin.B) for t in d.values()]
            key = (w.device, w.dtype, *((id(t), t.data_ptr(), t._version) for t in params))
            if self._concat is None or self._concat[0] != key:
                depth, dim = self.plugin.depth, self.plugin.dim
                concat = {p: (self.plugin.A[p].detach().permute(1, 0, 2, 3).reshape(depth, -1, dim).to(w.device, w.dtype),
                              self.plugin.B[p].detach().permute(1, 2, 0, 3).reshape(depth, dim, -1).to(w.device, w.dtype))
                          for p in self._stash[0]}
                self._concat = (key, concat)
            h = self.plugin.rank
            lo, hi = groups[0] * h, (groups[-1] + 1) * h
            alpha = values.pop() * self.scale
            return {p: (a[:, lo:hi], b[:, :, lo:hi], alpha) for p, (a, b) in self._concat[1].items()}
        factors = self.plugin.factors(self.source_r, self.target_r, self.scale)
        return {p: (a.detach().to(w.device, w.dtype), b.detach().to(w.device, w.dtype), 1.0)
                for p, (a, b) in factors.items()}

    @torch.no_grad()
    def _restore(self) -> None:
        if self._stash is None:
            return
        for qkv, stash in zip(self._qkv(), self._stash):
            for p, rows in self._rows(qkv).items():
                rows.copy_(stash[p])
        self._pristine = True

    # ---- run-time mode -------------------------------------------------------------------------
    def _hook(self) -> None:
        if self.source_r == self.target_r:
            return
        for layer, qkv in enumerate(self._qkv()):
            self._hooks.append(qkv.register_forward_hook(self._make_hook(layer)))

    def _make_hook(self, layer: int):
        def hook(module, inputs, out):
            if layer == 0 or self._factors is None:     # once per forward: layer 0 always runs first
                self._factors = self.plugin.factors(self.source_r, self.target_r, self.scale)
            x = inputs[0]
            (aq, bq), (av, bv) = self._factors["q"], self._factors["v"]
            p = self.dropout if self.model.training else 0.0     # authors' code: dropout on the bottleneck
            dq = torch.nn.functional.dropout(x @ aq[layer].to(x.dtype).T, p) @ bq[layer].to(x.dtype).T
            dv = torch.nn.functional.dropout(x @ av[layer].to(x.dtype).T, p) @ bv[layer].to(x.dtype).T
            return out + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1).to(out.dtype)

        return hook

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks, self._factors = [], None


def compensate(model: nn.Module, plugin: ToCom, source_r: int = 0, target_r: int = 0, scale: float = SCALE,
               merge: bool = True, set_degree: bool = True, strict_backbone: bool = True,
               dropout: float = 0.0) -> Compensation:
    """Run `model` (fine-tuned at `source_r`) at `target_r` with the plugin's m -> n compensation.

    Use as a context manager; the weights and r are restored on exit. `merge=False` applies the
    plugin at run time (differentiable, slightly slower); `merge=True` edits the weights in place.
    """
    return Compensation(model, plugin, source_r, target_r, scale=scale, merge=merge,
                        set_degree=set_degree, strict_backbone=strict_backbone, dropout=dropout)
