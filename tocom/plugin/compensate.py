"""Apply a ToCom plugin to a model: at run time (hooks) or merged into the qkv weights.

Both give the same function. Run-time mode adds x A^T B^T to the query and value outputs of each
block's qkv projection, so gradients reach the plugin (distillation uses it). Merged mode adds
s * sum B A into the weights once, so inference costs exactly what the plain model costs; the
original weights are stashed and copied back bit-for-bit on removal, which is what lets a deployed
model switch degree in real time (`switch`) without drifting.
"""
from __future__ import annotations

import torch
from torch import nn

from ..compress import is_patched, set_r
from ..errors import TocomError
from .tocom import ToCom


class Compensation:
    """A plugin applied to a model for one source -> target move; undo with `remove()` or `with`."""

    def __init__(self, model: nn.Module, plugin: ToCom, source_r: int, target_r: int, scale: float = 0.1,
                 merge: bool = True, set_degree: bool = True, strict_backbone: bool = True):
        plugin.check_fits(model, strict_backbone=strict_backbone)
        if set_degree and not is_patched(model) and target_r != 0:
            raise TocomError("the model is not patched for token compression; call tocom.patch(model, method) "
                             "before compensating to a target r > 0")
        self.model, self.plugin, self.scale, self.merge = model, plugin, scale, merge
        self.source_r = source_r
        self.set_degree = set_degree and is_patched(model)
        self._previous_r = list(model._tocom_state.r) if self.set_degree else None
        self._stash: list[torch.Tensor] | None = None
        self._hooks: list = []
        self._factors = None
        self.target_r: int | None = None
        self.switch(target_r)

    # ---- public --------------------------------------------------------------------------------
    def switch(self, target_r: int, scale: float | None = None) -> None:
        """Move to another target degree (and optionally scale) without touching anything else."""
        self.plugin.coefficients(self.source_r, target_r)   # validates the degrees first
        self._undo()
        self.target_r = target_r
        if scale is not None:
            self.scale = scale
        if self.set_degree:
            set_r(self.model, target_r)
        if self.merge:
            self._merge()
        else:
            self._hook()

    def remove(self) -> None:
        """Restore the exact original weights (and r) of the model."""
        self._undo()
        if self.set_degree:
            set_r(self.model, self._previous_r)

    def __enter__(self) -> "Compensation":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # ---- merged mode ---------------------------------------------------------------------------
    def _qkv(self) -> list[nn.Linear]:
        return [blk.attn.qkv for blk in self.model.blocks]

    @torch.no_grad()
    def _merge(self) -> None:
        layers = self._qkv()
        if self._stash is None:
            self._stash = [q.weight.detach().clone() for q in layers]
        delta = self.plugin.delta(self.source_r, self.target_r, self.scale)
        d = self.plugin.dim
        for layer, qkv in enumerate(layers):
            w = qkv.weight
            w[:d] += delta["q"][layer].to(w.device, w.dtype)
            w[2 * d:] += delta["v"][layer].to(w.device, w.dtype)

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
            dq = (x @ aq[layer].to(x.dtype).T) @ bq[layer].to(x.dtype).T
            dv = (x @ av[layer].to(x.dtype).T) @ bv[layer].to(x.dtype).T
            return out + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1).to(out.dtype)

        return hook

    def _undo(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks, self._factors = [], None
        if self._stash is not None:
            with torch.no_grad():
                for qkv, w in zip(self._qkv(), self._stash):
                    qkv.weight.copy_(w)


def compensate(model: nn.Module, plugin: ToCom, source_r: int = 0, target_r: int = 0, scale: float = 0.1,
               merge: bool = True, set_degree: bool = True, strict_backbone: bool = True) -> Compensation:
    """Run `model` (fine-tuned at `source_r`) at `target_r` with the plugin's m -> n compensation.

    Use as a context manager; the weights and r are restored on exit. `merge=False` applies the
    plugin at run time (differentiable, slightly slower); `merge=True` edits the weights in place.
    """
    return Compensation(model, plugin, source_r, target_r, scale=scale, merge=merge,
                        set_degree=set_degree, strict_backbone=strict_backbone)
