"""Token compression for timm ViTs: ToMe merging, EViT pruning, IdleViT idling, on one r ladder."""
from .flops import flops
from .merge import bipartite_soft_matching, merge_wavg
from .patch import METHODS, is_patched, max_r, method_of, patch, set_r, token_schedule

__all__ = ["METHODS", "bipartite_soft_matching", "flops", "is_patched", "max_r", "merge_wavg",
           "method_of", "patch", "set_r", "token_schedule"]
