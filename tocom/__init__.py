"""tocom: Token Compensator (Jie et al., ECCV 2024) and the token compression it compensates.

The public API, in one place:

    tocom.patch(model, method="tome" | "evit" | "idle")   # in place, idempotent
    tocom.set_r(model, r)                                  # int or per-layer list
    plugin = tocom.ToCom.for_model(model, r_max=16, rank=2, variant="tocom")
    with tocom.compensate(model, plugin, source_r=0, target_r=16, scale=0.1, merge=True):
        logits = model(x)
    plugin.save(path); plugin = tocom.ToCom.load(path)
    tocom.flops(model, r)
"""
from .compress import METHODS, flops, is_patched, max_r, patch, set_r
from .errors import TocomError
from .plugin import Compensation, ToCom, compensate

__version__ = "0.1.0"
__all__ = ["METHODS", "Compensation", "ToCom", "TocomError", "compensate", "flops", "is_patched", "max_r",
           "patch", "set_r"]
