"""What every training engine shares: seeding, devices and DDP, AMP, resumable checkpoints.

Why one place: pretraining, distillation and fine-tuning differ only in which parameters train
and what the loss is. They all run `fit()`, which owns the loop, the schedule and the
checkpoints, so kill-and-resume, DDP and AMP behave the same for every step of the pipeline.

Resumability: at the end of every epoch the trainable state goes to `<out>.resume/` (weights as
safetensors, optimizer/scheduler/RNG as a weights-only torch file) through atomic renames; a
rerun with the same arguments continues from there and ends with the same weights as an
uninterrupted run (on CPU, deterministically). The final output is written last, atomically.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ..errors import TocomError
from ..io import atomic_path, write_json


# ---- processes and devices ------------------------------------------------------------------------
@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    amp: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        """bf16 autocast on CUDA when asked; a no-op on CPU so CPU results stay exact."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp and self.device.type == "cuda")


def runtime(device: str | None = None, amp: bool = True) -> Runtime:
    """Devices and, under torchrun, the process group (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(device=dev, rank=rank, world=world, amp=amp)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def loader(ds: Dataset, batch_size: int, rt: Runtime, train: bool, seed: int, workers: int = 0) -> DataLoader:
    """Deterministic loader; under DDP each rank sees its shard and the global batch is preserved."""
    sampler = DistributedSampler(ds, rt.world, rt.rank, shuffle=train, seed=seed, drop_last=train) if rt.distributed else None
    g = torch.Generator()
    g.manual_seed(seed)
    per_rank = max(1, batch_size // rt.world)
    return DataLoader(ds, batch_size=per_rank, shuffle=train and sampler is None, sampler=sampler,
                      drop_last=train and len(ds) >= per_rank * rt.world, num_workers=workers, generator=g,
                      persistent_workers=False, pin_memory=rt.device.type == "cuda")


# ---- resumable state ------------------------------------------------------------------------------
def _resume_dir(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


def save_weights(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


@dataclass
class Fit:
    """One training run. `module(images, labels)` returns the loss; its trainable parameters are
    those with requires_grad, and they are what checkpoints hold."""
    module: torch.nn.Module
    epochs: int
    lr: float
    weight_decay: float = 0.05
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6
    clip_grad: float | None = None
    desc: str = "train"

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {k: p for k, p in self.module.named_parameters() if p.requires_grad}


def fit(job: Fit, train_loader: DataLoader, out: str | Path, rt: Runtime, seed: int, progress: bool = True) -> None:
    """AdamW + warm-up + cosine over `job.module`, under DDP when distributed, resumable per epoch."""
    out = Path(out)
    resume = _resume_dir(out)
    params = job.trainable()
    opt = torch.optim.AdamW(params.values(), lr=job.lr, weight_decay=job.weight_decay)
    steps_per_epoch = max(1, len(train_loader))
    total = job.epochs * steps_per_epoch
    warm = int(job.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warm:
            return job.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return job.min_lr + 0.5 * (job.lr - job.min_lr) * (1 + math.cos(math.pi * t))

    start = 0
    if (resume / "trainable.safetensors").is_file() and (resume / "state.pt").is_file():
        saved = load_file(str(resume / "trainable.safetensors"), device=str(rt.device))
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])
        st = torch.load(resume / "state.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(st["optimizer"])
        start = int(st["epoch"])
        if rt.main:
            print(f"[tocom] resuming {out.name} after epoch {start}/{job.epochs}", file=sys.stderr, flush=True)

    net = job.module
    if rt.distributed:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = DistributedDataParallel(job.module, device_ids=ids)
    step = start * steps_per_epoch
    for epoch in range(start, job.epochs):
        # Everything random depends only on (seed, epoch), so a resumed run sees the same batches,
        # the same sampled degrees and the same dropout as an uninterrupted one.
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        if train_loader.generator is not None:
            train_loader.generator.manual_seed(seed * 1000 + epoch)
        torch.manual_seed(seed * 1000 + epoch + 1)
        job.module.train()
        bar = tqdm(train_loader, desc=f"{job.desc} {epoch + 1}/{job.epochs}", disable=not (progress and rt.main),
                   leave=False, dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30)
        started, losses = time.time(), []
        for images, labels in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            images, labels = images.to(rt.device, non_blocking=True), labels.to(rt.device, non_blocking=True)
            with rt.autocast():
                loss = net(images, labels)
            if not torch.isfinite(loss):
                raise TocomError(f"{job.desc}: loss became {loss.item()} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if job.clip_grad:
                torch.nn.utils.clip_grad_norm_(params.values(), job.clip_grad)
            opt.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr_at(step - 1):.2e}")
        if rt.main:   # one line per epoch, so logs of --quiet runs still tell how training went
            print(f"[tocom] {job.desc} epoch {epoch + 1}/{job.epochs}: loss {sum(losses) / max(1, len(losses)):.4g}, "
                  f"lr {lr_at(step - 1):.2e}, {time.time() - started:.0f}s", file=sys.stderr, flush=True)
            resume.mkdir(parents=True, exist_ok=True)
            save_weights(dict(params), resume / "trainable.safetensors")
            with atomic_path(resume / "state.pt") as tmp:
                torch.save({"optimizer": opt.state_dict(), "epoch": epoch + 1}, tmp)
        barrier(rt)


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def finish(out: Path, rt: Runtime, write: Callable[[], None], record: dict | None = None) -> None:
    """Write the final output (rank 0 only), then drop the resume state it supersedes."""
    if rt.main:
        write()
        if record is not None:
            write_json(record, out.with_name(out.name + ".json"))
        shutil.rmtree(_resume_dir(out), ignore_errors=True)
    barrier(rt)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: DataLoader, rt: Runtime, progress: bool = False, desc: str = "eval") -> tuple[float, int]:
    """Top-1 accuracy (%) and sample count, summed over ranks."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=rt.device)
    seen = torch.zeros((), dtype=torch.long, device=rt.device)
    for images, labels in tqdm(data, desc=desc, disable=not (progress and rt.main), leave=False):
        images, labels = images.to(rt.device), labels.to(rt.device)
        with rt.autocast():
            logits = model(images)
        correct += (logits.argmax(-1) == labels).sum()
        seen += labels.numel()
    if rt.distributed:
        dist.all_reduce(correct)
        dist.all_reduce(seen)
    return 100.0 * correct.item() / max(1, seen.item()), int(seen.item())
