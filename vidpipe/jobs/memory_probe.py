"""`memory-probe`: load the model under a strategy, then encode one sample, run one denoising step and decode it,
measuring each rank's peak memory per phase. Each configuration runs in fresh processes, so an out-of-memory
in one takes nothing else down; the probe reports it and goes on. `--search` bisects for the largest frame
count or resolution that fits.

"Fits": the largest memory figure known for the busiest rank is within the budget (`metrics.memory_needed_gb`):
on CUDA the allocator's peak reserved pool and, where nvidia-smi tells, the driver's charge for the process
(context and NCCL buffers included), never the allocated bytes alone; on CPU the peak RSS. The budget on CUDA is
the smallest visible GPU's memory, read with nvidia-smi: the launcher creates no CUDA context of its own."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from vidpipe.config import MemoryProbeConfig
from vidpipe.errors import Interrupted, RankFailed, UsageError
from vidpipe.jobs.diffusion import build_layout, gather_to_first, load_model_for
from vidpipe.jobs.run import place, run_with_display
from vidpipe.metrics import GIB, RankRecord, denoiser_param_bytes, mark_memory, memory_needed_gb, param_bytes, peak_gb
from vidpipe.models.base import Sample
from vidpipe.models.source import ModelSource
from vidpipe.parallel.parallelize import parallelize
from vidpipe.parallel.plan import ParallelPlan
from vidpipe.report import print_wide, stderr_console, write_json
from vidpipe.runtime.devices import cuda_device_count, resolve_device_type
from vidpipe.runtime.dist import DistContext
from vidpipe.runtime.events import EventSink, PhaseStarted
from vidpipe.runtime.gpus import visible_gpus
from vidpipe.runtime.launch import under_torchrun
from vidpipe.strategies.registry import scheduler_for

PHASES = ("load", "encode", "denoise", "decode")
#: The schedule the probe's one step is taken from (any step of any schedule costs the same memory).
PROBE_STEPS = 25


@dataclass(frozen=True)
class ProbeJob:
    source: ModelSource
    plan: ParallelPlan
    dtype: str
    frames: int
    height: int
    width: int
    decode_chunk_size: int

    def run(self, ctx: DistContext, events: EventSink):
        from vidpipe import media
        from vidpipe.models.registry import family_module

        # NOTE: a fresh process: CUDA's peak counter starts at zero, so the "load" mark is the load's own peak.
        record = RankRecord(rank=ctx.rank)
        events.emit(PhaseStarted(ctx.rank, phase="load"))
        params = family_module(self.source.family).bench_params(PROBE_STEPS, (self.frames, self.height, self.width))
        if hasattr(params, "decode_chunk_size") and self.source.family == "svd":
            params = replace(params, decode_chunk_size=self.decode_chunk_size)
        layout = build_layout(ctx, self.plan)
        encodes = scheduler_for(self.plan).needs_encoder(layout)
        model = load_model_for(layout, self.source, self.dtype, params)
        parallelize(model, layout)
        record.unet_param_bytes = denoiser_param_bytes(model)
        pipe = model.pipeline
        resident = sum(param_bytes(getattr(pipe, name, None)) for name in
                       ("unet", "transformer", "transformer_2", "vae", "image_encoder", "text_encoder"))
        mark_memory(ctx.device, record, "load")

        # Encode where the plan encodes; elsewhere the state arrives from another rank: same tensors.
        events.emit(PhaseStarted(ctx.rank, phase="encode"))
        sample = Sample(0, 0, media.test_card(self.width, self.height), "probe")
        state = model.encode(sample) if encodes else model.placeholder_state(sample)
        mark_memory(ctx.device, record, "encode")

        # One step is one UNet call at full size: the peak of any number of steps. Every rank calls it, so
        # fsdp's all-gathers and the cfg/sp collectives pair up.
        events.emit(PhaseStarted(ctx.rank, phase="diffuse"))
        latents = model.denoise(state, range(0, 1))
        mark_memory(ctx.device, record, "denoise")

        events.emit(PhaseStarted(ctx.rank, phase="decode"))
        model.release_denoiser()
        del state
        model.decode(latents)
        mark_memory(ctx.device, record, "decode")
        gathered = gather_to_first(ctx, (record, resident))
        return gathered if ctx.is_first else None


@dataclass(frozen=True)
class Probe:
    """One configuration to measure."""

    strategy: str
    gpus: int
    frames: int
    height: int
    width: int


class Prober:
    def __init__(self, config: MemoryProbeConfig):
        from vidpipe.models.registry import family_module, resolve_model

        self.config = config
        self.source = resolve_model(config.model, config.offline, Path(config.cache_dir) if config.cache_dir else None)
        self.family = family_module(self.source.family)
        self.default = self.family.default_size(self.source)
        self.multiple = self.family.pixel_multiple(self.source)
        self.device_type = resolve_device_type(config.device, 1)
        if config.budget_gb is not None:
            self.budget_gb, self.budget_source = config.budget_gb, "--budget-gb"
        elif self.device_type == "cuda":
            self.budget_gb, self.budget_source = gpu_memory_budget()
        else:
            self.budget_gb, self.budget_source = None, None

    def probes(self) -> list[Probe]:
        result = []
        for size in self.config.sizes:
            height, width = size or self.default[1:]
            self.family.resolve_size(self.source, None, height, width)  # checks the sizes
            for frames in self.config.frames:
                for strategy in self.config.strategies:
                    for gpus in self.config.gpus:
                        result.append(Probe(strategy, gpus, frames or self.default[0], height, width))
        return result

    def measure(self, probe: Probe) -> dict:
        """Run one configuration in fresh processes; an out-of-memory or a killed rank is a result, not an error."""
        row = {"strategy": probe.strategy, "world_size": probe.gpus, "frames": probe.frames,
               "height": probe.height, "width": probe.width}
        if self.device_type == "cuda" and probe.gpus > cuda_device_count():
            return {**row, "status": "skipped", "fits": None,
                    "reason": f"{probe.gpus} ranks need {probe.gpus} GPUs; this machine has {cuda_device_count()}"}
        try:
            placement = place(self.config.run_options(probe.strategy, probe.gpus), PROBE_STEPS, probe.gpus,
                              frames=probe.frames)
        except UsageError as error:  # this plan does not fit this rank count or frame count: a row, not a failure
            return {**row, "status": "skipped", "fits": None, "reason": str(error)}
        row["plan"] = placement.plan.name
        job = ProbeJob(self.source, placement.plan, placement.dtype, probe.frames, probe.height, probe.width,
                       self.config.decode_chunk_size)
        row.update(device_type=placement.spec.device_type, backend=placement.spec.backend, dtype=placement.dtype)
        try:
            gathered = run_with_display(job, placement, 1, verbose=False)
        except Interrupted:
            raise
        except RankFailed as error:
            message = str(error)
            if "OutOfMemoryError" in message or "out of memory" in message or "SIGKILL" in message:
                return {**row, "status": "out of memory", "fits": False, "reason": message}
            raise
        records = [record for record, _ in gathered]
        return {**row, "status": "ok", "reason": None, **memory_figures(records, self.budget_gb),
                "resident_param_bytes_per_rank": [resident for _, resident in gathered]}

    def search(self, strategy: str, gpus: int, frames: int, height: int, width: int) -> tuple[dict | None, list]:
        """Bisect the chosen axis for the largest value that fits: frames, or height (in steps of the model's
        size multiple, width following the aspect ratio). Returns (largest fitting row, every row probed)."""
        axis = self.config.search
        aspect = width / height

        def probe_at(n: int) -> Probe:
            if axis == "frames":
                return Probe(strategy, gpus, n, height, width)
            w = max(1, round(n * aspect)) * self.multiple
            return Probe(strategy, gpus, frames, n * self.multiple, w)

        tried: list[dict] = []

        def fits(n: int) -> bool:
            row = self.measure(probe_at(n))
            tried.append(row)
            stderr_console.print(_line(row))
            if row["status"] == "skipped":
                raise _Skip(row)
            return bool(row["fits"])

        limit = self.config.search_limit
        n = min(frames if axis == "frames" else max(1, height // self.multiple), limit)
        lo, hi = 0, None  # lo fits (0: nothing known to), hi does not (None: nothing known not to)
        try:
            while True:  # grow by doubling until something does not fit, or the limit fits
                if not fits(n):
                    hi = n
                    break
                lo = n
                if n >= limit:
                    break
                n = min(2 * n, limit)
            while hi is not None and hi - lo > 1:  # then bisect between the last fit and the first miss
                mid = (lo + hi) // 2
                if fits(mid):
                    lo = mid
                else:
                    hi = mid
        except _Skip as skipped:
            return None, [skipped.row]
        value = lo if axis == "frames" else lo * self.multiple
        best = next((r for r in tried if r["fits"] and r["status"] == "ok" and r[_axis_key(axis)] == value), None)
        return best, tried


def gpu_memory_budget() -> tuple[float | None, str | None]:
    """(GB, where it comes from): the smallest visible GPU's total memory, read with nvidia-smi so that the
    launcher creates no CUDA context (0.3-0.5 GB on GPU 0 that no figure would count); (None, None) without it."""
    gpus = [gpu for gpu in visible_gpus() if not math.isnan(gpu.memory_total_mib)]  # NaN: not reported
    if not gpus:
        return None, None
    smallest = min(gpus, key=lambda gpu: gpu.memory_total_mib)
    return smallest.memory_total_mib / 1024, f"{smallest.name} memory"


def memory_figures(records: list[RankRecord], budget_gb: float | None) -> dict:
    """A probe row's memory figures from every rank's record, and whether it fits `budget_gb` (None: no budget,
    fits = ran without running out of memory). See the module docstring for the rule."""
    peaks = {phase: [round(r.peak_memory_bytes[phase] / GIB, 4) for r in records] for phase in PHASES}
    reserved = [peak_gb(r.peak_reserved_bytes) for r in records]
    driver = [peak_gb(r.driver_memory_bytes) for r in records]
    allocated = [max(values[rank] for values in peaks.values()) for rank in range(len(records))]
    needed = max(memory_needed_gb(*figures) for figures in zip(allocated, reserved, driver, strict=True))
    return {
        "fits": True if budget_gb is None else needed <= budget_gb,
        "unet_param_bytes_per_rank": [r.unet_param_bytes for r in records],
        "peak_memory_gb_per_rank_by_phase": peaks,
        "peak_memory_gb": max(allocated),
        "peak_memory_kind": records[0].memory_kind,
        "peak_reserved_gb_per_rank": reserved,
        "driver_memory_gb_per_rank": driver,
        "needed_gb": needed,  # the figure "fits" compares with the budget
        "budget_gb": budget_gb,
    }


class _Skip(Exception):
    def __init__(self, row: dict):
        self.row = row


def _axis_key(axis: str) -> str:
    return "frames" if axis == "frames" else "height"


def _line(row: dict) -> str:
    what = f"{row['strategy']} x{row['world_size']}, {row['frames']} frames at {row['height']}x{row['width']}"
    if row["status"] != "ok":
        return f"{what}: {row['status']}" + (f" ({row['reason']})" if row.get("reason") else "")
    needed = row.get("needed_gb")
    if needed is not None and needed != row["peak_memory_gb"]:  # CUDA: reserved or the driver's figure decides
        return f"{what}: peak {row['peak_memory_gb']:.2f} GB allocated, needs {needed:.2f} GB, fits {row['fits']}"
    return f"{what}: peak {row['peak_memory_gb']:.2f} GB, fits {row['fits']}"


def memory_probe(config: MemoryProbeConfig) -> dict:
    from vidpipe.probe_output import probe_table, search_table

    if under_torchrun():
        raise UsageError("memory-probe starts fresh processes for every configuration: run it directly")
    prober = Prober(config)
    if config.search and prober.budget_gb is None:
        where = ("on CPU" if prober.device_type == "cpu"
                 else "here (nvidia-smi could not tell the GPUs' memory)")
        raise UsageError(
            f"--search {config.search} {where} needs --budget-gb: without a budget the search would grow until the "
            "machine runs out of memory (on a GPU the device's memory is the budget)"
        )
    probes = prober.probes()
    summary = {"command": "memory-probe", "model": config.model, "device_type": prober.device_type,
               "budget_gb": prober.budget_gb, "budget_source": prober.budget_source, "rows": [], "search": []}
    if config.search:
        seen = set()
        for probe in probes:
            key = (probe.strategy, probe.gpus)
            if key in seen:
                continue
            seen.add(key)
            best, tried = prober.search(probe.strategy, probe.gpus, probe.frames, probe.height, probe.width)
            summary["rows"] += tried
            summary["search"].append({
                "strategy": probe.strategy, "world_size": probe.gpus, "axis": config.search,
                "largest_fitting": None if best is None else {k: best[k] for k in ("frames", "height", "width")},
                "peak_memory_gb": None if best is None else best["peak_memory_gb"],
                "needed_gb": None if best is None else best.get("needed_gb"),
            })
            _write(summary, config)
    else:
        for number, probe in enumerate(probes, start=1):
            stderr_console.print(f"[{number}/{len(probes)}] {probe.strategy} on {probe.gpus}, {probe.frames} frames "
                                 f"at {probe.height}x{probe.width}: starting fresh processes")
            row = prober.measure(probe)
            stderr_console.print(_line(row))
            summary["rows"].append(row)
            _write(summary, config)
    print_wide(stderr_console, probe_table(summary))
    if summary["search"]:
        print_wide(stderr_console, search_table(summary))
    if config.json_path == "-":
        write_json(summary, "-")
    return summary


def _write(summary: dict, config: MemoryProbeConfig) -> None:
    if config.json_path not in (None, "-"):
        write_json(summary, config.json_path)

