"""Time spent in spans of device work (communication, encoding), without a host sync per span (design §12).

On CPU a span is `time.perf_counter()` around the call. On CUDA the call only queues work: the host returns at
once, and NCCL's `work.wait()` merely makes the compute stream wait, so host clocks would read ~0. A span there
is a pair of CUDA events recorded on the current (compute) stream before and after the call; the time between
them is what the stream spent on it, waiting for a collective or a hand-off included. Pairs are resolved lazily:
those already finished as new ones come in (`Event.query`, no sync), the rest when the total is read.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

import torch

#: Resolve finished event pairs once this many are pending, so that a long run (a server) holds few events.
RESOLVE_FINISHED_AT = 64


@dataclass(frozen=True)
class SpanStart:
    """Where a span began: a host clock reading on CPU, an event queued on the compute stream on CUDA."""

    device: torch.device
    host_s: float
    event: torch.cuda.Event | None = None


def span_start(device: torch.device) -> SpanStart:
    """Mark the start of a span of work on `device` (the device of the tensors the work touches)."""
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(device))
        return SpanStart(device, 0.0, event)
    return SpanStart(device, time.perf_counter())


class DeviceTimer:
    """Seconds spent in spans: host seconds on CPU, compute-stream seconds on CUDA (resolved when read)."""

    def __init__(self):
        self._resolved_s = 0.0
        self._pending: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()

    def stop(self, started: SpanStart) -> None:
        """End the span begun at `started` and add it to the total."""
        if started.event is None:
            self._resolved_s += time.perf_counter() - started.host_s
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(started.device))
        self._pending.append((started.event, end))
        if len(self._pending) >= RESOLVE_FINISHED_AT:
            self._resolve(wait=False)

    @contextmanager
    def span(self, device: torch.device):
        """Time the body as one span of work on `device`."""
        started = span_start(device)
        try:
            yield
        finally:
            self.stop(started)

    def seconds(self) -> float:
        """The total so far. NOTE: on CUDA this waits for the pending spans' events: read it after the run."""
        self._resolve(wait=True)
        return self._resolved_s

    def _resolve(self, wait: bool) -> None:
        # Spans on one stream finish in order: without waiting, stop at the first one still running. Both events
        # of a pair are checked: `elapsed_time` needs both complete, and a span may start on another stream.
        while self._pending:
            start, end = self._pending[0]
            if wait:
                start.synchronize()
                end.synchronize()
            elif not (start.query() and end.query()):
                return
            self._resolved_s += start.elapsed_time(end) / 1000.0  # elapsed_time is in milliseconds
            self._pending.popleft()
