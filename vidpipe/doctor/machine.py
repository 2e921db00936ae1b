"""Doctor checks of the machine: the plan `generate --strategy auto` would choose on it, CPU cores, memory and
free disk where videos and models land."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vidpipe.doctor.check import GB, INFO, OK, WARN, Check
from vidpipe.doctor.hub import hub_cache_root, model_readiness
from vidpipe.runtime.gpus import GpuInfo

#: Below this much free disk where videos land, a batch of MP4s (a few MB each) or PNG frames may not fit.
MIN_OUTPUT_DISK_GB = 1.0
#: SVD-XT's fp16 weights (UNet, VAE, image encoder) are about 4.5 GB: a first download needs room for them.
MIN_CACHE_DISK_GB = 10.0
#: What `generate` writes to when --out is not given (its default).
DEFAULT_OUTPUT_DIR = Path("outputs")
CPU_ADVICE = "on CPU the full-size model takes minutes per step: --model tiny (seconds) or small (CPU measurements)"


def check_auto_plan(gpus: list[GpuInfo], cache_dir: Path | None) -> Check:
    """The plan `generate --strategy auto` would choose for its default model and job on this machine, and why.

    Sized as `jobs/generate.py` sizes it; an uncached hub model is sized from its architecture config shipped in
    the package (svd-xt-random), so that nothing is downloaded.
    """
    import torch

    from vidpipe.config import GenerateConfig
    from vidpipe.models.registry import HUB_ALIASES, resolve_model
    from vidpipe.models.svd.sizes import default_size, parameter_counts
    from vidpipe.parallel.auto import ModelSize, choose_plan
    from vidpipe.runtime.devices import resolve_dtype

    model, note = GenerateConfig.model, ""
    if model_readiness(model, cache_dir) is None:
        source = resolve_model(model, offline=True, cache_dir=cache_dir)
    else:
        source = resolve_model("svd-xt-random")
        note = "\nnot cached: sized from its architecture shipped with vidpipe (svd-xt-random), nothing downloaded"
    frames, height, width = default_size(source)
    device_type = "cuda" if gpus and torch.version.cuda else "cpu"
    world_size = len(gpus) if device_type == "cuda" else 1  # generate's default: every visible GPU, or 1 CPU rank
    dtype = resolve_dtype("auto", device_type)
    counts = parameter_counts(source)
    size = ModelSize(counts["unet"], counts["vae"] + counts["image_encoder"], counts["first_channels"],
                     2 if dtype in ("fp16", "bf16") else 4, vae_params=counts["vae"])
    # No budget given: on CUDA auto reads the visible GPUs' free memory itself (nvidia-smi), as in generate.
    choice = choose_plan(world_size, GenerateConfig.samples, GenerateConfig.steps, frames, height, width,
                         GenerateConfig.max_guidance > 1, device_type, size)
    short_name = next((alias for alias, repo in HUB_ALIASES.items() if repo == model), model)
    found = (f"auto -> {choice.plan.name}: {choice.reason}\nfor generate's defaults: {short_name}, {frames} frames at "
             f"{height}x{width}, {GenerateConfig.steps} steps, {dtype}; about {choice.estimated_gb:.1f} GB per rank "
             f"(estimated){note}")
    details = {"model": model, "sized_from": source.name, "plan": choice.plan.name, "reason": choice.reason,
               "world_size": world_size, "device_type": device_type, "dtype": dtype, "frames": frames,
               "height": height, "width": width, "estimated_gb": choice.estimated_gb, "budget_gb": choice.budget_gb}
    if device_type == "cuda":
        if choice.budget_gb is not None and choice.estimated_gb > choice.budget_gb:
            return Check("auto plan", WARN, found, "fewer --frames, a smaller --height/--width, or more GPUs (fsdp)",
                         details)
        return Check("auto plan", OK, found, details=details)
    import psutil

    available_gb = psutil.virtual_memory().available / GB
    if choice.estimated_gb > available_gb:
        return Check("auto plan", WARN, found + f"\nmore than the {available_gb:.1f} GB of memory available here",
                     CPU_ADVICE, details)
    return Check("auto plan", INFO, found, CPU_ADVICE, details)


def check_cpu() -> Check:
    """Cores this process may use, and the threads each rank gets (VIDPIPE_THREADS_PER_RANK overrides)."""
    from vidpipe.runtime.devices import threads_per_rank, usable_cpu_count

    usable, forced = usable_cpu_count(), os.environ.get("VIDPIPE_THREADS_PER_RANK")
    found = f"{usable} usable core(s) of {os.cpu_count()}; "
    details = {"usable_cores": usable, "cores": os.cpu_count(), "threads_per_rank_env": forced}
    try:
        one_rank = threads_per_rank(1)
    except ValueError:
        return Check("cpu", WARN, found + f"VIDPIPE_THREADS_PER_RANK={forced!r} is not a number",
                     "set it to a whole number of threads, or unset it", details)
    if forced:
        return Check("cpu", INFO, found + f"VIDPIPE_THREADS_PER_RANK={forced}: {one_rank} thread(s) per rank",
                     "unset it unless you compare runs bit for bit (then the ranks share the cores)", details)
    return Check("cpu", INFO, found + f"VIDPIPE_THREADS_PER_RANK unset: the ranks share them ({one_rank} thread(s) "
                                      "for one rank)", details=details)


def check_memory() -> Check:
    import psutil

    memory = psutil.virtual_memory()
    return Check("memory", INFO, f"{memory.total / GB:.1f} GB RAM, {memory.available / GB:.1f} GB available",
                 details={"total_bytes": memory.total, "available_bytes": memory.available})


def free_disk_gb(path: Path) -> tuple[Path, float]:
    """(the nearest existing folder at or above `path`, its free space in GB): what a write there would find."""
    folder = path.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder, shutil.disk_usage(folder).free / GB


def check_disk(cache_dir: Path | None) -> Check:
    """Free disk where generate writes by default (./outputs) and where models download to."""
    outputs, outputs_free = free_disk_gb(DEFAULT_OUTPUT_DIR)
    cache, cache_free = free_disk_gb(hub_cache_root(cache_dir))
    found = (f"{DEFAULT_OUTPUT_DIR}/ ({outputs}): {outputs_free:.1f} GB free\n"
             f"hub cache ({cache}): {cache_free:.1f} GB free")
    details = {"output_dir": str(outputs), "output_free_gb": outputs_free, "cache_dir": str(cache),
               "cache_free_gb": cache_free}
    if outputs_free < MIN_OUTPUT_DISK_GB:
        return Check("disk", WARN, found, "free space, or write elsewhere with --out", details)
    if cache_free < MIN_CACHE_DISK_GB:
        return Check("disk", WARN, found, "a first download of SVD-XT needs about 4.5 GB: free space, or move the "
                                          "cache (HF_HOME or --cache-dir)", details)
    return Check("disk", OK, found, details=details)
