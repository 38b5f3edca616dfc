"""Throughput per compression degree (the data behind the paper's Fig. 3), and the plugin's costs.

`bench` measures images per second for inference (no grad) or training (forward, backward, SGD
step) at each r, with warm-up and repeats, beside the analytic FLOPs, so measured speed-ups can be
read against the FLOPs ratio. One row per r; columns: model, method, r, mode, device, threads,
batch_size, repeats, images_per_s (median), images_per_s_std, gflops, speedup and flops_ratio
(both relative to r = 0, when r = 0 is measured).

`bench_plugin` (``tocom bench --plugin-check``) measures the paper's two deployment claims, "no
extra inference cost" and "real-time degree switching", with a random plugin (`ToCom.for_model`,
r_max = the backbone's max r, nonzero B so merging changes the weights). Its CSV is tidy, one row
per measurement, each a measured value against a reference:

==================  ===============================================================================
column              meaning
==================  ===============================================================================
model, method,      what was measured, where (threads = torch CPU threads, plugin_rank = h)
device, threads,
batch_size,
plugin_rank
kind                ``merged_throughput`` or ``switch`` (below)
source_r, target_r  the plugin move m -> n (the model is fine-tuned at m and runs at n)
from_r              switch rows: the degree the timed switch leaves; empty for throughput rows
k                   rank of the move's weight update: groups moved x h (= abs(n - m) h for ToCom)
repeats             timed repetitions (after warm-up)
value, value_std    median (and std) of the measurement over the repeats
reference,          median (and std) of what it is compared with
reference_std
ratio               median over repeats of value / reference, each repeat timing the two back
                    to back (paired, so a slow spell of a shared machine hits both alike)
unit                ``images/s`` (merged_throughput) or ``ms`` (switch)
==================  ===============================================================================

- ``merged_throughput``: one row per r. value = inference images/s at r with the plugin's m -> r
  move merged into the weights; reference = images/s of the plain model at the same r. The move's
  source is `source_r`, except at r = source_r (which would merge nothing), where it is the
  plugin's r_max (0 when source_r is r_max). Expected ratio: 1.0 (no extra inference cost).
- ``switch``: for each move source_r -> n (every n != source_r asked for, plus the largest move
  0 -> r_max), value = one `Compensation.switch(n)` on the merged model (factor slicing, setting r
  and the weight update included), timed from two states: from_r = the source (entering the move
  from the original weights) and from_r = a neighbouring target n - 1 (n + 1 when n - 1 is the
  source), which also copies the stashed original rows back. reference = the floor: one rank-k
  ``addmm_`` into each block's W_q and W_v rows for the same k, on the same weights. Ratio 1.0 =
  switching costs only the unavoidable update.

The model's weights are random: speed does not depend on them.

`bench_data` (``tocom bench --mode data``) times data loading as the training and evaluation jobs run it:
the pipeline's own loader (`common.loader`: per-item seeds, persistent workers) over the ImageNet reader
(`build_dataset("imagenet")`) with DeiT's training augmentation (RandAugment, random erasing: ``train``) or
the evaluation resize and centre crop (``eval``), on photo-like JPEGs it writes in ImageNet's layout at
ImageNet's median size, for each number of loader workers. One row per (transform, workers); columns:

==================  ===============================================================================
transform           ``train`` or ``eval``
workers             loader worker processes (0: the main process decodes)
images_per_s        median over the timed passes of images delivered per second (``_std``: their std)
images, batch_size, images per timed pass, per batch, timed passes
repeats
img_size            the model's input size the transform produces
source_width,       the fixture JPEGs' size and mean file size (ImageNet: 500 x 375 median, ~110 KB)
source_height,
jpeg_kb
cpus, threads       CPUs this process may run on; torch threads of the main process
==================  ===============================================================================

`gpu_demand` turns a backbone's analytic FLOPs into the images/s one GPU consumes per job type (the
rate its loader workers must sustain), at a stated peak and utilisation.
"""
from __future__ import annotations

import functools
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..compress import flops, max_r, patch, set_r
from ..errors import TocomError
from ..models import create_backbone
from ..plugin import Compensation, ToCom
from ..settings import BenchSettings, DataBenchSettings, MeasureSettings
from .common import Runtime, loader, resolve_precision, write_table

DATA_COLUMNS = ["transform", "workers", "images_per_s", "images_per_s_std", "images", "batch_size", "repeats",
                "img_size", "source_width", "source_height", "jpeg_kb", "cpus", "threads"]
PLUGIN_COLUMNS = ["model", "method", "device", "threads", "batch_size", "plugin_rank", "kind", "source_r",
                  "target_r", "from_r", "k", "repeats", "value", "value_std", "reference", "reference_std", "ratio", "unit"]


def _setup(m: MeasureSettings, rs: Sequence[int]):
    device = torch.device(m.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if m.threads:
        torch.set_num_threads(m.threads)
    model = patch(create_backbone(m.model), m.method).to(device)
    too_big = [r for r in rs if r > max_r(model)]
    if too_big:
        raise TocomError(f"r {too_big} exceeds what {m.model} carries (max r = {max_r(model)} for "
                         f"{model.patch_embed.num_patches} patch tokens over {len(model.blocks)} blocks)")
    return model, device


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """time(fn) -> seconds of one call, synchronising CUDA around it."""
    def time_it(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0
    return time_it


def _step(model: torch.nn.Module, x: torch.Tensor, mode: str, optimizer, scaler=None) -> None:
    """One timed pass; training steps as `common.fit` does (fp16: through the gradient scaler)."""
    if mode == "infer":
        with torch.inference_mode():
            model(x)
    else:
        optimizer.zero_grad(set_to_none=True)
        loss = model(x).float().logsumexp(dim=-1).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.pstdev(values)


def bench(m: MeasureSettings, s: BenchSettings, out: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Measure throughput at each r of the sweep in `m.mode`. Returns (and optionally writes) one row per r."""
    model, device = _setup(m, m.r)
    model.train(m.mode == "train")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6) if m.mode == "train" else None
    x = torch.randn(s.batch_size, 3, *model.patch_embed.img_size, device=device)
    rt = Runtime(device, precision=resolve_precision(m.precision, device))
    autocast, scaler = rt.autocast(), rt.scaler()
    time_it = _timer(device)
    # Warm up at every r before timing any (the first steps of a process, allocator growth, kernel
    # selection, autograd set-up, would otherwise be charged to the first r), then time the degrees
    # round-robin, so a slow spell of a shared machine hits every r alike instead of one.
    with autocast:
        for r in m.r:
            set_r(model, r)
            for _ in range(s.warmup):
                _step(model, x, m.mode, optimizer, scaler)
    times = {r: [] for r in m.r}
    with autocast:
        for _ in tqdm(range(s.repeats), desc=f"bench {m.model} {m.method} {m.mode}", disable=not progress):
            for r in m.r:
                set_r(model, r)
                times[r].append(time_it(lambda: _step(model, x, m.mode, optimizer, scaler)))
    rows = []
    for r in m.r:
        ips, ips_std = _stats([s.batch_size / t for t in times[r]])
        rows.append(dict(model=m.model, method=m.method, r=r, mode=m.mode, device=device.type, precision=rt.precision,
                         threads=torch.get_num_threads(), batch_size=s.batch_size, repeats=s.repeats,
                         images_per_s=ips, images_per_s_std=ips_std, gflops=flops(model, r)["gflops"]))
    df = pd.DataFrame(rows)
    base = df.loc[df.r == 0]
    if len(base):
        df["speedup"] = df.images_per_s / base.images_per_s.iloc[0]
        df["flops_ratio"] = base.gflops.iloc[0] / df.gflops
    return write_table(df, out)


# ---- the plugin check: two benchmarks on one model and one random plugin ------------------------------
def bench_plugin(m: MeasureSettings, s: BenchSettings, out: str | Path | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """Merged-plugin throughput against the plain model, and switch latency against its floor.

    Returns (and optionally writes) the tidy table described in the module docstring."""
    model, device = _setup(m, [*m.r, s.source_r])
    model.eval()
    plugin = _random_plugin(model, s.plugin_rank, device)
    x = torch.randn(s.batch_size, 3, *model.patch_embed.img_size, device=device)
    time_it = _timer(device)
    base = dict(model=m.model, method=m.method, device=device.type, threads=torch.get_num_threads(),
                batch_size=s.batch_size, plugin_rank=s.plugin_rank)
    rows = _merged_throughput(model, plugin, x, m.r, s, time_it, progress, desc=f"plugin throughput {m.model} {m.method}")
    rows += _switch_latency(model, plugin, m.r, s, time_it)
    df = pd.DataFrame([dict(base, **row) for row in rows], columns=PLUGIN_COLUMNS)
    df["from_r"] = df.from_r.astype("Int64")      # empty for throughput rows
    return write_table(df, out)


def _random_plugin(model: torch.nn.Module, rank: int, device: torch.device):
    """A plugin covering every degree the model carries, with B != 0 (a fresh one would merge nothing); the
    same in every run (seed 0: speed does not depend on its values)."""
    torch.manual_seed(0)
    plugin = ToCom.for_model(model, r_max=max_r(model), rank=rank).to(device).requires_grad_(False)
    with torch.no_grad():
        for b in plugin.B.values():
            b.normal_(0, 0.02)
    return plugin


def _compensations(model, plugin, sources, set_degree: bool) -> dict:
    """One merged compensation per source degree, all made while the weights are the original ones (each
    stashes them): switching one to its own source restores the original weights exactly."""
    return {m: Compensation(model, plugin, m, m, merge=True, set_degree=set_degree) for m in dict.fromkeys(sources)}


def _remove(comps: dict) -> None:
    for c in reversed(list(comps.values())):
        c.remove()                  # original weights, and r as it was before each was made


def _merged_throughput(model, plugin, x, rs, s: BenchSettings, time_it, progress: bool, desc: str) -> list[dict]:
    """Per r: images/s with the plugin's move to r merged into the weights vs the plain model at r."""
    r_start = list(model._tocom_state.r)
    alt = plugin.r_max if s.source_r != plugin.r_max else 0
    moves = [(s.source_r if r != s.source_r else alt, r) for r in rs]
    comps = _compensations(model, plugin, [m for m, _ in moves], set_degree=False)
    infer = functools.partial(_step, model, x, "infer", None)
    for m, r in moves:              # warm up every (r, weights) pair before timing any
        set_r(model, r)
        for state in (m, r):
            comps[m].switch(state)
            for _ in range(s.warmup):
                infer()
    plain, merged = {r: [] for r in rs}, {r: [] for r in rs}
    for i in tqdm(range(s.repeats), desc=desc, disable=not progress):
        for m, r in moves:          # round-robin over r; plain and merged back to back, order alternating
            set_r(model, r)
            for state in ((m, r) if i % 2 == 0 else (r, m)):
                comps[m].switch(state)
                (plain if state == m else merged)[r].append(time_it(infer))
    _remove(comps)
    set_r(model, r_start)
    rows = []
    for m, r in moves:
        ips_plain, ips_merged = ([s.batch_size / t for t in times[r]] for times in (plain, merged))
        (value, value_std), (ref, ref_std) = _stats(ips_merged), _stats(ips_plain)
        rows.append(dict(kind="merged_throughput", source_r=m, target_r=r, k=abs(r - m) * s.plugin_rank,
                         repeats=s.repeats, value=value, value_std=value_std, reference=ref, reference_std=ref_std,
                         ratio=statistics.median(a / b for a, b in zip(ips_merged, ips_plain)), unit="images/s"))
    return rows


def _floor(model, dim: int, ks) -> Callable[[int], None]:
    """floor(k): one rank-k addmm_ into each block's W_q and W_v rows, the least a switch of rank k
    can cost (random factors seeded by k, small enough to leave the weights usable)."""
    rows_of = [(blk.attn.qkv.weight[:dim], blk.attn.qkv.weight[2 * dim:3 * dim]) for blk in model.blocks]
    w = model.blocks[0].attn.qkv.weight
    factors = {}
    for k in ks:
        gen = torch.Generator().manual_seed(k)
        factors[k] = (torch.randn(len(model.blocks), 2, k, dim, generator=gen).to(w.device, w.dtype),
                      (torch.randn(len(model.blocks), 2, dim, k, generator=gen) * 1e-3).to(w.device, w.dtype))

    @torch.no_grad()
    def floor(k: int) -> None:
        a, b = factors[k]
        for layer, (wq, wv) in enumerate(rows_of):
            wq.addmm_(b[layer, 0], a[layer, 0])
            wv.addmm_(b[layer, 1], a[layer, 1])
    return floor


def _neighbour(m: int, n: int, r_max: int) -> int | None:
    """The degree a retarget to n leaves: n - 1, or n + 1 when n - 1 is the source (None if neither fits)."""
    return next((o for o in (n - 1, n + 1) if 0 <= o <= r_max and o not in (m, n)), None)


def _switch_latency(model, plugin, rs, s: BenchSettings, time_it) -> list[dict]:
    """Per move source_r -> n (and 0 -> r_max): one `switch(n)` timed from the source and from a
    neighbouring target, against the floor of the same rank k."""
    switches = [(s.source_r, n) for n in rs if n != s.source_r]
    if (0, plugin.r_max) not in switches:
        switches.append((0, plugin.r_max))
    k_of = {mv: len(plugin.coefficients(*mv)) * s.plugin_rank for mv in switches}
    floor = _floor(model, plugin.dim, dict.fromkeys(k_of.values()))
    comps = _compensations(model, plugin, [m for m, _ in switches], set_degree=True)
    # per move: the from-states timed (the source itself: entering; a neighbouring target: retargeting)
    starts = {(m, n): [f for f in (m, _neighbour(m, n, plugin.r_max)) if f is not None] for m, n in switches}
    sw = {(mv, f): [] for mv in switches for f in starts[mv]}
    fl = {mv: [] for mv in switches}
    for i in range(-s.warmup, s.switch_repeats):
        for m, n in switches:
            c, k = comps[m], k_of[(m, n)]
            tasks = [(m, fl[(m, n)], lambda: floor(k))]
            tasks += [(f, sw[((m, n), f)], lambda: c.switch(n)) for f in starts[(m, n)]]
            for state, store, fn in (tasks if i % 2 == 0 else tasks[::-1]):
                c.switch(state)     # where the timed call starts from (not timed)
                t = time_it(fn)
                if i >= 0:
                    store.append(t * 1e3)
    _remove(comps)
    rows = []
    for mv in switches:
        ref, ref_std = _stats(fl[mv])
        for start in starts[mv]:
            value, value_std = _stats(sw[(mv, start)])
            rows.append(dict(kind="switch", source_r=mv[0], target_r=mv[1], from_r=start, k=k_of[mv],
                             repeats=s.switch_repeats, value=value, value_std=value_std, reference=ref,
                             reference_std=ref_std, unit="ms",
                             ratio=statistics.median(a / b for a, b in zip(sw[(mv, start)], fl[mv]))))
    return rows


# ---- data loading: what the loader workers deliver, and what a GPU consumes ---------------------------------
FIXTURE_FILES = 256          # JPEGs written; a pass longer than that reads them again (from the page cache,
                             # as a real epoch mostly does not: the disk is not what this measures)


def photo_like(rng, width: int, height: int):
    """A PIL image whose JPEG weighs what an ImageNet photo does at that size (~110 KB at 500 x 375, quality
    90): colour fields at four spatial scales plus sensor-like noise. Random pixels would be 3x larger and
    slower to decode; flat ones much faster."""
    from PIL import Image

    img = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 90), (16, 45), (64, 30), (250, 30)):
        small = rng.normal(0, amplitude, (max(2, cells * height // width), cells, 3))
        layer = Image.fromarray(np.uint8(np.clip(small + 128, 0, 255))).resize((width, height), Image.BICUBIC)
        img += np.asarray(layer, np.float32) - 128
    img += rng.normal(0, 10, img.shape)
    return Image.fromarray(np.uint8(np.clip(img + 128, 0, 255)))


def write_jpeg_folder(root: Path, n: int, width: int, height: int, seed: int = 0) -> float:
    """`n` photo-like JPEGs in ImageNet's layout, root/train/<wnid>/<wnid>_<i>.JPEG over 8 wnids; their mean
    size in KB."""
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(n):
        wnid = f"n{i % 8:08d}"
        path = Path(root) / "train" / wnid / f"{wnid}_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo_like(rng, width, height).save(path, format="JPEG", quality=90)
        sizes.append(path.stat().st_size)
    return sum(sizes) / len(sizes) / 1024


def bench_data(d: DataBenchSettings, s: BenchSettings, threads: int | None = None, out: str | Path | None = None,
               progress: bool = True) -> pd.DataFrame:
    """Images/s of the pipeline's loader per transform and number of workers (the module docstring's table)."""
    from torch.utils.data import Subset

    from ..data import build_dataset

    if threads:
        torch.set_num_threads(threads)
    rt = Runtime(torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="tocom-data-bench-") as tmp:
        kb = write_jpeg_folder(Path(tmp), min(d.images, FIXTURE_FILES), d.width, d.height)
        for transform in d.transforms:
            ds = build_dataset("imagenet", root=tmp, split="trainval", img_size=d.img_size,
                               augment=transform == "train")
            data = Subset(ds, [i % len(ds) for i in range(d.images)])
            for workers in d.worker_counts:
                dl = loader(data, s.batch_size, rt, train=transform == "train", seed=0, workers=workers)
                rates = []
                for i in tqdm(range(-1 if s.warmup else 0, s.repeats), desc=f"data {transform} workers={workers}",
                              disable=not progress, leave=False):
                    if hasattr(dl.sampler, "set_epoch"):
                        dl.sampler.set_epoch(i + 1)
                    started, seen = time.perf_counter(), 0
                    for images, _ in dl:      # a warm-up pass (i = -1) starts the persistent workers
                        seen += images.shape[0]
                    if i >= 0:
                        rates.append(seen / (time.perf_counter() - started))
                del dl                        # stops its workers
                ips, ips_std = _stats(rates)
                rows.append(dict(transform=transform, workers=workers, images_per_s=ips, images_per_s_std=ips_std,
                                 images=d.images, batch_size=s.batch_size, repeats=s.repeats, img_size=d.img_size,
                                 source_width=d.width, source_height=d.height, jpeg_kb=round(kb, 1),
                                 cpus=len(os.sched_getaffinity(0)), threads=torch.get_num_threads()))
    return write_table(pd.DataFrame(rows, columns=DATA_COLUMNS), out)


#: Forward-pass equivalents one image costs per job type (analytic, per image): full fine-tuning 3 (forward,
#: then backward with weight and activation gradients, 2); a frozen backbone's backward only propagates
#: activation gradients (1), so AdaptFormer costs 2 and the distillation's student 2 at n plus the teacher's
#: forward at m; evaluation 1. The transform each job's images go through, as the data bench names it.
JOBS = {"distill": (None, "train"), "finetune_full": (3, "train"), "finetune_adaptformer": (2, "eval"),
        "evaluate": (1, "eval")}


def gpu_demand(m: MeasureSettings, tflops: float, utilisation: float, r_max: int = 16) -> pd.DataFrame:
    """Images/s one GPU consumes per job type: peak x utilisation / FLOPs per image, FLOPs from `m.model`'s
    analytic count under `m.method` (multiply-adds x 2) at r = 0 (fine-tuning and evaluation at the source
    r = 0, the dearest) and, for the distillation, averaged over the degree pairs it draws (m != n uniform on
    0..r_max: each of m and n is uniform, so its cost is 3 x the mean forward)."""
    model = patch(create_backbone(m.model), m.method)
    per_r = [flops(model, r)["gflops"] for r in range(min(r_max, max_r(model)) + 1)]
    rate = tflops * 1e12 * utilisation
    rows = []
    for job, (factor, transform) in JOBS.items():
        gmacs = 3 * statistics.mean(per_r) if factor is None else factor * per_r[0]
        rows.append(dict(job=job, model=m.model, method=m.method, transform=transform, gflops_per_image=2 * gmacs,
                         tflops=tflops, utilisation=utilisation, images_per_s=rate / (2 * gmacs * 1e9)))
    return pd.DataFrame(rows)


def workers_needed(demand: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Per job type: loader workers per GPU at the measured per-worker rate of its transform (the best
    images/s per worker over the measured worker counts > 0), rounded up."""
    per_worker = {t: max((g.images_per_s / g.workers)[g.workers > 0], default=math.nan)
                  for t, g in data.groupby("transform")}
    out = demand.copy()
    out["images_per_s_per_worker"] = out["transform"].map(per_worker)
    out["workers_per_gpu"] = [math.ceil(n / w) if w == w else None
                              for n, w in zip(out.images_per_s, out.images_per_s_per_worker)]
    return out
