"""The Token Compensator: LoRA pairs on W_q and W_v, one group per adjacent degree pair.

Paper Eq. 5-7: P_{i->i+1} is a rank-h LoRA (B_i A_i) on the query and value weights of every
block. Moving a model fine-tuned at source degree m to target degree n adds
s * sum_{i=m}^{n-1} B_i A_i when n > m and subtracts it when n < m (the gap is assumed invertible).

Variants used by the ablations (paper Table 5):
- ``tocom``: R groups, inverted by subtraction (the method).
- ``shared``: one group used for every adjacent pair, so m -> n applies (n - m) times its product;
  choose its rank to match ToCom's parameter count (the paper compares equal budgets).
- ``no_inversion``: 2R groups; groups 0..R-1 move up (i -> i+1), groups R..2R-1 move down
  (i+1 -> i) and are added, never subtracted.

Degree step (``r_step``, default 1): with r_step = k, group i bridges k*i -> k*(i+1), so R / k
groups cover 0..R and only multiples of k are valid degrees (m -> n sums groups m/k .. n/k - 1).
Dense prediction needs it: tome_ffn on 1,024 tokens runs r up to 512, where one group per adjacent
r would be absurd. It is saved in the header ("r_step"; a header without it means 1).

The parameters are stacked per projection as A: (G, L, h, D) and B: (G, L, D, h) so one einsum
gives any m -> n delta for all L blocks at once.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..errors import TocomError
from ..io import header_json, read_safetensors, read_safetensors_header, write_safetensors
from ..settings import VARIANTS, DistillSettings

_DEFAULT = DistillSettings()     # a plugin made here without settings gets the distillation defaults
PROJECTIONS = ("q", "v")
FORMAT_VERSION = 1


class ToCom(nn.Module):
    def __init__(self, depth: int, dim: int, r_max: int = _DEFAULT.r_max, rank: int = _DEFAULT.rank,
                 variant: str = _DEFAULT.variant, backbone: str = "", method: str = _DEFAULT.method,
                 r_step: int = _DEFAULT.r_step):
        super().__init__()
        if variant not in VARIANTS:
            raise TocomError(f"unknown ToCom variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if r_max < 1 or rank < 1:
            raise TocomError(f"ToCom needs r_max >= 1 and rank >= 1, got r_max={r_max}, rank={rank}")
        if r_step < 1 or r_max % r_step:
            raise TocomError(f"ToCom needs r_step >= 1 dividing r_max, got r_max={r_max}, r_step={r_step}")
        self.depth, self.dim, self.r_max, self.rank = depth, dim, r_max, rank
        self.variant, self.backbone, self.method, self.r_step = variant, backbone, method, r_step
        self.extra: dict = {}       # provenance from a saved plugin's header (`save(extra=...)`)
        self.path: Path | None = None   # the file it was loaded from (named in refusals)
        groups = num_groups(variant, r_max, r_step)
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for p in PROJECTIONS:
            a = torch.empty(groups, depth, rank, dim)
            for g in range(groups):           # LoRA init: A like nn.Linear, B = 0 (no change at start)
                for layer in range(depth):
                    nn.init.kaiming_uniform_(a[g, layer], a=math.sqrt(5))
            self.A[p] = nn.Parameter(a)
            self.B[p] = nn.Parameter(torch.zeros(groups, depth, dim, rank))

    @classmethod
    def for_model(cls, model: nn.Module, r_max: int = _DEFAULT.r_max, rank: int = _DEFAULT.rank,
                  variant: str = _DEFAULT.variant, r_step: int = _DEFAULT.r_step) -> "ToCom":
        """A fresh plugin shaped for `model` (a timm ViT, patched or not)."""
        from ..compress import method_of

        return cls(depth=len(model.blocks), dim=model.embed_dim, r_max=r_max, rank=rank, variant=variant,
                   backbone=backbone_name(model), method=method_of(model) or _DEFAULT.method, r_step=r_step)

    @property
    def train_scale(self) -> float | None:
        """The scale s it was distilled at, as its header records (None for a plugin made here or elsewhere)."""
        value = self.extra.get("train_scale")
        return float(value) if value is not None else None

    @property
    def num_groups(self) -> int:
        return self.A["q"].shape[0]

    def coefficients(self, source_r: int, target_r: int) -> dict[int, float]:
        """Which groups m -> n uses and with what sign/multiplicity (Eq. 6 and 7)."""
        for name, r in (("source_r", source_r), ("target_r", target_r)):
            if not 0 <= r <= self.r_max:
                raise TocomError(f"{name}={r} is outside this plugin's degrees 0..{self.r_max}; "
                                 f"distill a plugin with r_max >= {r}")
            if r % self.r_step:
                raise TocomError(f"{name}={r} is not a multiple of this plugin's degree step {self.r_step}; "
                                 f"use degrees 0, {self.r_step}, {2 * self.r_step}, ...")
        m, n = source_r // self.r_step, target_r // self.r_step
        if m == n:
            return {}
        if self.variant == "shared":
            return {0: float(n - m)}
        if n > m:
            return {i: 1.0 for i in range(m, n)}
        if self.variant == "no_inversion":
            return {self.r_max // self.r_step + i: 1.0 for i in range(n, m)}
        return {i: -1.0 for i in range(n, m)}

    def delta(self, source_r: int, target_r: int, scale: float) -> dict[str, torch.Tensor]:
        """Weight deltas per projection, (L, D_out, D_in): s * sum_g c_g B_g A_g (the factors multiplied out)."""
        factors = self.factors(source_r, target_r, scale)
        if factors is None:
            return {p: self.A[p].new_zeros(self.depth, self.dim, self.dim) for p in PROJECTIONS}
        return {p: b_cat @ a_cat for p, (a_cat, b_cat) in factors.items()}

    def factors(self, source_r: int, target_r: int, scale: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        """Low-rank factors per projection, (L, k*h, D) and (L, D, k*h), with s and signs folded into B.

        The run-time path multiplies activations by these instead of forming the D x D delta, which is
        what makes training the plugin cheap.
        """
        coef = self.coefficients(source_r, target_r)
        if not coef:
            return None
        out = {}
        for p in PROJECTIONS:
            a, b = self.A[p], self.B[p]
            idx = torch.tensor(list(coef), device=a.device)
            c = torch.tensor(list(coef.values()), device=a.device, dtype=a.dtype) * scale
            a_cat = a[idx].permute(1, 0, 2, 3).reshape(self.depth, -1, self.dim)
            b_cat = (b[idx] * c[:, None, None, None]).permute(1, 2, 0, 3).reshape(self.depth, self.dim, -1)
            out[p] = (a_cat, b_cat)
        return out

    # ---- persistence -------------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        return {"format": "tocom", "format_version": str(FORMAT_VERSION), "backbone": self.backbone,
                "width": str(self.dim), "depth": str(self.depth), "method": self.method,
                "r_max": str(self.r_max), "rank": str(self.rank), "variant": self.variant,
                "r_step": str(self.r_step)}

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the plugin as safetensors with its shape and provenance in the header (atomically)."""
        meta = self.metadata()
        if extra:
            meta["extra"] = extra
        write_safetensors({f"{k}.{p}": getattr(self, k)[p] for k in ("A", "B") for p in PROJECTIONS}, path, meta)

    @classmethod
    def load(cls, path: str | Path) -> "ToCom":
        """Read a plugin written by `save`, after checking that its header and its tensors agree."""
        path = Path(path)
        if not path.is_file():
            raise TocomError(f"no ToCom plugin at {path}; run `tocom distill` to make one or fix the path")
        fix = "re-run `tocom distill`"
        meta, shapes = read_safetensors_header(path, fix)
        if meta.get("format") != "tocom":
            raise TocomError(f"{path} is a safetensors file but not a ToCom plugin (no 'format: tocom' metadata)")
        header, extra = _plugin_header(path, meta)
        _check_plugin_tensors(path, header, shapes)
        tensors = read_safetensors(path, fix)
        bad = [k for k, t in tensors.items() if not t.is_floating_point()]
        if bad:
            raise TocomError(f"{path}: tensor {bad[0]} holds {tensors[bad[0]].dtype}, not floats; the plugin is damaged, "
                             "re-run `tocom distill`")
        bad = [k for k, t in tensors.items() if not torch.isfinite(t).all()]
        if bad:
            raise TocomError(f"{path}: tensor {bad[0]} holds NaN or inf; the plugin is damaged (or its distillation "
                             "diverged), re-run `tocom distill`")
        plugin = cls(**header)
        plugin.extra = extra
        plugin.path = path
        with torch.no_grad():
            for k in ("A", "B"):
                for p in PROJECTIONS:
                    getattr(plugin, k)[p].copy_(tensors[f"{k}.{p}"])
        return plugin

    def check_fits(self, model: nn.Module, strict_backbone: bool = True) -> None:
        """Raise a one-line TocomError saying what differs if this plugin cannot drive `model`."""
        from ..compress import method_of

        problems = []
        if len(model.blocks) != self.depth:
            problems.append(f"depth {self.depth} vs model {len(model.blocks)}")
        if model.embed_dim != self.dim:
            problems.append(f"width {self.dim} vs model {model.embed_dim}")
        name = backbone_name(model)
        if strict_backbone and self.backbone and name and name != self.backbone:
            problems.append(f"backbone {self.backbone} vs model {name}")
        method = method_of(model)
        if method and method != self.method:
            problems.append(f"method {self.method} vs model {method}")
        if problems:
            raise TocomError(f"ToCom plugin does not fit the model: {'; '.join(problems)}; "
                             "use a plugin distilled for this backbone and compression method")

    def extra_repr(self) -> str:
        return (f"backbone={self.backbone!r}, method={self.method}, variant={self.variant}, depth={self.depth}, "
                f"dim={self.dim}, r_max={self.r_max}, rank={self.rank}, r_step={self.r_step}")


def backbone_name(model: nn.Module) -> str:
    """The timm architecture name a model was built from ('' if unknown)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return cfg.get("architecture", "") or ""


def num_groups(variant: str, r_max: int, r_step: int = 1) -> int:
    """How many LoRA groups a plugin of `variant` holds (see the module docstring)."""
    steps = r_max // r_step
    return {"tocom": steps, "shared": 1, "no_inversion": 2 * steps}[variant]


def _plugin_header(path: Path, meta: dict[str, str]) -> tuple[dict, dict]:
    """The constructor arguments a plugin's safetensors header promises, each checked (one-line errors), and
    its provenance (`extra`: how it was distilled)."""
    fix = "the plugin header is damaged or was edited; re-run `tocom distill`"
    missing = [k for k in ("depth", "width", "r_max", "rank", "variant") if k not in meta]
    if missing:
        raise TocomError(f"{path}: plugin header lacks {', '.join(missing)}; {fix}")
    ints = {}
    meta = {"r_step": "1", **meta}        # plugins written before the degree step existed: step 1
    for key in ("depth", "width", "r_max", "rank", "r_step"):
        try:
            ints[key] = int(meta[key])
        except ValueError:
            raise TocomError(f"{path}: plugin header has {key}={meta[key]!r}, not a whole number; {fix}") from None
        if ints[key] < 1:
            raise TocomError(f"{path}: plugin header has {key}={ints[key]}, must be at least 1; {fix}")
    if ints["r_max"] % ints["r_step"]:
        raise TocomError(f"{path}: plugin header has r_step={ints['r_step']}, which does not divide "
                         f"r_max={ints['r_max']}; {fix}")
    if meta["variant"] not in VARIANTS:
        raise TocomError(f"{path}: plugin header has variant {meta['variant']!r}, not one of {', '.join(VARIANTS)}; {fix}")
    extra = header_json(path, meta, "extra", "plugin header's 'extra'", fix) or {}
    _check_extra(path, extra, fix)
    return dict(depth=ints["depth"], dim=ints["width"], r_max=ints["r_max"], rank=ints["rank"],
                variant=meta["variant"], backbone=meta.get("backbone", ""), method=meta.get("method", "tome"),
                r_step=ints["r_step"]), extra


def _check_extra(path: Path, extra: dict, fix: str) -> None:
    """The provenance values the evaluation uses: the training scale sets the s grid (a scale of -1, 0, NaN or
    text would put s = -1 or an empty s in the table), the seed names the run, the lineage is a record."""
    scale = extra.get("train_scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale) or scale <= 0):
        raise TocomError(f"{path}: plugin header has train_scale={scale!r}, not a number > 0; {fix}")
    seed = extra.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise TocomError(f"{path}: plugin header has seed={seed!r}, not a whole number >= 0; {fix}")
    for key in ("settings", "lineage"):
        if extra.get(key) is not None and not isinstance(extra[key], dict):
            raise TocomError(f"{path}: plugin header has {key}={extra[key]!r}, not an object; {fix}")


def _check_plugin_tensors(path: Path, header: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every tensor the header implies is present with exactly the implied shape, and nothing else is."""
    g = num_groups(header["variant"], header["r_max"], header["r_step"])
    depth, dim, rank = header["depth"], header["dim"], header["rank"]
    expected = {}
    for p in PROJECTIONS:
        expected[f"A.{p}"] = (g, depth, rank, dim)
        expected[f"B.{p}"] = (g, depth, dim, rank)
    fix = "header and tensors disagree, so the file is damaged or was edited; re-run `tocom distill`"
    step = f" in steps of {header['r_step']}" if header["r_step"] != 1 else ""
    promise = f"{header['variant']} with r_max {header['r_max']}{step} ({g} groups), depth {depth}, width {dim}, rank {rank}"
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise TocomError(f"{path}: header says {promise} but tensor(s) {', '.join(missing)} are missing; {fix}")
    unexpected = sorted(k for k in shapes if k not in expected)
    if unexpected:
        raise TocomError(f"{path}: header says {promise} but it holds unexpected tensor(s) {', '.join(unexpected)}; {fix}")
    for k, want in expected.items():
        if shapes[k] != want:
            raise TocomError(f"{path}: header says {promise}, so {k} should be {want}, but it is {shapes[k]}; {fix}")
