"""The step pipeline: every rank holds the whole denoiser and runs one contiguous block of steps.

Sample i enters on rank 0 (which alone encodes the image), runs rank 0's block, is handed to rank 1, and so on;
rank W-1 holds the final latents. With many samples in flight every rank is busy on a different sample, so
throughput grows with W while one sample's latency is the sum of all blocks plus hand-offs.
"""

from __future__ import annotations

from collections import deque

import torch

from vidpipe.metrics import StepRecorder
from vidpipe.models.base import DiffusionModel, Sample
from vidpipe.runtime.dist import DistContext
from vidpipe.strategies.handoff import PendingRecv, PendingSend, post_recv, post_send
from vidpipe.strategies.schedule import block_sizes, steps_for_rank

#: Sends allowed in flight before the sender waits for the oldest: bounds the memory held by unsent states.
MAX_SENDS_IN_FLIGHT = 2


#: The denoiser is loaded straight onto the rank's device (each rank holds a whole copy).
STAGE_DENOISER_ON_CPU = False


def prepare(ctx: DistContext, model: DiffusionModel) -> None:
    """Nothing to do: every rank holds the whole model as loaded."""


def run(ctx: DistContext, model: DiffusionModel, samples: list[Sample], recorder: StepRecorder) -> dict:
    """Phase 1 on this rank. Returns {sample index: final latents on CPU} on the last rank, {} elsewhere."""
    block = steps_for_rank(model.num_steps, ctx.world_size, ctx.rank)
    spec = model.state_spec()
    finals: dict[int, torch.Tensor] = {}
    sends: deque[PendingSend] = deque()
    incoming: PendingRecv | None = None
    if not ctx.is_first and samples:
        incoming = post_recv(spec, ctx.rank - 1, ctx.device)

    for position, sample in enumerate(samples):
        # 1. Get the sample: encode it on rank 0, else take it from the previous rank.
        if ctx.is_first:
            state = model.encode(sample)
        else:
            with recorder.waiting():
                state = incoming.wait()
            # NOTE: post the next receive before computing, so that hand-off overlaps this block's steps.
            incoming = post_recv(spec, ctx.rank - 1, ctx.device) if position + 1 < len(samples) else None

        # 2. Run this rank's block of steps.
        state["latents"] = model.denoise(state, block, recorder.on_step_for(sample, block))

        # 3. Keep the result on the last rank, else post the send and go on with the next sample.
        if ctx.is_last:
            finals[sample.index] = state["latents"].to("cpu")
            recorder.sample_done(sample)
        else:
            sends.append(post_send(state, spec, ctx.rank + 1))
            while len(sends) > MAX_SENDS_IN_FLIGHT:
                with recorder.waiting():
                    sends.popleft().wait()
    with recorder.waiting():
        while sends:
            sends.popleft().wait()
    return finals


def owner_of(position: int, world_size: int) -> int:
    """The rank that holds sample number `position`'s final latents after phase 1."""
    return world_size - 1


def needs_encoder(rank: int, world_size: int) -> bool:
    return rank == 0


def ideal_makespan(step_time_s: float, num_samples: int, total_steps: int, world_size: int) -> float:
    """First sample through every block, then one sample per slowest block."""
    slowest_block = max(block_sizes(total_steps, world_size))
    return (total_steps + (num_samples - 1) * slowest_block) * step_time_s
