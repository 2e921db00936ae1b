"""`simulate`: phase 1 with the stand-in UNet, every sample checked against a 1-rank computation."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from vidpipe.config import SimulateConfig
from vidpipe.errors import VidpipeError
from vidpipe.jobs.diffusion import build_layout, gather_to_first, run_diffusion
from vidpipe.jobs.run import place, run_with_display
from vidpipe.metrics import timeline
from vidpipe.models.base import Sample
from vidpipe.models.svd.architecture import temporal_layers
from vidpipe.models.svd.cost import split_bytes_per_step, svd_bytes_per_step
from vidpipe.models.svd.simulator import DummyModel, DummyParams, svd_unet_config
from vidpipe.models.svd.simulator_temporal import STAND_IN_NORM_GROUPS, stand_in_layout
from vidpipe.parallel.gpu_model import gpu_model_figures, gpu_model_line
from vidpipe.parallel.plan import ParallelPlan, frame_split
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

#: The SVD stand-in's name; a Wan stand-in takes its flavor's (`SimulateConfig.MODELS`).
DUMMY = "dummy"
WAN_SIMULATOR = "vidpipe.models.wan.simulator"
#: Ranks when --gpus is not given (and not under torchrun): enough to show a pipeline.
DEFAULT_GPUS = 2


def dummy_params(config: SimulateConfig, plan: ParallelPlan, step_ms: float | None = None) -> DummyParams:
    return DummyParams(
        steps=config.steps,
        latent_shape=tuple(config.latent_shape),
        step_ms=config.step_ms if step_ms is None else step_ms,
        temporal_layers=plan.sp > 1,  # SVD-XT's frame-mixing layers, for sp's real collectives
    )


def build_model(config: SimulateConfig, plan: ParallelPlan, device, dtype: str, step_ms: float | None = None):
    """The stand-in `config.model` names: SVD's (`dummy`) or a Wan flavor's (`models/wan/simulator.py`)."""
    if config.model == DUMMY:
        return DummyModel(dummy_params(config, plan, step_ms), device, DTYPES[dtype])
    wan = wan_simulator()
    params = wan.WanStandInParams(config.model, config.steps, tuple(config.latent_shape),
                                  config.step_ms if step_ms is None else step_ms)
    return wan.WanStandIn(params, device, DTYPES[dtype])


def wan_simulator():
    """`models/wan/simulator.py`, imported for Wan runs only (diffusers' Wan modules take seconds to import)."""
    return importlib.import_module(WAN_SIMULATOR)


def default_latent_shape(model: str) -> tuple[int, ...]:
    """`--latent-shape` when not given: SVD-XT's at 14 x 320 x 576 for `dummy`, a Wan flavor's default video."""
    if model in SimulateConfig.MODELS and model != DUMMY:
        return wan_simulator().default_latent_shape(model)
    return SimulateConfig.latent_shape  # an unknown model is refused by the config, in one line


def samples_of(config: SimulateConfig) -> list[Sample]:
    return [Sample(index=i, seed=config.seed + i) for i in range(config.samples)]


@dataclass(frozen=True)
class SimulateJob:
    config: SimulateConfig
    dtype: str  # resolved: fp32 | fp16 | bf16
    plan: ParallelPlan

    @property
    def preload(self) -> tuple[str, ...]:
        """What the worker server imports for the ranks: the Wan stand-in's modules only for a Wan run."""
        return SIMULATE_PRELOAD + (() if self.config.model == DUMMY else (WAN_SIMULATOR,))

    def run(self, ctx: DistContext, events: EventSink):
        events.emit(PhaseStarted(ctx.rank, phase="load"))
        layout = build_layout(ctx, self.plan)
        model = build_model(self.config, self.plan, ctx.device, self.dtype)
        finals, record = run_diffusion(layout, model, samples_of(self.config), self.config.warmup_samples, events,
                                       every_step=self.config.run.verbose)
        gathered = gather_to_first(ctx, (record, finals))
        if not ctx.is_first:
            return None
        records = [record for record, _ in gathered]
        all_finals = {index: latents for _, rank_finals in gathered for index, latents in rank_finals.items()}
        return {"records": records, "finals": all_finals}


def verify(config: SimulateConfig, plan: ParallelPlan, dtype: str, device_type: str,
           finals: dict[int, torch.Tensor]) -> dict:
    """Recompute every sample on one rank (CPU, no waiting) and compare with what the ranks produced.

    Bit-identical is required on CPU in fp32 for plans that move whole steps (pp, dp, fsdp); plans that split a
    step (cfg, sp) sum some things in another order, so fp32 within 1e-4 (relative when above 1); elsewhere
    (GPU kernels, half precision) a small tolerance.
    """
    reference_model = build_model(config, plan, torch.device("cpu"), dtype, step_ms=0.0)
    expected = {
        sample.index: reference_model.denoise(reference_model.encode(sample), range(config.steps))
        for sample in samples_of(config)
    }
    if device_type != "cpu" or dtype != "fp32":
        return compare_finals(finals, expected, "half")
    return compare_finals(finals, expected, "fp32" if plan.splits_sample else "bit-identical")


def analytic_bytes(config: SimulateConfig, plan: ParallelPlan, dtype: str) -> list[int]:
    """What cfg/sp should send per step from each rank, from the family's `cost.py` and the stand-ins' layout."""
    if config.model != DUMMY:
        per_group = wan_simulator().stand_in_bytes_per_step(config.model, plan, config.latent_shape,
                                                            DTYPES[dtype].itemsize)
        return per_group * plan.groups
    batch, channels, frames, height, width = config.latent_shape
    layers = stand_in_layout(temporal_layers(svd_unet_config())) if plan.sp > 1 else []
    per_group = split_bytes_per_step(plan, layers, STAND_IN_NORM_GROUPS, channels, 2 * batch, frames, height, width,
                                     DTYPES[dtype].itemsize)
    return per_group * plan.groups


def run_simulation(config: SimulateConfig) -> dict | None:
    """Launch the ranks, measure, verify: the report (None on torchrun ranks other than 0). Prints nothing."""
    wan = config.model != DUMMY
    # NOTE: sp splits SVD's frames but Wan's tokens: Wan's check is on the tokens of the latent.
    placement = place(config.run, config.steps, default_gpus=DEFAULT_GPUS,
                      frames=None if wan else config.latent_shape[2])
    if wan:
        wan_simulator().check_latent_shape(config.model, config.latent_shape, placement.plan)
    job = SimulateJob(config, placement.dtype, placement.plan)
    result = run_with_display(job, placement, config.samples, config.run.verbose)
    if result is None:
        return None
    spec = placement.spec
    report = run_report(
        "simulate", config.model, config.run.strategy, placement.plan, spec, placement.dtype, config.steps,
        [config.seed + i for i in range(config.samples)], config.warmup_samples, result["records"],
        expert_switch=wan_simulator().expert_switch(config.model, config.steps) if wan else None,
        latent_shape=list(config.latent_shape), step_ms=config.step_ms,
    )
    tl = timeline(result["records"])
    report["samples"] = sample_rows(tl.latency_s, tl.completion_s, {i: config.seed + i for i in tl.latency_s})
    report.update(verify(config, placement.plan, placement.dtype, spec.device_type, result["finals"]))
    report["split_comm_bytes_per_step_analytic"] = analytic_bytes(config, placement.plan, placement.dtype)
    if config.step_ms > 0 and placement.plan.splits_sample:
        report["gpu_model"] = gpu_model(config, placement.plan, report)
    return report


def gpu_model(config: SimulateConfig, plan: ParallelPlan, report: dict) -> dict:
    """What this plan would give on GPUs (`parallel/gpu_model.py`): the emulated kernel shrinks with the rank's
    share of the work, and every collective costs NCCL-like latency plus the real model's bytes at this latent
    shape over a GPU link. SVD: the collectives the run really made (counted), SVD-XT's bytes in fp16; Wan: the
    real transformer's counts and bytes in bf16 (`models/wan/simulator.py wan_gpu_model`). This machine's gloo,
    with more processes than cores, takes milliseconds per collective: the measured figures show that, the model
    shows GPUs."""
    if config.model != DUMMY:
        return wan_simulator().wan_gpu_model(config.model, plan, config.latent_shape, config.step_ms)
    batch, _channels, frames, height, width = config.latent_shape
    share = (1 / plan.cfg) * max(frame_split(frames, plan.sp)) / frames
    calls = max(report["split_comm_calls_per_step_per_rank"])
    svd_bytes = max(svd_bytes_per_step(plan, svd_unet_config(), 2 * batch, frames, height, width, 2))
    return gpu_model_figures(config.step_ms / 1000, share, calls, svd_bytes,
                             f"SVD-XT's bytes at latent {frames}x{height}x{width}, fp16", ", as counted")


def simulate(config: SimulateConfig) -> dict | None:
    """Run `vidpipe simulate`: returns the report (None on torchrun ranks other than 0)."""
    report = run_simulation(config)
    if report is None:
        return None
    for table in (assignment_table(report), samples_table(report), summary_table(report)):
        stderr_console.print(table)
    if "gpu_model" in report:
        model = report["gpu_model"]
        stderr_console.print(gpu_model_line(model), highlight=False, markup=False)
        if "published" in model:
            ours = " / ".join(f"{speedup:.2f}x" for speedup in model["published_plans"].values())
            stderr_console.print(
                f"For reference, Wan's own published figures (their measurements, not ours): {model['published']}. "
                f"This model of their plans (Ulysses over all G GPUs = our spG, no cfg split; their FSDP's "
                f"parameter gathers not modelled) at this step time: {ours} on 2 / 4 / 8 GPUs",
                highlight=False, markup=False)
    write_json(report, config.json_path)
    if not report["verified"]:
        raise VidpipeError(
            f"verification failed: samples {report['mismatched_samples']} differ from the 1-rank computation "
            f"(max abs diff {report['verify_max_abs_diff']:.3g}); this is a bug in the strategy, please report it"
        )
    return report
