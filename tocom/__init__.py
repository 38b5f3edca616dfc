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

The tiny backbones (`tocom_vit_tiny_patch4_56`, ...) are registered with timm as soon as both
packages are loaded, in either order: at `import tocom` when timm is already imported, otherwise
by a one-shot import hook that imports `tocom.models` right after timm finishes importing. So
`import timm, tocom; timm.create_model("tocom_vit_tiny_patch8_56")` works, and `import tocom`
alone still imports neither torch nor timm.
"""
import sys
import warnings
from importlib import import_module

from .errors import TocomError

__version__ = "0.1.0"
_LAZY = {"METHODS": "compress", "flops": "compress", "is_patched": "compress", "max_r": "compress",
         "patch": "compress", "set_r": "compress", "Compensation": "plugin", "ToCom": "plugin",
         "compensate": "plugin"}
__all__ = ["TocomError", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        globals()[name] = value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        return value
    raise AttributeError(f"module 'tocom' has no attribute {name!r}")


def __dir__():
    return __all__


# ---- registering the tiny backbones with timm, without importing timm ourselves ----------------------
def _register_with_timm() -> None:
    try:
        import_module(".models", __name__)
    except Exception as e:  # never let our registration break `import timm`
        warnings.warn(f"tocom: could not register its tiny backbones with timm ({type(e).__name__}: {e})", stacklevel=2)


class _TimmImportHook:
    """A meta-path finder that lets the normal finders locate timm, then registers after it has run."""

    _tocom_timm_hook = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        spec = next((spec for finder in list(sys.meta_path)
                     if not getattr(finder, "_tocom_timm_hook", False) and hasattr(finder, "find_spec")
                     for spec in [finder.find_spec(fullname, path, target)] if spec is not None), None)
        if spec is None:
            return None
        _remove_timm_hook()
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        inner = loader.exec_module

        def exec_module(module):
            inner(module)
            _register_with_timm()

        try:
            loader.exec_module = exec_module
        except AttributeError:
            return None      # a loader we cannot wrap: fall back to importing timm unregistered
        return spec


def _remove_timm_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "_tocom_timm_hook", False)]


if "timm" in sys.modules:
    _register_with_timm()
else:
    _remove_timm_hook()
    sys.meta_path.insert(0, _TimmImportHook())
