"""tocom: Token Compensator (Jie et al., ECCV 2024) and the token compression it compensates.

The public API, in one place:

    tocom.patch(model, method="tome" | "evit" | "idle")   # in place, idempotent
    tocom.set_r(model, r)                                  # int or per-layer list
    plugin = tocom.ToCom.for_model(model, r_max=16, rank=2, variant="tocom")
    with tocom.compensate(model, plugin, source_r=0, target_r=16, scale=0.1, merge=True):
        logits = model(x)
    plugin.save(path); plugin = tocom.ToCom.load(path)
    tocom.flops(model, r)

The names load on first use, so `import tocom.experiments` (what the Snakefile imports in every
job) does not pay for importing torch.
"""
from importlib import import_module

from .errors import TocomError

__version__ = "0.1.0"
_LAZY = {"METHODS": "compress", "flops": "compress", "is_patched": "compress", "max_r": "compress",
         "patch": "compress", "set_r": "compress", "Compensation": "plugin", "ToCom": "plugin",
         "compensate": "plugin"}
__all__ = ["TocomError", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tocom' has no attribute {name!r}")


def __dir__():
    return __all__
