"""IdleViT token idling (Xu et al., 2023; seed 003), mapped onto the ToMe degree ladder.

IdleViT keeps every token: in each layer only a subset of the image tokens takes part in
attention and MLP; the others are *idle* and pass to the layer's output unchanged, and may be
picked again by a later layer (no token is ever dropped, so early mistakes can be undone).

Degree mapping (ours; the IdleViT paper uses a keep ratio instead): at degree r, layer l lets
exactly as many patch tokens take part as ToMe would keep after that layer's merge, i.e.
n_{l+1} = n_l - min(r_l, n_l // 2). So the attention and MLP token counts match ToMe's at the same
r and one ladder (and one ToCom plugin) covers all three methods. Selection: the patch tokens the
class token attends to most in *this* layer (keys of all tokens, averaged over heads), computed
from the layer's own q/k so idle tokens are scored with fresh features. IdleViT's token-cut
regulariser is a training-time loss of its own and is not part of the inference-time idling.
"""
from __future__ import annotations

import torch


def select_active(score: torch.Tensor, n_active: int, prefix: int) -> torch.Tensor:
    """Indices (B, prefix + n_active), ascending, of the tokens that take part in the layer.

    score (B, N): attention each token receives from the class token. Prefix tokens always take part.
    """
    b = score.shape[0]
    top = score[:, prefix:].topk(n_active, dim=-1).indices + prefix
    head = torch.arange(prefix, device=score.device).expand(b, prefix)
    return torch.cat([head, top.sort(dim=-1).values], dim=1)
