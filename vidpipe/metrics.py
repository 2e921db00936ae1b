"""Timers (device-synchronised), memory, and the figures every report carries (design §7, §12).

Clocks: each rank reads `time.perf_counter()` relative to its own `t0`, taken right after the barrier that
ends warm-up, so ranks on different machines (torchrun) need no common clock; on one machine the barrier
releases all ranks within a fraction of a millisecond. On CUDA a step's clock is read after the compute stream
has finished its queued work, never after `torch.cuda.synchronize()`, which also waits for NCCL's streams (a
send still in flight would then be charged to the next step). Waits and encodes are timed with CUDA events
(`runtime/timing.py`).

Memory on CUDA is three figures per phase: the allocator's peak allocated and peak reserved bytes, and what the
driver charges the process (nvidia-smi: the CUDA context, the reserved pool, NCCL and cuBLAS workspaces).
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vidpipe.models.base import Sample, StepCallback
from vidpipe.runtime import host_memory
from vidpipe.runtime.events import STEP_EVENT_INTERVAL_S, EventSink, PhaseStarted, SampleDone, StepDone
from vidpipe.runtime.faults import fault_for, maybe_fail
from vidpipe.runtime.gpus import driver_memory_mib
from vidpipe.runtime.timing import DeviceTimer

GIB = 1024**3
MIB = 1024**2


@dataclass
class RankRecord:
    """What one rank measured; gathered to rank 0 at the end of the run."""

    rank: int
    steps: list[tuple[int, int, float, float]] = field(default_factory=list)  # (sample, step, start_s, end_s)
    comm_s: float = 0.0
    encode_s: float = 0.0  # time in `model.encode` (conditioning and starting noise)
    compile_s: float | None = None  # --compile: the first step's extra time (None without --compile)
    compiled_blocks: int | None = None  # --compile: blocks compiled (0: each holds a collective, Wan under sp)
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)  # phase -> bytes (CUDA: allocated)
    memory_kind: str = "cpu_peak_rss"
    peak_reserved_bytes: dict[str, int] = field(default_factory=dict)  # phase -> CUDA max_memory_reserved
    driver_memory_bytes: dict[str, int] = field(default_factory=dict)  # phase -> nvidia-smi's charge at its end
    threads: int = 1
    host_malloc: str = ""  # a CPU rank's malloc settings (runtime/host_memory.py); "" on GPU ranks
    unet_param_bytes: int = 0  # the denoiser's parameters held by this rank (its shards under fsdp)
    comm_measured: bool = True  # False where communication overlaps compute unseen (fsdp's all-gathers)
    startup_s: dict[str, float] = field(default_factory=dict)  # stage -> seconds after the command's launch
    # What the collectives splitting one sample's step (cfg, sp) sent from this rank in the measured run.
    split_comm_bytes: int = 0
    split_comm_calls: int = 0
    split_comm_s: float = 0.0


class StepRecorder:
    """Times every denoising step of the measured run on one rank and reports progress as it goes."""

    def __init__(self, device: torch.device, events: EventSink, rank: int, stage_times: dict | None = None,
                 every_step: bool = False, keep_steps: bool = True):
        self.device = device
        self.keep_steps = keep_steps  # False for a server's ranks: they report progress, nobody gathers records
        self.events = events
        self.every_step = every_step  # report every step (--verbose), not at most every STEP_EVENT_INTERVAL_S
        self.steps_done = 0
        self.reported_at = 0.0
        self._record = RankRecord(rank=rank, threads=torch.get_num_threads(),
                                  host_malloc=host_memory.applied)
        # Figures timed as spans of device work (CUDA events, resolved when `record` is read).
        self._span_timers = {"comm_s": DeviceTimer(), "encode_s": DeviceTimer()}
        self.t0 = time.perf_counter()
        self.fault_step = fault_for(rank)
        self.stage_times = stage_times if stage_times is not None else {}
        #: Announced when this rank's first step is done (e.g. "warmup" after the "compile" phase).
        self.phase_after_first_step: str | None = None

    @property
    def record(self) -> RankRecord:
        """This rank's record, its span-timed figures brought up to date. NOTE: on CUDA that waits for their
        pending events: read it after the run, not per step."""
        for figure, timer in self._span_timers.items():
            setattr(self._record, figure, timer.seconds())
        return self._record

    def start_clock(self) -> None:
        self._sync()
        self.t0 = time.perf_counter()

    def now(self) -> float:
        """Seconds since `start_clock`, after the device has finished its queued work."""
        self._sync()
        return time.perf_counter() - self.t0

    def _sync(self) -> None:
        # NOTE: the compute stream only: `torch.cuda.synchronize` would also wait for NCCL's streams, and charge a
        # hand-off still in flight (an isend overlapping the next steps) to this rank's step.
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def on_step_for(self, sample: Sample, block: range) -> StepCallback:
        """A callback for `model.denoise` that records each step of `block` for `sample`."""
        last = self.now()
        rank = self._record.rank

        def on_step(step: int) -> None:
            nonlocal last
            end = self.now()
            self.stage_times.setdefault("first_step", time.time())
            if self.phase_after_first_step is not None:
                self.events.emit(PhaseStarted(rank, phase=self.phase_after_first_step))
                self.phase_after_first_step = None
            if self.keep_steps:
                self._record.steps.append((sample.index, step, last, end))
            if sample.index >= 0:
                self.steps_done += 1
            edge = step in (block.start, block.stop - 1)  # a block's first and last steps: when a sample ran here
            if self.every_step or edge or end - self.reported_at >= STEP_EVENT_INTERVAL_S:
                self.reported_at = end
                self.events.emit(
                    StepDone(rank, sample=sample.index, step=step, seconds=end - last, steps_in_block=len(block),
                             block_position=step - block.start + 1, steps_done=self.steps_done)
                )
            last = end
            if sample.index >= 0:
                maybe_fail(rank, step, self.fault_step)

        return on_step

    def waiting(self):
        """Time spent blocked on communication counts as `comm_s`. On CUDA `work.wait()` only makes the compute
        stream wait, so the wait is timed on that stream (events), not by the host."""
        return self._span_timers["comm_s"].span(self.device)

    def encoding(self):
        """Time spent encoding samples counts as `encode_s` (on CUDA: the compute stream's time, by events)."""
        return self._span_timers["encode_s"].span(self.device)

    def sample_done(self, sample: Sample) -> None:
        self.events.emit(SampleDone(self._record.rank, sample=sample.index))

    def mark_memory(self, phase: str) -> None:
        mark_memory(self.device, self._record, phase)


def mark_memory(device: torch.device, record: RankRecord, phase: str) -> None:
    """Peak memory since the last mark. CUDA: `max_memory_allocated` and `max_memory_reserved`, and what the
    driver charges this process now (nvidia-smi has no peak; omitted where it cannot tell). CPU: peak RSS."""
    if device.type == "cuda":
        record.memory_kind = "cuda_max_allocated"
        record.peak_memory_bytes[phase] = torch.cuda.max_memory_allocated(device)
        record.peak_reserved_bytes[phase] = torch.cuda.max_memory_reserved(device)
        driver_mib = driver_memory_mib(os.getpid())
        if driver_mib is not None and not math.isnan(driver_mib):
            record.driver_memory_bytes[phase] = round(driver_mib * MIB)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        # NOTE: RSS peaks cannot be reset: on CPU each phase shows the process's peak so far.
        record.memory_kind = "cpu_peak_rss"
        record.peak_memory_bytes[phase] = peak_rss_bytes()


def reset_memory_peak(device: torch.device) -> None:
    """Start the next phase's peak from what is allocated now (CUDA; CPU RSS peaks cannot be reset). Phase 2
    calls it once the denoiser is released, so that the decode peak does not count the freed UNet."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def startup_seconds(stage_times: dict[str, float]) -> dict[str, float]:
    """Wall times of start-up stages -> seconds after launch, in the order they happened."""
    launched = stage_times.get("launched", 0.0)
    return {stage: round(at - launched, 4) for stage, at in sorted(stage_times.items(), key=lambda kv: kv[1])
            if stage != "launched"}


def param_bytes(module: torch.nn.Module | None) -> int:
    """Bytes of parameters this rank holds of `module`: only its own shards when the module is sharded."""
    if module is None:
        return 0
    local = (p.to_local() if hasattr(p, "to_local") else p for p in module.parameters())
    return sum(t.numel() * t.element_size() for t in local)


def denoiser_param_bytes(model) -> int:
    """Bytes of every denoiser this rank holds: both of Wan 2.2's experts where a rank loaded both (`denoisers`),
    else the one `unet`."""
    denoisers = model.denoisers() if hasattr(model, "denoisers") else [model.unet]
    return sum(param_bytes(module) for module in denoisers)


def peak_gb(bytes_by_phase: dict[str, int]) -> float | None:
    """The largest of a rank's per-phase figures in GB; None where none was recorded (CPU, no nvidia-smi)."""
    return round(max(bytes_by_phase.values()) / GIB, 4) if bytes_by_phase else None


def memory_needed_gb(allocated_gb: float, reserved_gb: float | None, driver_gb: float | None) -> float:
    """What a rank needs of a device, the figure "fits" compares with the budget: the largest one known.

    Allocated bytes understate it: the caching allocator's reserved pool is what really blocks other allocations,
    and the driver charges the CUDA context and NCCL's buffers on top. On CPU only `allocated_gb` (peak RSS) is
    known.
    """
    return max(v for v in (allocated_gb, reserved_gb, driver_gb) if v is not None)


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def reset_peak_rss() -> None:
    """Start this process's peak resident memory (Linux VmHWM) again from what it holds now: a server's rank does,
    once loaded, so that its peak says what its jobs took (see `serve/memory.py`). Nothing where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def process_peak_rss(pid: int) -> int | None:
    """Peak resident memory (VmHWM) of a live process, in bytes; None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class Timeline:
    """Per-sample figures derived from all ranks' step records."""

    latency_s: dict[int, float]
    completion_s: dict[int, float]
    busy_s: list[float]
    step_time_s: float


def timeline(records: list[RankRecord]) -> Timeline:
    first_start: dict[int, float] = {}
    last_end: dict[int, float] = {}
    durations = []
    busy = []
    for record in records:
        rank_busy = 0.0
        for sample, _step, start, end in record.steps:
            first_start[sample] = min(first_start.get(sample, math.inf), start)
            last_end[sample] = max(last_end.get(sample, -math.inf), end)
            durations.append(end - start)
            rank_busy += end - start
        busy.append(rank_busy)
    latency = {s: last_end[s] - first_start[s] for s in sorted(last_end)}
    step_time = statistics.median(durations) if durations else 0.0
    return Timeline(latency, dict(sorted(last_end.items())), busy, step_time)


def summarize(
    records: list[RankRecord],
    ideal_makespan: Callable[[float, int], float],
) -> dict:
    """The design-§7 figures of one run. `ideal_makespan(step_time_s, num_samples)` comes from the strategy."""
    records = sorted(records, key=lambda r: r.rank)
    tl = timeline(records)
    completions = sorted(tl.completion_s.values())
    n = len(completions)
    makespan = completions[-1] if n else 0.0
    ideal = ideal_makespan(tl.step_time_s, n) if n else 0.0
    latencies = list(tl.latency_s.values())
    peak_by_phase: dict[str, list[float]] = {}
    for record in records:
        for phase, value in record.peak_memory_bytes.items():
            peak_by_phase.setdefault(phase, []).append(round(value / GIB, 4))
    return {
        "first_sample_time_s": completions[0] if n else None,
        "per_sample_latency_s": latencies,
        "latency_mean_s": statistics.fmean(latencies) if n else None,
        "latency_p50_s": statistics.median(latencies) if n else None,
        "latency_max_s": max(latencies) if n else None,
        "steady_interval_s": (completions[-1] - completions[0]) / (n - 1) if n > 1 else None,
        "makespan_s": makespan,
        "throughput_samples_per_s": n / makespan if makespan > 0 else None,
        "step_time_s": tl.step_time_s,
        "ideal_makespan_s": ideal,
        "efficiency": ideal / makespan if makespan > 0 else None,
        "rank_busy_fraction": [b / makespan if makespan > 0 else None for b in tl.busy_s],
        "comm_s_per_rank": [r.comm_s if r.comm_measured else None for r in records],
        "encode_s_per_rank": [round(r.encode_s, 4) for r in records],
        "compile_s_per_rank": [None if r.compile_s is None else round(r.compile_s, 3) for r in records],
        "compiled_blocks_per_rank": [r.compiled_blocks for r in records],
        # Where each rank's makespan went: denoising steps, encoding, waiting on hand-offs, and the rest (CPU work
        # between steps and blocks, pipeline fill and drain not spent waiting on a receive).
        "time_breakdown_per_rank": [
            {"denoise_s": round(busy, 4), "encode_s": round(r.encode_s, 4), "handoff_wait_s": round(r.comm_s, 4),
             "other_s": round(makespan - busy - r.encode_s - r.comm_s, 4)}
            for r, busy in zip(records, tl.busy_s, strict=True)],
        "unet_param_bytes_per_rank": [r.unet_param_bytes for r in records],
        "peak_memory_gb_per_rank": [
            round(max(r.peak_memory_bytes.values(), default=0) / GIB, 4) for r in records
        ],
        "peak_memory_gb_per_rank_by_phase": peak_by_phase,
        "peak_memory_kind": records[0].memory_kind if records else None,
        # CUDA only (None on CPU): the allocator's pool, and the driver's charge for the process (nvidia-smi).
        "peak_reserved_gb_per_rank": [peak_gb(r.peak_reserved_bytes) for r in records],
        "driver_memory_gb_per_rank": [peak_gb(r.driver_memory_bytes) for r in records],
        "threads_per_rank": [r.threads for r in records],
        "host_malloc": records[0].host_malloc if records else None,
        # cfg/sp collectives inside each step (hand-offs are in comm_s_per_rank): measured bytes this rank sent.
        "split_comm_bytes_per_step_per_rank": [
            round(r.split_comm_bytes / len(r.steps)) if r.steps else 0 for r in records],
        "split_comm_calls_per_step_per_rank": [
            round(r.split_comm_calls / len(r.steps), 2) if r.steps else 0 for r in records],
        "split_comm_s_per_rank": [round(r.split_comm_s, 4) for r in records],
        # Start-up (design §7 extended): seconds from the command's launch to each stage of each rank.
        "startup_s_per_rank": [r.startup_s for r in records],
        "launch_to_first_step_s": max((r.startup_s.get("first_step", 0.0) for r in records), default=None),
    }
