"""Phase 1 on one rank, the same for every command: lay out the plan, apply its model-level axes, warm up, then
diffuse the samples under the clock."""

from __future__ import annotations

import time
from itertools import cycle, islice

import torch.distributed as dist

from vidpipe.metrics import RankRecord, StepRecorder, denoiser_param_bytes, startup_seconds
from vidpipe.models.base import DiffusionModel, Sample
from vidpipe.parallel.compile import compile_model
from vidpipe.parallel.layout import Layout, build_layout
from vidpipe.parallel.parallelize import parallelize
from vidpipe.runtime.dist import DistContext
from vidpipe.runtime.events import EventSink, PhaseStarted
from vidpipe.strategies.registry import scheduler_for

__all__ = ["build_layout", "load_model_for", "run_diffusion", "gather_to_first", "start_compiling", "warmup_samples"]


def load_model_for(layout: Layout, source, dtype: str, params, samples_set_steps: bool = False):
    """The model as the plan needs it on this rank, by its family (`models/<family>/family.py load_for`): encoders
    only where samples are encoded, a pp stage's block of steps (the experts it uses), fsdp's staging on the CPU.
    `samples_set_steps`: the samples carry their own step counts (a job file), so a stage's block is not known
    here and it loads every expert."""
    from vidpipe.models.registry import family_module

    family = family_module(source.family)
    scheduler = scheduler_for(layout.plan)
    blocks = None if samples_set_steps else [scheduler.steps_of_group(
        params.steps, layout.plan.groups, layout.group_index, family.expert_switch(source, params.steps))]
    return family.load_for(layout, source, dtype, params, scheduler.needs_encoder(layout), blocks)


def warmup_samples(samples: list[Sample], count: int) -> list[Sample]:
    """Copies of the first samples with negative indices, so progress and records never mix them up."""
    return [
        Sample(-1 - k, s.seed, s.image, s.image_name) for k, s in enumerate(islice(cycle(samples), count))
    ]


def run_diffusion(
    layout: Layout,
    model: DiffusionModel,
    samples: list[Sample],
    warmup: int,
    events: EventSink,
    compile_unet: bool = False,
    every_step: bool = False,
) -> tuple[dict, RankRecord]:
    """Returns this rank's final latents {index: CPU tensor} and its measured record. `every_step`: report each
    step to the parent (--verbose prints them), not at most ten a second."""
    ctx = layout.ctx
    ctx.stage_times["loaded"] = time.time()
    parallelize(model, layout)
    recorder = StepRecorder(ctx.device, events, ctx.rank, ctx.stage_times, every_step)
    recorder.record.unet_param_bytes = denoiser_param_bytes(model)
    recorder.mark_memory("load")  # the weights and the plan's buffers, before any step runs
    # With no block to compile (each holds sp's collectives) the run is eager: no compile phase, no compile time.
    compiling = compile_unet and start_compiling(model, ctx, events, recorder.record) > 0
    scheduler = scheduler_for(layout.plan)
    if hasattr(model, "expect_samples"):  # Wan frees UMT5 once these samples' prompts are embedded
        model.expect_samples([*warmup_samples(samples, warmup), *samples])
    warm = StepRecorder(ctx.device, events, ctx.rank, ctx.stage_times, every_step)
    if warmup > 0:
        if compiling:
            warm.phase_after_first_step = "warmup"
        else:
            events.emit(PhaseStarted(ctx.rank, phase="warmup"))
        scheduler.run(layout, model, warmup_samples(samples, warmup), warm)
        recorder.mark_memory("warmup")
    # NOTE: the clock starts after every rank is warm and past this barrier (design §7).
    ctx.barrier()
    if compiling and warmup == 0:
        recorder.phase_after_first_step = "diffuse"  # still compiling: the first measured step compiles
    else:
        events.emit(PhaseStarted(ctx.rank, phase="diffuse"))
    comm_before = layout.comm.snapshot()
    recorder.start_clock()
    finals = scheduler.run(layout, model, samples, recorder)
    recorder.mark_memory("diffuse")
    record = recorder.record
    record.split_comm_bytes, record.split_comm_calls, record.split_comm_s = (
        now - before for now, before in zip(layout.comm.snapshot(), comm_before, strict=True))
    record.startup_s = startup_seconds(ctx.stage_times)
    if compiling:
        record.compile_s = first_call_overhead(warm.record, record)
    return finals, record


def start_compiling(model: DiffusionModel, ctx: DistContext, events: EventSink, record: RankRecord) -> int:
    """Compile the denoiser's repeated blocks and enter the "compile" phase, which lasts until this rank's first
    step is done; returns how many blocks were compiled (in `record` too). NOTE: torch.compile compiles inside the
    first call of each block shape: minutes on a large UNet with no step event, so the watchdog must treat it as
    loading (--load-timeout), not as a stall."""
    record.compiled_blocks = compile_model(model, channels_last=ctx.device.type == "cuda")
    if record.compiled_blocks:
        events.emit(PhaseStarted(ctx.rank, phase="compile"))
    return record.compiled_blocks


def first_call_overhead(warm: RankRecord, measured: RankRecord) -> float | None:
    """Compile time, seen from outside: this rank's first step (warm-up, or the first measured one) minus its
    median measured step. Every graph is compiled in the first step (all block shapes occur in it)."""
    durations = sorted(end - start for _s, _k, start, end in measured.steps)
    first = (warm.steps or measured.steps)[:1]
    if not durations or not first:
        return None
    return max(0.0, (first[0][3] - first[0][2]) - durations[len(durations) // 2])


def gather_to_first(ctx: DistContext, obj):
    """Every rank's `obj`, as a list in rank order, on rank 0; None elsewhere."""
    gathered = [None] * ctx.world_size if ctx.is_first else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered
