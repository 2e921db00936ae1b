"""Events workers send to the parent. Only the parent draws; workers only report.

Events are small tuples-as-dataclasses sent over a multiprocessing queue (or, under torchrun, handed to an
in-process listener on local rank 0).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: Seconds between two heartbeats of a worker.
HEARTBEAT_S = 1.0
#: Seconds between two step reports of a rank: the parent draws at 6 Hz, and hundreds of events a second from
#: fast steps would take CPU from the ranks sharing the machine.
STEP_EVENT_INTERVAL_S = 0.1


@dataclass(frozen=True)
class Event:
    rank: int
    wall_time: float = field(default_factory=time.time, compare=False)


@dataclass(frozen=True)
class Heartbeat(Event):
    """Sent every `HEARTBEAT_S` by a thread of each worker while its process runs (not while it is stopped)."""


@dataclass(frozen=True)
class StageReached(Event):
    """A start-up stage: "started" (forked, imports done), "joined" (process group up), "ready" (a server's
    ranks have loaded and split the model and wait for work)."""

    stage: str = ""


@dataclass(frozen=True)
class SampleStarted(Event):
    """A server's rank took a sample, before encoding it: what the rank was running if it fails from now on."""

    sample: int = -1


@dataclass(frozen=True)
class PhaseStarted(Event):
    phase: str = ""  # "load", "warmup", "diffuse", "decode"


@dataclass(frozen=True)
class StepDone(Event):
    """A rank's latest step. NOTE: not one per step: a rank reports the first and last step of each block and at
    most every `STEP_EVENT_INTERVAL_S` between, unless every step is asked for (--verbose); `steps_done` counts
    them all."""

    sample: int = 0
    step: int = 0
    seconds: float = 0.0
    steps_in_block: int = 0
    block_position: int = 0  # 1-based position of this step inside the rank's block
    steps_done: int = 0  # measured steps this rank has run so far (warm-up steps not counted)


@dataclass(frozen=True)
class SampleDone(Event):
    """A sample finished diffusion (on the last rank that touched it)."""

    sample: int = 0


@dataclass(frozen=True)
class SampleCancelled(Event):
    """A server's sample stopped at a step boundary because its job was cancelled."""

    sample: int = 0


@dataclass(frozen=True)
class FramesDecoded(Event):
    sample: int = 0
    frames: int = 0
    total_frames: int = 0


@dataclass(frozen=True)
class FilesWritten(Event):
    sample: int = 0
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerError(Event):
    message: str = ""
    traceback: str = ""


@dataclass(frozen=True)
class RunFinished(Event):
    """Rank 0's gathered result of the whole run; the last event of a successful run."""

    result: Any = None


class EventSink:
    """Where a worker's events go. `emit` never raises: losing a progress event must not kill a run."""

    def __init__(self, rank: int, queue=None, listener=None):
        self.rank = rank
        self._queue = queue
        self._listener = listener

    def emit(self, event: Event) -> None:
        try:
            if self._queue is not None:
                self._queue.put(event)
            elif self._listener is not None:
                self._listener(event)
        except Exception:  # noqa: BLE001 - progress is best effort
            pass
