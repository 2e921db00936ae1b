"""`--strategy auto`: choose a plan from the job (samples, steps, frames, size), the ranks and their memory.

Every plan that fits the world size is scored with a small model and the fastest one that fits in memory wins:

- time of the batch, in units of one step on one rank, divided by the group speed-up: ceil(N / G) x steps for
  dp groups, steps + (N - 1) x the longest block for the step pipeline (fill, then one sample per block); the
  group speed-up is CFG_SPEEDUP for cfg2 times K / (1 + SP_OVERHEAD (K - 1)) for spK, FSDP_SLOWDOWN with fsdp;
- memory per rank: the denoiser's parameters (1/group with fsdp; on a two-expert model, Wan 2.2 A14B, a pp stage
  whose blocks break at the expert switch holds one expert), the encoders, the VAE in fp32 (it encodes upcast and
  phase 2 decodes in fp32, whatever the run's dtype), and the activations of one denoiser call, proportional to
  the batch rows and frames a rank holds (`activation_bytes`), and what each held denoiser keeps of the contexts
  of the calls the rank makes (Wan's context cache: the cross-attention keys and values of every block).

A plan fits when what the driver will charge each rank fits the GPUs' free memory as the driver reports it
(nvidia-smi, the visible GPUs only): the estimate above is what the allocator hands out (allocated), the caching
allocator reserves more than that (RESERVED_PER_ALLOCATED) and every rank adds a CUDA context and NCCL's buffers
(PROCESS_OVERHEAD_GB). That is the rule `memory-probe` measures: reserved and the driver's figure, not allocated.

The speed-up constants are assumptions taken from `vidpipe bench` on this project's machines (see
docs/strategies.md), not measurements of yours: `vidpipe bench --compare ...` measures the real thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vidpipe.parallel.plan import ParallelPlan, frame_split
from vidpipe.runtime import gpus
from vidpipe.strategies.schedule import block_sizes, stages_before_switch

#: Speed-up of one step with the guidance batch split over 2 ranks (one all-gather of a latent per step).
CFG_SPEEDUP = 1.9
#: Fraction of a step each additional sp rank costs in communication and duplicated work.
SP_OVERHEAD = 0.12
#: fsdp's all-gathers slow every step a little; it is chosen for memory, never for speed.
FSDP_SLOWDOWN = 0.9
#: The caching allocator's reserved pool over the bytes it hands out (block rounding, fragmentation).
RESERVED_PER_ALLOCATED = 1.1
#: What the driver charges a rank beyond the reserved pool: the CUDA context, NCCL's buffers, cuBLAS workspaces.
PROCESS_OVERHEAD_GB = 1.0
#: The VAE is held in fp32 whatever the run's dtype (see the module docstring).
VAE_DTYPE_BYTES = 4
GIB = 1024**3


@dataclass(frozen=True)
class ModelSize:
    """What the memory model needs to know about the model (from its configs; no weights loaded)."""

    unet_params: int  # every denoiser's (both of Wan 2.2 A14B's experts)
    other_params: int  # VAE + encoders
    first_channels: int  # the UNet's widest-resolution channel count
    dtype_bytes: int
    vae_params: int = 0  # of `other_params`, the VAE's: sized in fp32, the rest at `dtype_bytes`
    experts: int = 1  # denoisers of one architecture that `unet_params` counts (a pp stage may hold one)
    context_bytes: int = 0  # what one denoiser keeps per guidance context during a block of steps (Wan's cache)


@dataclass(frozen=True)
class Choice:
    plan: ParallelPlan
    reason: str
    estimated_gb: float | None
    budget_gb: float | None


def group_speedup(plan: ParallelPlan) -> float:
    speedup = CFG_SPEEDUP if plan.cfg > 1 else 1.0
    speedup *= plan.sp / (1 + SP_OVERHEAD * (plan.sp - 1))
    if plan.fsdp and plan.group_size > 1:
        speedup *= FSDP_SLOWDOWN
    return speedup


def batch_time(plan: ParallelPlan, samples: int, steps: int, switch: int | None = None) -> float:
    """The batch's time in one-rank step units (see the module docstring); `switch`: the step where a two-expert
    model changes experts (the step pipeline's blocks break there)."""
    if plan.sample_axis == "dp":
        return math.ceil(samples / plan.groups) * steps / group_speedup(plan)
    return (steps + (samples - 1) * max(block_sizes(steps, plan.groups, switch))) / group_speedup(plan)


def one_expert_per_stage(plan: ParallelPlan, size: ModelSize, steps: int, switch: int | None) -> bool:
    """Whether each pp stage of `plan` holds one expert of a two-expert model: its blocks break at the switch."""
    return (plan.sample_axis == "pp" and size.experts > 1
            and stages_before_switch(steps, plan.groups, switch) is not None)


def activation_bytes(size: ModelSize, batch: int, frames: int, height: int, width: int) -> float:
    """Peak activations of one UNet call: about 20 tensors of the first level's width at latent resolution
    (the GEGLU feed-forward of the first transformer, 12 channels wide per model channel, plus the residual
    stream, attention and skip connections), per batch row and frame."""
    latent_pixels = (height // 8) * (width // 8)
    return 20.0 * size.first_channels * size.dtype_bytes * batch * frames * latent_pixels


def memory_bytes(plan: ParallelPlan, size: ModelSize, frames: int, height: int, width: int, guidance: bool,
                 steps: int = 0, switch: int | None = None) -> float:
    """Bytes the allocator hands out on the busiest rank of `plan` (allocated, not reserved)."""
    unet = size.unet_params * size.dtype_bytes / (plan.group_size if plan.fsdp else 1)
    experts_held = size.experts
    if one_expert_per_stage(plan, size, steps, switch):
        unet /= size.experts
        experts_held = 1
    encoder = (size.other_params - size.vae_params) * size.dtype_bytes
    vae = size.vae_params * VAE_DTYPE_BYTES
    batch = (2 if guidance else 1) // plan.cfg
    local_frames = frame_split(frames, plan.sp)[0]
    contexts = size.context_bytes * batch * experts_held
    return unet + encoder + vae + contexts + activation_bytes(size, batch, local_frames, height, width)


def driver_memory_gb(allocated_bytes: float) -> float:
    """What the driver will charge a rank whose allocator hands out `allocated_bytes`: the reserved pool plus
    the process's own overhead. The figure compared with the GPUs' free memory."""
    return allocated_bytes * RESERVED_PER_ALLOCATED / GIB + PROCESS_OVERHEAD_GB


def candidates(world_size: int, frames: int, steps: int, guidance: bool) -> list[ParallelPlan]:
    plans = []
    for cfg in (1, 2) if guidance else (1,):
        for sp in range(1, min(frames, world_size) + 1):
            for fsdp in (False, True):
                group = cfg * sp
                if world_size % group or (fsdp and group == 1):
                    continue
                groups = world_size // group
                plans.append(ParallelPlan("dp", groups, cfg, sp, 1, fsdp))
                if groups > 1 and steps >= groups and not fsdp:
                    plans.append(ParallelPlan("pp", groups, cfg, sp))
    # fsdp alone: the whole world, or groups of it, in lockstep (memory only).
    for shard in range(2, world_size + 1):
        if world_size % shard == 0:
            plans.append(ParallelPlan("dp", world_size // shard, 1, 1, shard, True))
    return plans


def choose_plan(
    world_size: int, samples: int, steps: int, frames: int, height: int, width: int, guidance: bool,
    device_type: str, size: ModelSize | None = None, budget_gb: float | None = None, switch: int | None = None,
) -> Choice:
    """The plan `generate --strategy auto` runs, and one line saying why. `switch`: the step where a two-expert
    model changes experts (None: one expert)."""
    if budget_gb is None and device_type == "cuda":
        budget_gb = free_gpu_memory_gb(world_size)
    plans = candidates(world_size, frames, steps, guidance)

    def memory_gb(plan: ParallelPlan) -> float | None:
        if size is None:
            return None
        return driver_memory_gb(memory_bytes(plan, size, frames, height, width, guidance, steps, switch))

    def fits(plan: ParallelPlan) -> bool:
        needed = memory_gb(plan)
        return budget_gb is None or needed is None or needed <= budget_gb

    fitting = [plan for plan in plans if fits(plan)]
    # Fastest first; among equals the smaller group (less communication), dp before pp, no fsdp.
    ranked = sorted(fitting or plans, key=lambda p: (round(batch_time(p, samples, steps, switch), 6), p.group_size,
                                                     p.sample_axis != "dp", p.fsdp))
    plan = ranked[0]
    by_expert = size is not None and one_expert_per_stage(plan, size, steps, switch)
    return Choice(plan, _reason(plan, samples, world_size, frames, device_type, memory_gb(plan), budget_gb,
                                bool(fitting), by_expert), memory_gb(plan), budget_gb)


def _reason(plan: ParallelPlan, samples: int, world_size: int, frames: int, device_type: str,
            needed_gb: float | None, budget_gb: float | None, fits: bool, by_expert: bool = False) -> str:
    ranks = f"{world_size} {'GPU' if device_type == 'cuda' else 'CPU rank'}{'s' if world_size > 1 else ''}"
    what = f"{samples} sample{'s' if samples > 1 else ''} on {ranks}"
    splits = []
    if plan.cfg > 1:
        splits.append("guidance batch")
    if plan.sp > 1:
        splits.append(f"frames ({frames} as {', '.join(map(str, frame_split(frames, plan.sp)))})")
    if plan.fsdp:
        splits.append("UNet parameters (fsdp)")
    if plan.sample_axis == "pp":
        how = f"a step pipeline of {plan.groups} stages"
        if by_expert:
            how += ", one expert per stage (the blocks break at the expert switch)"
        if splits:
            how += f", each stage a group of {plan.group_size} splitting its sample's {' and '.join(splits)}"
    elif plan.group_size == 1:
        how = "whole samples per rank" if world_size > 1 else "one rank"
    else:
        how = f"{plan.groups} group(s) of {plan.group_size}, each splitting its sample's {' and '.join(splits)}"
    memory = ""
    if needed_gb is not None and budget_gb is not None:
        memory = f"; about {needed_gb:.1f} of {budget_gb:.1f} GB free per GPU (estimated)"
        if not fits:
            memory += "; nothing fits the estimate, this plan needs the least: try fewer --frames or a smaller size"
    return f"{what}: {how}{memory}"


def free_gpu_memory_gb(world_size: int | None = None) -> float | None:
    """The smallest free memory, in GB, over the GPUs the run's ranks get: the first `world_size` that
    `CUDA_VISIBLE_DEVICES` leaves visible (all of them when None). Read with nvidia-smi so that the parent never
    creates a CUDA context of its own (it would hold GPU 0 memory for the whole run). None when it cannot be read."""
    visible = gpus.visible_gpus()[:world_size]
    free = [gpu.memory_free_mib for gpu in visible if not math.isnan(gpu.memory_free_mib)]
    return min(free) / 1024 if free else None
