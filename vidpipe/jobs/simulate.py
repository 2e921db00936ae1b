"""`simulate`: phase 1 with the stand-in UNet, every sample checked against a 1-rank computation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vidpipe.config import SimulateConfig
from vidpipe.errors import VidpipeError
from vidpipe.jobs.diffusion import build_layout, gather_to_first, run_diffusion
from vidpipe.jobs.run import place, run_with_display
from vidpipe.metrics import timeline
from vidpipe.models.base import Sample
from vidpipe.models.dummy import DummyModel, DummyParams
from vidpipe.parallel.plan import ParallelPlan
from vidpipe.report import (
    assignment_table,
    run_report,
    sample_rows,
    samples_table,
    stderr_console,
    summary_table,
    write_json,
)
from vidpipe.runtime.devices import DTYPES
from vidpipe.runtime.dist import DistContext
from vidpipe.runtime.events import EventSink, PhaseStarted
from vidpipe.runtime.forkserver import SIMULATE_PRELOAD
from vidpipe.verify import compare_finals

#: Ranks when --gpus is not given (and not under torchrun): enough to show a pipeline.
DEFAULT_GPUS = 2


def dummy_params(config: SimulateConfig, step_ms: float | None = None) -> DummyParams:
    return DummyParams(
        steps=config.steps,
        latent_shape=tuple(config.latent_shape),
        step_ms=config.step_ms if step_ms is None else step_ms,
    )


def samples_of(config: SimulateConfig) -> list[Sample]:
    return [Sample(index=i, seed=config.seed + i) for i in range(config.samples)]


@dataclass(frozen=True)
class SimulateJob:
    config: SimulateConfig
    dtype: str  # resolved: fp32 | fp16 | bf16
    plan: ParallelPlan
    preload: ClassVar[tuple[str, ...]] = SIMULATE_PRELOAD

    def run(self, ctx: DistContext, events: EventSink):
        events.emit(PhaseStarted(ctx.rank, phase="load"))
        layout = build_layout(ctx, self.plan)
        model = DummyModel(dummy_params(self.config), ctx.device, DTYPES[self.dtype])
        finals, record = run_diffusion(layout, model, samples_of(self.config), self.config.warmup_samples, events)
        gathered = gather_to_first(ctx, (record, finals))
        if not ctx.is_first:
            return None
        records = [record for record, _ in gathered]
        all_finals = {index: latents for _, rank_finals in gathered for index, latents in rank_finals.items()}
        return {"records": records, "finals": all_finals}


def verify(config: SimulateConfig, dtype: str, device_type: str, finals: dict[int, torch.Tensor]) -> dict:
    """Recompute every sample on one rank (CPU, no waiting) and compare with what the ranks produced.

    Bit-identical is required on CPU in fp32; elsewhere (GPU kernels, half precision) a small tolerance.
    """
    reference_model = DummyModel(dummy_params(config, step_ms=0.0), torch.device("cpu"), DTYPES[dtype])
    expected = {
        sample.index: reference_model.denoise(reference_model.encode(sample), range(config.steps))
        for sample in samples_of(config)
    }
    exact = device_type == "cpu" and dtype == "fp32"
    return compare_finals(finals, expected, "bit-identical" if exact else "half")


def run_simulation(config: SimulateConfig) -> dict | None:
    """Launch the ranks, measure, verify: the report (None on torchrun ranks other than 0). Prints nothing."""
    placement = place(config.run, config.steps, default_gpus=DEFAULT_GPUS, frames=config.latent_shape[2])
    job = SimulateJob(config, placement.dtype, placement.plan)
    result = run_with_display(job, placement, config.samples, config.run.verbose)
    if result is None:
        return None
    spec = placement.spec
    report = run_report(
        "simulate", "dummy", config.run.strategy, placement.plan, spec, placement.dtype, config.steps,
        [config.seed + i for i in range(config.samples)], config.warmup_samples, result["records"],
        latent_shape=list(config.latent_shape), step_ms=config.step_ms,
    )
    tl = timeline(result["records"])
    report["samples"] = sample_rows(tl.latency_s, tl.completion_s, {i: config.seed + i for i in tl.latency_s})
    report.update(verify(config, placement.dtype, spec.device_type, result["finals"]))
    return report


def simulate(config: SimulateConfig) -> dict | None:
    """Run `vidpipe simulate`: returns the report (None on torchrun ranks other than 0)."""
    report = run_simulation(config)
    if report is None:
        return None
    for table in (assignment_table(report), samples_table(report), summary_table(report)):
        stderr_console.print(table)
    write_json(report, config.json_path)
    if not report["verified"]:
        raise VidpipeError(
            f"verification failed: samples {report['mismatched_samples']} differ from the 1-rank computation "
            f"(max abs diff {report['verify_max_abs_diff']:.3g}); this is a bug in the strategy, please report it"
        )
    return report
