"""Memory on a server: refuse a job that cannot fit before it is queued, and tell an out-of-memory death from any
other when a rank fails anyway.

The estimate is `auto`'s memory model (`parallel/auto.py`): the denoiser's parameters as the plan holds them, the
encoders, the VAE in fp32 and one denoiser call's activations, charged as the driver will (the allocator's reserve,
a CUDA context). The budget is what the ranks had free before they loaded the model, as `auto` reads it: on CUDA the
smallest free memory of the ranks' GPUs (nvidia-smi: the parent never creates a CUDA context); on CPU, where ranks
share the host's memory, the available memory divided by the ranks.

A rank that dies anyway ran out of memory when it raised an out-of-memory error (CUDA's, or the allocator's on the
CPU), or was SIGKILLed while memory was high: the kernel counted an OOM kill meanwhile (`/proc/vmstat oom_kill`),
the host was nearly out of memory, or the rank's peak since it was loaded (VmHWM, which each rank resets once its
model is loaded) was far above what it held then. A thread samples them every SAMPLE_S: a peak only grows, so any
sample between the rise and the kill sees it.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from vidpipe.errors import UsageError
from vidpipe.metrics import process_peak_rss

GIB = 1024**3
#: Words of an out-of-memory error, whatever raised it (torch.OutOfMemoryError, CUDA, the CPU allocator, NCCL).
OOM_WORDS = ("out of memory", "outofmemoryerror", "can't allocate memory", "cannot allocate memory")
#: "Memory was high" at a SIGKILL: the host had less than this fraction available, or the rank held at least
#: HIGH_RSS_FACTOR times what it held once its model was loaded (and at least HIGH_RSS_MIN_GROWTH more).
LOW_AVAILABLE_FRACTION = 0.05
HIGH_RSS_FACTOR = 1.5
HIGH_RSS_MIN_GROWTH = 256 * 1024**2
#: How often the ranks' memory is sampled.
SAMPLE_S = 0.1


class TooLarge(UsageError):
    """A job the ranks' memory cannot hold (422)."""


@dataclass
class MemoryWatch:
    source: object  # ModelSource
    plan: object  # ParallelPlan
    dtype_bytes: int
    device_type: str
    world_size: int
    budget_gb: float | None = None
    ready_rss: dict[int, int] = field(default_factory=dict)  # rank -> bytes it held once loaded
    peak_rss: dict[int, int] = field(default_factory=dict)  # rank -> its peak since then, at the last sample
    lowest_available_fraction: float = 1.0  # the host's, since the last failure
    pids: dict[int, int] = field(default_factory=dict)  # rank -> process id, while the ranks are ready
    _oom_kills: int | None = None
    _size: object = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def measure_budget(self) -> None:
        """What each rank has to spend, read before the ranks load (see the module docstring)."""
        if self.device_type == "cuda":
            from vidpipe.parallel.auto import free_gpu_memory_gb

            self.budget_gb = free_gpu_memory_gb(self.world_size)
        else:
            self.budget_gb = psutil.virtual_memory().available / GIB / self.world_size
        self._oom_kills = kernel_oom_kills()

    # 1. Before a job is queued.

    def estimate_gb(self, params, guidance: bool) -> float:
        """What the busiest rank of the plan will need for one sample of `params` (the driver's figure)."""
        from vidpipe.models.registry import family_module
        from vidpipe.parallel.auto import driver_memory_gb, memory_bytes

        family = family_module(self.source.family)
        if self._size is None:
            self._size = family.model_size(self.source, self.dtype_bytes)
        switch = family.expert_switch(self.source, params.steps)
        allocated = memory_bytes(self.plan, self._size, params.frames, params.height, params.width, guidance,
                                 params.steps, switch)
        return driver_memory_gb(allocated)

    def check(self, params, guidance: bool) -> None:
        """TooLarge, in one line, when one sample of `params` cannot fit the ranks' budget."""
        if self.budget_gb is None:
            return
        needed = self.estimate_gb(params, guidance)
        if needed > self.budget_gb:
            raise TooLarge(f"needs about {needed:.1f} GB per rank; the ranks have {self.budget_gb:.1f} GB free "
                           f"(plan {self.plan.name}); try fewer frames or a smaller size")

    # 2. While the ranks run.

    def ranks_ready(self, pids: dict[int, int]) -> None:
        """The ranks have loaded their model: what each holds now is its baseline; watch them from now on."""
        self.ready_rss = {rank: rss for rank, pid in pids.items() if (rss := _rss(pid)) is not None}
        self.pids = dict(pids)

    def watch(self) -> None:
        """Sample the ranks' peaks and the host's available memory in a thread of their own until `stop`."""
        threading.Thread(target=self._sample_until_stopped, name="vidpipe-memory", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            for rank, pid in list(self.pids.items()):
                peak = process_peak_rss(pid)
                if peak is not None:
                    self.peak_rss[rank] = max(peak, self.peak_rss.get(rank, 0))
            memory = psutil.virtual_memory()
            self.lowest_available_fraction = min(self.lowest_available_fraction, memory.available / memory.total)

    def out_of_memory(self, error) -> bool:
        """Whether a rank's failure (`RankFailed`) was memory running out (see the module docstring)."""
        text = f"{error}\n{getattr(error, 'details', '')}".lower()
        if any(words in text for words in OOM_WORDS):
            return True
        if getattr(error, "exitcode", None) != -signal.SIGKILL:
            return False
        kills = kernel_oom_kills()
        if kills is not None and self._oom_kills is not None and kills > self._oom_kills:
            return True
        if self.lowest_available_fraction < LOW_AVAILABLE_FRACTION:
            return True
        ready, peak = self.ready_rss.get(error.rank), self.peak_rss.get(error.rank)
        return bool(ready and peak and peak >= HIGH_RSS_FACTOR * ready and peak - ready >= HIGH_RSS_MIN_GROWTH)

    def restarted(self) -> None:
        """The ranks restart: forget what the dead ones held."""
        self.pids = {}
        self.ready_rss = {}
        self.peak_rss = {}
        self.lowest_available_fraction = 1.0
        self._oom_kills = kernel_oom_kills()


def _rss(pid: int) -> int | None:
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.Error, OSError):
        return None


def kernel_oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed since boot (Linux >= 4.13), or None."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return None
