"""Fully sharded: each rank holds 1/W of the UNet's parameters (FSDP2 `fully_shard`), for jobs one GPU cannot hold.

Every rank runs the same sample through every step at the same time; before each UNet block runs, FSDP
all-gathers that block's parameters and frees them again after it. Every rank must therefore make exactly the
same forward calls in the same order, or the all-gathers would wait forever: the loop below is the same on
every rank, whatever the rank. Throughput does not grow with W (every rank does the same work): this strategy
buys memory, not speed.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from vidpipe.metrics import StepRecorder
from vidpipe.models.base import DiffusionModel, Sample
from vidpipe.runtime.dist import DistContext
from vidpipe.strategies.dp import needs_encoder, owner_of  # the same: every rank encodes; latents round robin

__all__ = ["prepare", "run", "owner_of", "needs_encoder", "ideal_makespan", "STAGE_DENOISER_ON_CPU"]

#: The UNet's children sharded one by one (SVD's UNet, or the simulator's stand-in), so that only one block's
#: full parameters exist at a time; whatever remains (embeddings, conv_in/out) goes with the root.
SHARD_UNITS = ("down_blocks", "mid_block", "up_blocks", "blocks")

#: The denoiser is loaded on the CPU and moved to the device shard by shard, so no rank ever holds it whole.
STAGE_DENOISER_ON_CPU = True


def prepare(ctx: DistContext, model: DiffusionModel) -> None:
    """Shard the model's UNet over all ranks, block by block, then the whole UNet."""
    unet = model.unet
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    # NOTE: on GPU the shards are kept in the run's dtype (fp16/bf16), so the all-gathers move half the bytes;
    # the policy names it explicitly. On CPU everything stays fp32, the verified reference precision.
    policy = MixedPrecisionPolicy(param_dtype=model.dtype, reduce_dtype=torch.float32, output_dtype=model.dtype)
    options = {"mesh": mesh, "reshard_after_forward": True}
    if ctx.device.type == "cuda":
        options["mp_policy"] = policy
    for name in SHARD_UNITS:
        unit = getattr(unet, name, None)
        if unit is None:
            continue
        for block in unit if isinstance(unit, torch.nn.ModuleList) else [unit]:
            fully_shard(block, **options)
    fully_shard(unet, **options)


def run(ctx: DistContext, model: DiffusionModel, samples: list[Sample], recorder: StepRecorder) -> dict:
    """Phase 1 on this rank: every sample, every step, in lockstep with the other ranks. Every rank ends with
    every sample's latents; each keeps those it will decode (`owner_of`), so phase 2 moves nothing."""
    all_steps = range(model.num_steps)
    recorder.record.comm_measured = False  # the all-gathers run inside the UNet's forward
    finals: dict[int, torch.Tensor] = {}
    for position, sample in enumerate(samples):
        latents = model.denoise(model.encode(sample), all_steps, recorder.on_step_for(sample, all_steps))
        if owner_of(position, ctx.world_size) == ctx.rank:
            finals[sample.index] = latents.to("cpu")
            recorder.sample_done(sample)
    return finals


def ideal_makespan(step_time_s: float, num_samples: int, total_steps: int, world_size: int) -> float:
    """Samples one after another, every step on every rank at once."""
    return num_samples * total_steps * step_time_s

