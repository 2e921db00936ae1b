"""Data parallel: each group runs whole samples, round robin (group g: samples g, g + G, ...).

A group of one rank is classic data parallelism; a larger group splits each of its samples (cfg, sp) or shards
the UNet (fsdp), every rank of the group making the same calls on the same sample.
"""

from __future__ import annotations

import math

import torch

from vidpipe.metrics import StepRecorder
from vidpipe.models.base import DiffusionModel, Sample
from vidpipe.parallel.layout import Layout
from vidpipe.strategies.schedule import steps_of


def run(layout: Layout, model: DiffusionModel, samples: list[Sample], recorder: StepRecorder) -> dict:
    """Phase 1 on this rank: its group's samples, all steps. Returns {index: final latents on CPU}."""
    finals: dict[int, torch.Tensor] = {}
    for sample in samples[layout.group_index :: layout.plan.groups]:
        all_steps = range(steps_of(model, sample))
        with recorder.encoding():
            state = model.encode(sample)
        finals[sample.index] = model.denoise(state, all_steps, recorder.on_step_for(sample, all_steps)).to("cpu")
        if layout.is_group_leader:
            recorder.sample_done(sample)
    return finals


def owner_group(position: int, groups: int) -> int:
    """The group that holds sample number `position`'s final latents after phase 1 (every rank of it does)."""
    return position % groups


def needs_encoder(layout: Layout) -> bool:
    return True


def steps_of_group(total_steps: int, groups: int, group_index: int, switch: int | None = None) -> range:
    return range(total_steps)


def ideal_makespan(step_time_s: float, num_samples: int, total_steps: int, groups: int,
                   switch: int | None = None) -> float:
    """The busiest group runs ceil(N / G) whole samples."""
    return math.ceil(num_samples / groups) * total_steps * step_time_s
