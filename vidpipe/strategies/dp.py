"""Data parallel: every rank holds the whole model and runs whole samples, round robin."""

from __future__ import annotations

import math

import torch

from vidpipe.metrics import StepRecorder
from vidpipe.models.base import DiffusionModel, Sample
from vidpipe.runtime.dist import DistContext

#: The denoiser is loaded straight onto the rank's device (each rank holds a whole copy).
STAGE_DENOISER_ON_CPU = False


def prepare(ctx: DistContext, model: DiffusionModel) -> None:
    """Nothing to do: every rank holds the whole model as loaded."""


def run(ctx: DistContext, model: DiffusionModel, samples: list[Sample], recorder: StepRecorder) -> dict:
    """Phase 1 on this rank: samples at positions rank, rank + W, ... Returns {index: final latents on CPU}."""
    all_steps = range(model.num_steps)
    finals: dict[int, torch.Tensor] = {}
    for sample in samples[ctx.rank :: ctx.world_size]:
        state = model.encode(sample)
        finals[sample.index] = model.denoise(state, all_steps, recorder.on_step_for(sample, all_steps)).to("cpu")
        recorder.sample_done(sample)
    return finals


def owner_of(position: int, world_size: int) -> int:
    return position % world_size


def needs_encoder(rank: int, world_size: int) -> bool:
    return True


def ideal_makespan(step_time_s: float, num_samples: int, total_steps: int, world_size: int) -> float:
    """The busiest rank runs ceil(N / W) whole samples."""
    return math.ceil(num_samples / world_size) * total_steps * step_time_s
