"""Token compression for timm ViTs: ToMe merging, EViT pruning, IdleViT idling, on one r ladder;
and ToMe before the FFN / unmerged after it ("tome_ffn") for dense prediction."""
from .flops import flops
from .merge import MergePlan, bipartite_soft_matching, merge_plan, merge_wavg, unmerge
from .patch import (ALL_METHODS, DENSE_METHODS, METHODS, is_patched, max_r, method_of, patch, set_r,
                    token_schedule)

__all__ = ["ALL_METHODS", "DENSE_METHODS", "METHODS", "MergePlan", "bipartite_soft_matching", "flops",
           "is_patched", "max_r", "merge_plan", "merge_wavg", "method_of", "patch", "set_r", "token_schedule",
           "unmerge"]
