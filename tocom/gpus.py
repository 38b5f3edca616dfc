"""The GPUs a config may name (`resources.<kind>.gpu_model`) and what a job needs of one.

Why: a paper job that does not fit its GPU fails after a queue wait (CUDA out of memory), and one that fits
only a larger GPU than the cluster gives it never runs. The workflow refuses such a config at start-up
(`tocom.experiments.Grid`), and workflow/scripts/estimate_gpu_hours.py states every job's need.

The need of a job, per GPU (`memory_need`): its model's state plus the activations of its per-GPU batch.

- Activations kept for the backward pass, per image: depth x tokens x width x (ACT_FP32 + ACT_PER_BYTE x b)
  bytes, b the bytes of the autocast dtype (2: fp16 or bf16; 4: autocast off). The constants are measured:
  the tensors autograd saves in one training forward (`torch.autograd.graph.saved_tensors_hooks`, weights
  and their autocast copies left out) of DeiT-B, DeiT-S and MAE ViT-B patched with ToMe or EViT at r = 0
  are 38.6-38.8 bytes per token, width unit and block under bf16 autocast and 68.7-69.1 without it
  (`tests/test_gpus.py` re-measures a ViT). The residual stream and the norms' inputs stay fp32 (8.4 bytes),
  the rest follows the dtype (15.1 values). Compression only lowers it; the jobs' r = 0 is the bound.
- Model state: fp32 weights (4 bytes a parameter), their autocast copies (2), and for the trained
  parameters fp32 gradients (4) and AdamW's two moments (8) -- all of them in full fine-tuning, the plugin or
  adapters otherwise (negligible).
- Inference (evaluation, no gradient): the weights and two blocks' worth of the batch's activations.
- OVERHEAD_GB for the CUDA context and the allocator; a job fits when its need is at most HEADROOM of the
  GPU's memory.

Torch-free: the workflow's main process checks a config with it before any job starts.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import TocomError

ACT_FP32 = 8.4          # bytes per token x width unit x block that stay fp32 under autocast (measured)
ACT_PER_BYTE = 15.1     # values per token x width unit x block stored at the autocast dtype (measured)
OVERHEAD_GB = 1.0       # CUDA context and allocator reserve
HEADROOM = 0.9          # a job fits when it needs at most this share of the GPU's memory


@dataclass(frozen=True)
class GPU:
    memory_gb: float
    speed: float        # training throughput relative to a V100 (mixed precision, ViT-B)
    why: str            # where `speed` comes from


#: The GPUs a config may name. Speed: the paper's GPU (V100) is the unit of the GPU-hour estimate; an A100's
#: dense fp16/bf16 tensor-core peak is 312 TFLOPS against the V100's 125 (2.5x), and it is taken at 2.2x
#: for a ViT-B training step (memory-bound kernels: norms, softmax, GELU, ToMe's matching, do not speed up
#: by the peak ratio). Not measured here (no GPU): recalibrate with a run's benchmark files.
GPUS = {
    "V100-16GB": GPU(16.0, 1.0, "the paper's GPU: the unit"),
    "V100-32GB": GPU(32.0, 1.0, "the paper's GPU: the unit"),
    "A100-40GB": GPU(40.0, 2.2, "312/125 TFLOPS tensor-core peak, taken at 2.2x"),
    "A100-80GB": GPU(80.0, 2.2, "312/125 TFLOPS tensor-core peak, taken at 2.2x"),
}


@dataclass(frozen=True)
class Need:
    """What one GPU of a job holds, in GB."""
    state_gb: float
    activations_gb: float
    batch_per_gpu: int

    @property
    def total_gb(self) -> float:
        return self.state_gb + self.activations_gb + OVERHEAD_GB

    def fits(self, gpu: str) -> bool:
        return self.total_gb <= HEADROOM * gpu_spec(gpu).memory_gb


def gpu_spec(name: str) -> GPU:
    if name not in GPUS:
        raise TocomError(f"unknown GPU {name!r}; name one of {', '.join(GPUS)}")
    return GPUS[name]


def activation_bytes(tokens: int, width: int, depth: int, dtype_bytes: int = 2) -> float:
    """Bytes autograd keeps of one image's training forward through `depth` blocks of `tokens` x `width`."""
    return depth * tokens * width * (ACT_FP32 + ACT_PER_BYTE * dtype_bytes)


def memory_need(*, params: int, tokens: int, width: int, depth: int, batch: int, gpus: int = 1,
                trains_all: bool = True, backward: bool = True, dtype_bytes: int = 2) -> Need:
    """Per-GPU need of a job on a ViT of `params` parameters, `depth` blocks of `tokens` x `width`: a global batch
    `batch` split over `gpus` (DDP), every parameter trained (`trains_all`, full fine-tuning) or only a small
    module (a plugin, adapters), with a backward pass or inference only."""
    per_gpu = -(-int(batch) // max(int(gpus), 1))
    state = params * (4 + (2 if dtype_bytes < 4 else 0)) + (params * 12 if trains_all and backward else 0)
    act = (per_gpu * activation_bytes(tokens, width, depth, dtype_bytes) if backward
           else 2 * per_gpu * activation_bytes(tokens, width, 1, dtype_bytes))
    return Need(state / 1e9, act / 1e9, per_gpu)
