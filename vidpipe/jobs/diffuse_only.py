"""Phase 1 alone with a real SVD model, for measuring (`bench`): a vidpipe strategy, or the stock diffusers
pipeline as the baseline. Both time every step the same way, so their figures compare."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpipe.jobs.diffusion import (
    build_layout,
    first_call_overhead,
    gather_to_first,
    load_model_for,
    run_diffusion,
    start_compiling,
    warmup_samples,
)
from vidpipe.metrics import StepRecorder, denoiser_param_bytes
from vidpipe.models.base import Sample
from vidpipe.models.source import ModelSource
from vidpipe.parallel.plan import ParallelPlan
from vidpipe.runtime.devices import DTYPES
from vidpipe.runtime.dist import DistContext
from vidpipe.runtime.events import EventSink, PhaseStarted


@dataclass(frozen=True)
class DiffuseJob:
    """Diffuse `samples` under `plan`; rank 0 returns every rank's record and all final latents."""

    source: ModelSource
    params: object  # SVDParams
    plan: ParallelPlan
    dtype: str
    samples: tuple[Sample, ...]
    warmup: int
    compile_unet: bool = False

    def run(self, ctx: DistContext, events: EventSink):
        events.emit(PhaseStarted(ctx.rank, phase="load"))
        layout = build_layout(ctx, self.plan)
        model = load_model_for(layout, self.source, self.dtype, self.params)
        finals, record = run_diffusion(layout, model, list(self.samples), self.warmup, events, self.compile_unet)
        gathered = gather_to_first(ctx, (record, finals))
        if not ctx.is_first:
            return None
        return {"records": [r for r, _ in gathered], "finals": {i: x for _, f in gathered for i, x in f.items()}}


@dataclass(frozen=True)
class DiffusersBaselineJob:
    """The stock `StableVideoDiffusionPipeline.__call__` on one device, latents out (no decode): equal work to
    vidpipe's phase 1. Steps are timed through the pipeline's own `callback_on_step_end`."""

    source: ModelSource
    params: object  # SVDParams
    dtype: str
    samples: tuple[Sample, ...]
    warmup: int
    compile_unet: bool = False  # the same regional compile as vidpipe's, on the stock pipeline's UNet

    def run(self, ctx: DistContext, events: EventSink):
        from vidpipe.models.registry import family_module

        events.emit(PhaseStarted(ctx.rank, phase="load"))
        # The adapter's loader builds exactly the stock pipeline object; only its __call__ is used below.
        model = family_module(self.source.family, "adapter").load_stock(self.source, ctx.device,
                                                                        DTYPES[self.dtype], self.params)
        recorder = StepRecorder(ctx.device, events, ctx.rank)
        recorder.record.unet_param_bytes = denoiser_param_bytes(model)
        recorder.mark_memory("load")  # before any step runs
        compiling = self.compile_unet and start_compiling(model, ctx, events, recorder.record) > 0
        samples = list(self.samples)
        warm = StepRecorder(ctx.device, events, ctx.rank)
        if self.warmup > 0:
            if compiling:
                warm.phase_after_first_step = "warmup"
            else:
                events.emit(PhaseStarted(ctx.rank, phase="warmup"))
            for sample in warmup_samples(samples, self.warmup):
                self._generate(model, sample, warm)
            recorder.mark_memory("warmup")
        if compiling and self.warmup == 0:
            recorder.phase_after_first_step = "diffuse"
        else:
            events.emit(PhaseStarted(ctx.rank, phase="diffuse"))
        recorder.start_clock()
        finals = {sample.index: self._generate(model, sample, recorder) for sample in samples}
        recorder.mark_memory("diffuse")
        if compiling:
            recorder.record.compile_s = first_call_overhead(warm.record, recorder.record)
        return {"records": [recorder.record], "finals": finals}

    def _generate(self, model, sample: Sample, recorder: StepRecorder) -> torch.Tensor:
        p = model.params
        on_step = recorder.on_step_for(sample, range(p.steps))

        def step_end(_pipe, step, _timestep, tensors):
            on_step(step)
            return tensors

        latents = model.stock_latents(sample, step_end)
        recorder.sample_done(sample)
        return latents.to("cpu")
