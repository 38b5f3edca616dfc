"""What every engine shares: seeding, devices and DDP, AMP, resumable checkpoints, the output lock, and the
evaluation loop (every target r, plain and with each plugin, s chosen on held-out images).

Why one place: pretraining, distillation and fine-tuning differ only in which parameters train
and what the loss is. They all run `fit()`, which owns the loop, the schedule and the
checkpoints, so kill-and-resume, DDP and AMP behave the same for every step of the pipeline.

Resumability: at the end of every epoch the trainable weights, the optimizer state, the epoch
counter and the run's fingerprint go to `<out>.resume/state.pt` as ONE file (a weights-only torch
file, written to a temporary sibling and renamed into place), so a kill at any moment leaves either
the previous epoch's state or the new one, never weights from one epoch with the optimizer of
another. A rerun continues from there only if the fingerprint (every setting that shapes the result:
the engine's `fingerprint=` plus fit's own schedule, seed and trainable shapes) is the same; state
from other settings is discarded with one line on stderr. A resumed run ends with the same weights
as an uninterrupted one (on CPU, deterministically). The final output is written last, atomically.

One writer per output: `fit` takes an exclusive lock on `<out>.lock` (fcntl.flock, holder's pid,
host and Slurm job id written inside) and `finish` releases it after the final write; a second run
aimed at the same output stops with one line naming the holder. The kernel drops the lock when the
holder dies, so a killed run never blocks its rerun.

Data loading (`loader`): worker processes per rank (persistent across epochs, pinned memory and non-blocking
copies on CUDA) for training and evaluation alike. A training item's augmentation is drawn from its own seed
(run seed, epoch, rank, position in the epoch), set in whichever process loads it, so batches are the same
with 0 or 10 workers, persistent or not, and in a run resumed at any epoch. DeiT's repeated augmentation
(timm's RepeatAugSampler) is the training order when asked for.

Precision (`Runtime.precision`): fp16 autocast with a gradient scaler (the authors', and the only one V100s
have), bf16 autocast, or off; `auto` picks bf16 on GPUs with native support, fp16 on older ones and off on
CPU. The scaler's state is part of the resume state.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import random
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, get_worker_info
from tqdm import tqdm

from ..compress import set_r
from ..errors import TocomError
from ..io import atomic_path, write_csv, write_json
from ..layout import LOCK, RECORD, RESUME
from ..lineage import machine
from ..plugin import ToCom, compensate
from ..settings import EvalSettings


# ---- processes and devices ------------------------------------------------------------------------
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on a GPU with native bf16 (compute capability >= 8), fp16 on older GPUs (V100s have no
    bf16: torch would emulate it, slowly), off on CPU so CPU results stay exact. Other values stand."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    precision: str = "off"          # resolved: fp16, bf16 or off

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        """Autocast to the run's dtype (a no-op when precision is off)."""
        return torch.autocast(self.device.type, dtype=AUTOCAST.get(self.precision, torch.bfloat16),
                              enabled=self.precision in AUTOCAST)

    def scaler(self) -> torch.amp.GradScaler:
        """fp16's dynamic loss scaling (timm's NativeScaler, as the authors train); disabled otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


def runtime(device: str | None = None, precision: str = "auto") -> Runtime:
    """Devices, precision and, under torchrun, the process group (NCCL on GPUs, gloo on CPU)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    dev = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    precision = resolve_precision(precision, dev)
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise TocomError(f"precision bf16: {torch.cuda.get_device_name(dev)} has no native bfloat16; "
                         "use --precision fp16 (or auto)")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(device=dev, rank=rank, world=world, precision=precision)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_drop_path(model: torch.nn.Module, rate: float) -> None:
    """Stochastic depth rising linearly over the blocks to `rate` (DeiT); 0 removes it."""
    from timm.layers import DropPath

    for blk, r in zip(model.blocks, torch.linspace(0, rate, len(model.blocks)).tolist()):
        blk.drop_path1 = blk.drop_path2 = DropPath(r) if r > 0 else torch.nn.Identity()


def _reseed(item_seed: int) -> None:
    """Every RNG an augmentation may use: Python's (timm's RandAugment, crops, erasing), numpy's, torch's CPU
    generator. Not `torch.manual_seed`: it also (lazily) reseeds every CUDA generator, which costs ~2 ms per call
    where CUDA is not initialised (a stack trace per call) and, in the main process, would reseed the model's
    dropout on the GPU."""
    random.seed(item_seed)
    np.random.seed(item_seed % 2**32)
    torch.default_generator.manual_seed(item_seed)


class EpochOrder(Sampler):
    """One rank's training order for the current epoch (`set_epoch`), each index paired with its item's seed.

    The order: timm's RepeatAugSampler (DeiT's repeated augmentation) when `repeats` > 1; else, under DDP,
    DistributedSampler; else a random permutation. All are drawn from (seed, epoch) only."""

    def __init__(self, ds: Dataset, rt: Runtime, seed: int, repeats: int = 1):
        from timm.data.distributed_sampler import RepeatAugSampler

        self.seed, self.rank, self.epoch = seed, rt.rank, 0
        if repeats > 1:
            self.order = RepeatAugSampler(ds, num_replicas=rt.world, rank=rt.rank, num_repeats=repeats)
        elif rt.distributed:
            self.order = DistributedSampler(ds, rt.world, rt.rank, shuffle=True, seed=seed, drop_last=True)
        else:
            self.generator = torch.Generator()
            self.order = RandomSampler(ds, generator=self.generator)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if isinstance(self.order, DistributedSampler):
            self.order.set_epoch(epoch)                  # shuffles by its own seed + epoch
        elif isinstance(self.order, RandomSampler):
            self.generator.manual_seed(self.seed * 1000 + epoch)
        else:
            self.order.set_epoch(self.seed * 1000 + epoch)   # RepeatAugSampler shuffles by this number alone

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for position, index in enumerate(self.order):     # each item's seed: (seed, epoch, rank, position)
            digest = hashlib.blake2b(f"{self.seed}/{self.epoch}/{self.rank}/{position}".encode(), digest_size=8)
            yield int.from_bytes(digest.digest(), "little"), index


class SeededItems(Dataset):
    """`ds` indexed by `EpochOrder`'s (item seed, index): the loading process's RNGs are reseeded before each
    item, so its augmentation does not depend on which worker (or the main process) loads it. In the main
    process (no workers) the RNG states are restored afterwards: the model's own draws (degrees, dropout,
    stochastic depth, mixup) go on as if no data had been loaded."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        item_seed, index = key
        if get_worker_info() is not None:
            _reseed(item_seed)
            return self.ds[index]
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            _reseed(item_seed)
            return self.ds[index]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


def loading(rt: Runtime, workers: int, seed: int = 0) -> dict:
    """DataLoader options every loader shares: persistent workers, pinned memory on CUDA (copies to the GPU are
    then non-blocking), and a generator of its own (so the loader's worker base seed is not drawn from the
    global RNG, which would shift the model's draws depending on when workers start)."""
    return dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=rt.device.type == "cuda",
                generator=torch.Generator().manual_seed(seed))


def loader(ds: Dataset, batch_size: int, rt: Runtime, train: bool, seed: int, workers: int = 0, repeats: int = 1,
           collate_fn=None) -> DataLoader:
    """Deterministic loader; under DDP each rank sees its shard and the global batch is preserved.

    Training: `EpochOrder` (repeated augmentation when `repeats` > 1), per-item seeds, whole batches only (fit
    calls `loader.sampler.set_epoch`). Evaluation: every image in order (DDP: sharded), nothing random."""
    per_rank = max(1, batch_size // rt.world)
    if train:
        sampler, data = EpochOrder(ds, rt, seed, repeats), SeededItems(ds)
    else:
        sampler, data = DistributedSampler(ds, rt.world, rt.rank, shuffle=False) if rt.distributed else None, ds
    return DataLoader(data, batch_size=per_rank, sampler=sampler, drop_last=train and len(sampler) >= per_rank,
                      collate_fn=collate_fn, **loading(rt, workers, seed))


# ---- resumable state ------------------------------------------------------------------------------
RESUME_FORMAT = 3      # 1: trainable.safetensors + state.pt written one after the other (no fingerprint);
                       # 2: one optimizer group (every parameter decayed), no gradient scaler


def _resume_dir(out: Path) -> Path:
    return out.with_name(out.name + RESUME)


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _fingerprint_diff(old: dict, new: dict) -> str:
    """'key: old -> new' for the first few settings that differ (nested keys joined by dots; digests shortened)."""
    def flat(d, prefix=""):
        out = {}
        for k, v in (d.items() if isinstance(d, dict) else []):
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": _canonical(v)})
        return out
    a, b = ({k: re.sub(r'"([0-9a-f]{12})[0-9a-f]{52}"', r"\1...", v) for k, v in flat(d).items()} for d in (old, new))
    diffs = [f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in sorted(a.keys() | b.keys())
             if a.get(k) != b.get(k)]
    return ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "") or "format changed"


def _save_resume(out: Path, params: dict[str, torch.nn.Parameter], opt: "Stepper", epoch: int,
                 fingerprint: dict) -> None:
    """Weights, optimizer (with the gradient scaler), epoch and fingerprint as one file, renamed into place in one step."""
    state = {"format": RESUME_FORMAT, "fingerprint": _canonical(fingerprint), "epoch": epoch,
             "trainable": {k: p.detach().cpu().clone() for k, p in params.items()}, "optimizer": opt.state_dict()}
    with atomic_path(_resume_dir(out) / "state.pt") as tmp:  # creates <out>.resume/, and removes it again if this fails
        torch.save(state, tmp)


def _load_resume(out: Path, params: dict[str, torch.nn.Parameter], fingerprint: dict, epochs: int,
                 main: bool) -> dict | None:
    """The saved state if it belongs to this very run, else None (stale state is deleted by rank 0, with a note)."""
    resume = _resume_dir(out)
    if not resume.exists():
        return None
    try:
        st = torch.load(resume / "state.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        why = "it is incomplete (from a version that wrote weights and optimizer separately, or a killed write)"
    except Exception as e:
        why = f"it is unreadable ({type(e).__name__})"
    else:
        if not isinstance(st, dict) or st.get("format") != RESUME_FORMAT:
            why = "it was written by an older tocom in another layout"
        elif st.get("fingerprint") != _canonical(fingerprint):
            try:
                old = json.loads(st.get("fingerprint"))
            except (TypeError, ValueError):
                old = {}
            if isinstance(old, dict) and "inputs" in fingerprint and old.get("inputs") != fingerprint["inputs"]:
                why = f"it was made from other inputs ({_fingerprint_diff(old.get('inputs') or {}, fingerprint['inputs'])})"
            else:
                why = f"it was written with other settings ({_fingerprint_diff(old, fingerprint)})"
        elif set(st["trainable"]) != set(params) or any(st["trainable"][k].shape != p.shape for k, p in params.items()):
            why = "its trainable tensors do not match this model"
        elif not 0 < int(st["epoch"]) <= epochs:
            why = f"its epoch {st['epoch']} is outside 1..{epochs}"
        else:
            return st
    if main:
        print(f"[tocom] discarding the resume state in {resume}: {why}; starting afresh", file=sys.stderr, flush=True)
        shutil.rmtree(resume, ignore_errors=True)
    return None


# ---- one writer per output ------------------------------------------------------------------------
_HELD: dict[Path, int] = {}      # output -> fd of its lock file, for the locks this process holds


def acquire_output_lock(out: str | Path) -> None:
    """Hold an exclusive flock on `<out>.lock` until `release_output_lock(out)` (or process exit).

    Re-entrant within a process. A second process gets one TocomError line naming the holder.
    The file is unlinked while still locked on release, so an acquirer re-checks that the path it
    locked is still the file on disk."""
    out = Path(out).absolute()
    if out in _HELD:
        return
    lock = out.with_name(out.name + LOCK)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = " ".join(os.read(fd, 4096).decode(errors="replace").split()) or "another process"
            finally:
                os.close(fd)
            job = re.search(r"Slurm job (\S+?),", holder)
            stop = f"cancel it (scancel {job[1]})" if job else "stop it"
            raise TocomError(f"{out} is being written by another run ({holder}); let that run finish or {stop}, "
                             "then rerun") from None
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        os.close(fd)            # the holder unlinked it between our open and our flock: try the new file
    os.ftruncate(fd, 0)
    slurm = os.environ.get("SLURM_JOB_ID")
    os.write(fd, (f"pid {os.getpid()} on host {socket.gethostname()}" + (f", Slurm job {slurm}" if slurm else "")
                  + f", since {time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode())
    _HELD[out] = fd


def release_output_lock(out: str | Path) -> None:
    out = Path(out).absolute()
    fd = _HELD.pop(out, None)
    if fd is None:
        return
    try:
        out.with_name(out.name + LOCK).unlink(missing_ok=True)
    finally:
        os.close(fd)


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """timm's (DeiT's) weight-decay groups over `module`'s trainable parameters: no decay for biases, norms
    (every 1-D parameter) and whatever a timm model inside names in its `no_weight_decay()` (position
    embedding, class and distillation tokens), found at any depth (the model sits inside the loss module)."""
    from timm.optim import param_groups_weight_decay

    exempt = set()
    for prefix, sub in module.named_modules():
        if callable(getattr(sub, "no_weight_decay", None)):
            exempt |= {f"{prefix}.{name}" if prefix else name for name in sub.no_weight_decay()}
    return param_groups_weight_decay(module, weight_decay, no_weight_decay_list=sorted(exempt))


class Stepper:
    """The optimizer and fp16's gradient scaler: what steps the weights, saved and restored as one state."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
        self.optimizer, self.scaler = optimizer, scaler

    def step(self, loss: torch.Tensor, params, clip_grad: float | None) -> None:
        """Backward and step: with fp16 the loss is scaled, and a step whose gradients overflowed is skipped
        (the scale is lowered instead)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])


@dataclass
class Fit:
    """One training run. `module(images, labels)` returns the loss; its trainable parameters are
    those with requires_grad, and they are what checkpoints hold.

    The defaults are the classification recipe (AdamW, warm-up + cosine to `min_lr`, whole epochs).
    Segmentation (Segmenter's recipe) sets `optimizer="sgd"` (with `momentum`), `schedule="poly"`
    (lr = min_lr + (lr - min_lr) (1 - t) ** poly_power, t the fraction of the post-warm-up steps done)
    and `max_steps` (a budget in optimizer steps: the last epoch stops part-way)."""
    module: torch.nn.Module
    epochs: int
    lr: float
    min_lr: float                       # the floor of the schedule: each stage's settings say it
    weight_decay: float = 0.05
    warmup_epochs: float = 0.0
    clip_grad: float | None = None
    desc: str = "train"
    optimizer: str = "adamw"            # "adamw" | "sgd"
    momentum: float = 0.9               # sgd only
    schedule: str = "cosine"            # "cosine" | "poly"
    poly_power: float = 0.9             # poly only
    max_steps: int | None = None        # stop after this many optimizer steps in all (None: epochs x batches)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {k: p for k, p in self.module.named_parameters() if p.requires_grad}


def fit(job: Fit, train_loader: DataLoader, out: str | Path, rt: Runtime, seed: int, progress: bool = True,
        *, fingerprint: dict | None = None, inputs: dict | None = None) -> None:
    """AdamW + warm-up + cosine (or SGD / poly, see `Fit`) over `job.module`, under DDP when
    distributed, resumable per epoch.

    `fingerprint`: every setting of the caller that shapes the result (data, model, loss, ...); `inputs`: the
    content of what it was made from (`lineage.comparable` of the output's lineage: starting checkpoint,
    backbone, data). Saved state is resumed only when these and fit's own settings are unchanged, so a rerun
    with another --checkpoint or --data-root starts afresh, saying which input changed. Rank 0 holds
    `<out>.lock` from here until `finish` (or until this raises)."""
    out = Path(out)
    if rt.main:
        acquire_output_lock(out)
    try:
        _fit(job, train_loader, out, rt, seed, progress, fingerprint, inputs)
    except BaseException:
        if rt.main:
            release_output_lock(out)
        raise


def _fit(job: Fit, train_loader: DataLoader, out: Path, rt: Runtime, seed: int, progress: bool,
         fingerprint: dict | None, inputs: dict | None = None) -> None:
    params = job.trainable()
    groups = param_groups(job.module, job.weight_decay)
    if job.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=job.lr, weight_decay=job.weight_decay)
    elif job.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=job.lr, momentum=job.momentum, weight_decay=job.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {job.optimizer!r}; expected 'adamw' or 'sgd'")
    if job.schedule not in ("cosine", "poly"):
        raise ValueError(f"unknown schedule {job.schedule!r}; expected 'cosine' or 'poly'")
    steps_per_epoch = max(1, len(train_loader))
    total = job.epochs * steps_per_epoch
    if job.max_steps is not None:
        total = max(1, min(total, int(job.max_steps)))
    warm = int(job.warmup_epochs * steps_per_epoch)
    stamp = {"settings": fingerprint,
             "fit": {"epochs": job.epochs, "lr": job.lr, "weight_decay": job.weight_decay,
                     "warmup_epochs": job.warmup_epochs, "min_lr": job.min_lr, "clip_grad": job.clip_grad,
                     "seed": seed, "steps_per_epoch": steps_per_epoch, "world": rt.world,
                     "trainable": {k: list(p.shape) for k, p in params.items()}}}
    if inputs is not None:
        stamp["inputs"] = inputs
    # Only what differs from the classification recipe joins the stamp, so resume state written
    # before these options existed still matches.
    if job.optimizer != "adamw":
        stamp["fit"].update(optimizer=job.optimizer, momentum=job.momentum)
    if job.schedule != "cosine":
        stamp["fit"].update(schedule=job.schedule, poly_power=job.poly_power)
    if job.max_steps is not None:
        stamp["fit"]["max_steps"] = total
    if rt.precision != "off":
        stamp["fit"]["precision"] = rt.precision
    stepper = Stepper(opt, rt.scaler())

    def lr_at(step: int) -> float:
        if step < warm:
            return job.lr * (step + 1) / warm
        if job.schedule == "poly":
            frac = min(step - warm, total - warm) / max(1, total - warm)
            return job.min_lr + (job.lr - job.min_lr) * (1 - frac) ** job.poly_power
        t = (step - warm) / max(1, total - warm)
        return job.min_lr + 0.5 * (job.lr - job.min_lr) * (1 + math.cos(math.pi * t))

    start = 0
    st = _load_resume(out, params, stamp, job.epochs, rt.main)
    if st is not None:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(st["trainable"][k])
        stepper.load_state_dict(st["optimizer"])
        start = int(st["epoch"])
        if rt.main:
            print(f"[tocom] resuming {out.name} after epoch {start}/{job.epochs}", file=sys.stderr, flush=True)

    net = job.module
    if rt.distributed:
        net = DistributedDataParallel(job.module, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    step = start * steps_per_epoch
    for epoch in range(start, job.epochs):
        # Everything random depends only on (seed, epoch), so a resumed run sees the same batches,
        # the same sampled degrees, the same dropout and the same augmentations as an uninterrupted
        # one: the order and every item's augmentation come from the sampler (`EpochOrder`, per-item
        # seeds), the model's draws from torch's RNG (degrees, dropout, stochastic depth) and numpy's
        # (timm's Mixup/CutMix), reseeded here.
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        seed_everything(seed * 1000 + epoch + 1)
        job.module.train()
        bar = tqdm(train_loader, desc=f"{job.desc} {epoch + 1}/{job.epochs}", disable=not (progress and rt.main),
                   leave=False, dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30)
        started, losses = time.time(), []
        for images, labels in bar:
            if step >= total:     # a step budget (max_steps) ends the last epoch part-way
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            images, labels = images.to(rt.device, non_blocking=True), labels.to(rt.device, non_blocking=True)
            with rt.autocast():
                loss = net(images, labels)
            if not torch.isfinite(loss):
                raise TocomError(f"{job.desc}: loss became {loss.item()} at step {step}; lower the learning rate")
            stepper.step(loss, list(params.values()), job.clip_grad)
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr_at(step - 1):.2e}")
        if rt.main:   # one line per epoch, so logs of --quiet runs still tell how training went
            print(f"[tocom] {job.desc} epoch {epoch + 1}/{job.epochs}: loss {sum(losses) / max(1, len(losses)):.4g}, "
                  f"lr {lr_at(step - 1):.2e}, {time.time() - started:.0f}s", file=sys.stderr, flush=True)
            _save_resume(out, params, stepper, epoch + 1, stamp)
        barrier(rt)


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def finish(out: Path, rt: Runtime, write: Callable[[], None], record: dict | None = None) -> None:
    """Write the final output (rank 0 only), then drop the resume state it supersedes."""
    if rt.main:
        try:
            write()
            if record is not None:
                write_json({**record, "machine": machine()}, out.with_name(out.name + RECORD))
            shutil.rmtree(_resume_dir(out), ignore_errors=True)
        finally:
            release_output_lock(out)
    barrier(rt)


def write_table(df, out: str | Path | None):
    """`df` (a DataFrame), written as CSV to `out` first when one is given."""
    if out:
        write_csv(df, out)
    return df


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: DataLoader, rt: Runtime, progress: bool = False, desc: str = "eval") -> tuple[float, int]:
    """Top-1 accuracy (%) and sample count, summed over ranks."""
    model.eval()
    correct, seen = (torch.zeros((), dtype=torch.long, device=rt.device) for _ in range(2))
    for images, labels in tqdm(data, desc=desc, disable=not (progress and rt.main), leave=False):
        images, labels = images.to(rt.device, non_blocking=True), labels.to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = model(images)
        correct += (logits.argmax(-1) == labels).sum()
        seen += labels.numel()
    if rt.distributed:
        dist.all_reduce(correct)
        dist.all_reduce(seen)
    return 100.0 * correct.item() / max(1, seen.item()), int(seen.item())


# ---- evaluation ---------------------------------------------------------------------------------
def choose_scale(grid: Sequence[float], rows: list[dict], switch, score) -> float:
    """Per target: `switch(s)` then `score(s)` (which appends one row for the selection split and returns
    its score) for every s of the grid; mark the best row selected (ties: the smaller s) and return its s."""
    scores = []
    for v in grid:
        switch(v)
        scores.append(score(v))
    best = max(range(len(grid)), key=lambda i: (scores[i], -grid[i]))
    rows[-len(grid) + best]["selected"] = True
    return grid[best]


def check_plugins(models: Sequence[torch.nn.Module], plugins: dict[str, ToCom], source: int,
                  targets: Sequence[int]) -> None:
    """Every plugin fits every model (depth, width, backbone, method) and covers every move source -> target
    (r_max, degree step), checked before the first forward pass: found in the plugin loop, a misfit wasted every
    plain pass before it."""
    for label, plugin in plugins.items():
        try:
            for m in models:
                plugin.check_fits(m)
            for target in [t for t in targets if t != source]:
                plugin.coefficients(source, target)
        except TocomError as e:
            where = f" ({plugin.path})" if getattr(plugin, "path", None) else ""
            raise TocomError(f"plugin {label}{where}: {e}") from None


def evaluate_targets(models: Sequence[torch.nn.Module], splits: Sequence[str], targets: Sequence[int], source: int,
                     plugins: dict[str, ToCom], s: EvalSettings, measure: Callable[..., dict], metric: str,
                     device: torch.device, base: dict,
                     plugin_targets: dict[str, Sequence[int]] | None = None) -> list[dict]:
    """The loop of every evaluator (classification top-1, segmentation mIoU), one row per score.

    First every target r plain, on every split; then per plugin (merged into every model, on the grid
    scaled to the s it was distilled at) and per target r != source (source == target needs no plugin):
    every s of the grid on the selection split (`s.select_split`), the best (`choose_scale`) on the others.
    `models` all move together (the evaluated model and the one choosing s, when another one does);
    `measure(split, target, variant, scale)` scores one split and returns the row's metric columns,
    `metric` naming the one s is chosen on. `base`: the columns every row shares. `plugin_targets`: the targets
    a plugin is evaluated at, by label, when not every target (a plugin no study needs at some degree pair)."""
    check_plugins(models, plugins, source, targets)
    rows: list[dict] = []
    select = s.select_split

    def score(split, target, variant="", scale=None, selected=False):
        res = measure(split, target, variant, scale)
        rows.append({**base, "target_r": target, "tocom": int(bool(variant)), "variant": variant, "s": scale,
                     "split": split, **res, "selected": selected})
        return res[metric]

    for target in targets:
        for m in models:
            set_r(m, target)
        for split in splits:
            score(split, target)
    for label, plugin in plugins.items():
        grid = s.grid_for(plugin.train_scale or s.grid_scale)
        plugin.to(device)
        comps = [compensate(m, plugin, source, source, scale=grid[0], merge=True) for m in models]

        def switch(target, scale):
            for comp in comps:
                comp.switch(target, scale)

        try:
            for target in [t for t in (plugin_targets or {}).get(label, targets) if t != source]:
                best = choose_scale(grid, rows, lambda v: switch(target, v), lambda v: score(select, target, label, v))
                switch(target, best)
                for split in [x for x in splits if x != select]:
                    score(split, target, label, best, selected=True)
        finally:
            for comp in comps:
                comp.remove()
    return rows
