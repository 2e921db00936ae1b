"""The step pipeline: every stage holds the whole denoiser and runs one contiguous block of steps.

Sample i enters stage 0 (which alone encodes the image), runs stage 0's block, is handed to stage 1, and so on;
the last stage holds the final latents. With many samples in flight every stage is busy on a different sample, so
throughput grows with the number of stages while one sample's latency is the sum of all blocks plus hand-offs.
A stage is a group of ranks: each rank hands its state to the rank playing its part in the next stage, and a
group that splits its samples (cfg, sp) cuts its block's latency.
"""

from __future__ import annotations

from collections import deque

import torch

from vidpipe.metrics import StepRecorder
from vidpipe.models.base import DiffusionModel, Sample
from vidpipe.parallel.layout import Layout
from vidpipe.strategies.handoff import PendingRecv, PendingSend, post_recv, post_send
from vidpipe.strategies.schedule import block_sizes, steps_for_rank, steps_of, switch_of

#: Sends allowed in flight before the sender waits for the oldest: bounds the memory held by unsent states.
MAX_SENDS_IN_FLIGHT = 2


def run(layout: Layout, model: DiffusionModel, samples: list[Sample], recorder: StepRecorder) -> dict:
    """Phase 1 on this rank. Returns {sample index: final latents on CPU} on the last stage, {} elsewhere."""
    stage, stages = layout.group_index, layout.plan.groups
    first, last = stage == 0, stage == stages - 1
    device = layout.ctx.device
    finals: dict[int, torch.Tensor] = {}
    sends: deque[PendingSend] = deque()
    incoming: PendingRecv | None = None
    if not first and samples:
        incoming = post_recv(model.sample_spec(samples[0]), layout.peer(stage - 1), device)
    ahead = EncodeAhead(model, samples, recorder)

    for position, sample in enumerate(samples):
        # 1. Get the sample: encode it on the first stage (while the previous block ran), else take it from the
        #    previous stage.
        if first:
            state = ahead.take(position)
        else:
            with recorder.waiting():
                state = incoming.wait()
            # NOTE: post the next receive before computing, so that hand-off overlaps this block's steps.
            following = samples[position + 1] if position + 1 < len(samples) else None
            incoming = post_recv(model.sample_spec(following), layout.peer(stage - 1), device) if following else None

        # 2. Run this stage's block of the sample's steps (the clock of its first step starts now, after the
        #    hand-off); a job file's samples may each have their own number of steps. The blocks break at the
        #    model's expert switch when they can.
        steps = steps_of(model, sample)
        block = steps_for_rank(steps, stages, stage, switch_of(model, steps))
        on_step = recorder.on_step_for(sample, block)
        if first:
            on_step = ahead.next_during(on_step, position)
        state["latents"] = model.denoise(state, block, on_step)

        # 3. Keep the result on the last stage, else post the send and go on with the next sample.
        if last:
            finals[sample.index] = state["latents"].to("cpu")
            if layout.is_group_leader:
                recorder.sample_done(sample)
        else:
            sends.append(post_send(state, model.sample_spec(sample), layout.peer(stage + 1)))
            while len(sends) > MAX_SENDS_IN_FLIGHT:
                with recorder.waiting():
                    sends.popleft().wait()
    with recorder.waiting():
        while sends:
            sends.popleft().wait()
    return finals


class EncodeAhead:
    """The first stage encodes sample i+1 during sample i's block (right after its first step), not between
    blocks: the first stage sets the pipeline's pace, and the CPU side of encoding (image preprocessing, kernel
    launches) then overlaps the block's device work instead of adding to every block."""

    def __init__(self, model: DiffusionModel, samples: list[Sample], recorder: StepRecorder):
        self.model, self.samples, self.recorder = model, samples, recorder
        self.ready: dict[int, dict] = {}

    def take(self, position: int) -> dict:
        return self.ready.pop(position) if position in self.ready else self._encode(position)

    def next_during(self, on_step, position: int):
        def on_step_then_encode(step: int) -> None:
            on_step(step)
            if position + 1 < len(self.samples) and position + 1 not in self.ready:
                self.ready[position + 1] = self._encode(position + 1)

        return on_step_then_encode

    def _encode(self, position: int) -> dict:
        with self.recorder.encoding():
            return self.model.encode(self.samples[position])


def owner_group(position: int, groups: int) -> int:
    """The group (stage) that holds sample number `position`'s final latents after phase 1: the last."""
    return groups - 1


def needs_encoder(layout: Layout) -> bool:
    return layout.group_index == 0


def steps_of_group(total_steps: int, groups: int, group_index: int, switch: int | None = None) -> range:
    return steps_for_rank(total_steps, groups, group_index, switch)


def ideal_makespan(step_time_s: float, num_samples: int, total_steps: int, groups: int,
                   switch: int | None = None) -> float:
    """First sample through every block, then one sample per slowest block."""
    slowest_block = max(block_sizes(total_steps, groups, switch))
    return (total_steps + (num_samples - 1) * slowest_block) * step_time_s
