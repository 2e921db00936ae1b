"""Device, backend and dtype choice, from the user's flags and what the machine has. No side effects."""

from __future__ import annotations

import os

import torch

from vidpipe.errors import UsageError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cuda_device_count() -> int:
    """CUDA devices this process may use (`CUDA_VISIBLE_DEVICES` applied); 0 without CUDA.

    NOTE: `torch.cuda.device_count()` asks NVML first and the CUDA runtime only where NVML fails, so the launcher
    neither starts the driver nor creates a context (forked ranks stay able to use CUDA): what
    `PYTORCH_NVML_BASED_CUDA_CHECK=1` makes `is_available()` do. `is_available()` itself would ask the runtime.
    """
    return torch.cuda.device_count()


def resolve_device_type(device: str, gpus: int, launched_by_torchrun: bool = False) -> str:
    """'auto' | 'cpu' | 'cuda' -> 'cpu' or 'cuda', checking that the requested ranks have a GPU each."""
    available = cuda_device_count()
    if device == "auto":
        device = "cuda" if available > 0 else "cpu"
    if device == "cuda":
        if available == 0:
            raise UsageError("--device cuda: no CUDA device is visible on this machine; use --device cpu")
        # Under torchrun the ranks may span machines: each checks its own local rank when it starts.
        if not launched_by_torchrun and gpus > available:
            raise UsageError(
                f"--gpus {gpus}: only {available} CUDA device(s) visible (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use --gpus {available} or --device cpu"
            )
    return device


def resolve_backend(backend: str, device_type: str) -> str:
    """gloo on CPU, NCCL on CUDA, unless forced; NCCL without CUDA is refused up front."""
    if backend == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl" and device_type != "cuda":
        raise UsageError("--backend nccl needs CUDA devices; on CPU use --backend gloo (or auto)")
    if backend == "nccl" and not torch.distributed.is_nccl_available():
        raise UsageError("--backend nccl: this PyTorch build has no NCCL; use --backend gloo")
    return backend


def resolve_dtype(dtype: str, device_type: str) -> str:
    """'auto' -> fp16 on CUDA, fp32 on CPU."""
    if dtype == "auto":
        return "fp16" if device_type == "cuda" else "fp32"
    return dtype


def usable_cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_rank(local_world_size: int) -> int:
    """Share the CPU cores between the ranks of one machine so that they do not oversubscribe it.

    `VIDPIPE_THREADS_PER_RANK` overrides it: CPU matmuls round differently with other thread counts, so
    comparing W ranks with 1 rank bit for bit needs the same count on both sides.
    """
    forced = os.environ.get("VIDPIPE_THREADS_PER_RANK")
    if forced:
        return max(1, int(forced))
    return max(1, usable_cpu_count() // max(1, local_world_size))
