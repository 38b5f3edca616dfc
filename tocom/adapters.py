"""AdaptFormer adapters (Chen et al., NeurIPS 2022) for parameter-efficient fine-tuning on VTAB-1k.

The paper fine-tunes VTAB-1k with the backbone frozen and a bottleneck adapter (hidden 32, ReLU)
beside every block's MLP, as a shortcut scaled by s: MLP(LN(x)) + s * up(relu(down(LN(x)))).
We wrap `block.mlp`, so the block (plain or token-compressed) is untouched and the adapter sees
exactly the tokens the MLP sees. `up` starts at zero: the adapted model starts as the backbone.
"""
from __future__ import annotations

from torch import nn


class Adapter(nn.Module):
    def __init__(self, dim: int, hidden: int = 32, scale: float = 0.1):
        super().__init__()
        self.down, self.act, self.up, self.scale = nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim), scale
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return self.scale * self.up(self.act(self.down(x)))


class MlpWithAdapter(nn.Module):
    def __init__(self, mlp: nn.Module, adapter: Adapter):
        super().__init__()
        self.mlp, self.adapter = mlp, adapter

    @property
    def fc1(self):          # FLOP counting and other code read the MLP's shape through here
        return self.mlp.fc1

    def forward(self, x):
        return self.mlp(x) + self.adapter(x)


def add_adapters(model: nn.Module, hidden: int = 32, scale: float = 0.1) -> nn.Module:
    """Put an adapter beside every block's MLP (idempotent). Returns the model."""
    for blk in model.blocks:
        if not isinstance(blk.mlp, MlpWithAdapter):
            blk.mlp = MlpWithAdapter(blk.mlp, Adapter(model.embed_dim, hidden, scale))
    return model

