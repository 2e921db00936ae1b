"""What the store keeps: a job's row, a node's row, a claim on a job; and the one error every backend raises when
it cannot be reached."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")


class StoreUnavailable(Exception):
    """The store could not be reached (the database is down or the network is): try again later. The message never
    holds a password."""


@dataclass
class JobRecord:
    id: str
    seq: int  # the queue's order: jobs are claimed oldest first (the store assigns it on insert)
    status: str
    created_at: float
    request: dict  # the options as submitted (and any sweep), JSON
    image_path: str
    image_name: str
    samples_total: int
    steps_total: int
    samples_done: int = 0
    steps_done: int = 0
    files: list[str] = field(default_factory=list)  # paths relative to the attempt's folder (`attempt_dir`)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    first_step_at: float | None = None  # wall time the job's first step began on a rank
    latencies_s: list[float] = field(default_factory=list)  # per finished sample: first step -> last step
    client: str | None = None  # who submitted it: a digest of its token, or its address (never the token itself)
    node: str | None = None  # the node running it, or that ran it last
    attempts: int = 0  # times a node claimed it; a job whose node died is claimed again, up to --max-attempts
    cancel_requested: bool = False  # any node may set it; the node running the job stops at a step boundary

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


#: The fields a node writes about a job it holds (each write fenced by its lease).
PROGRESS_FIELDS = ("status", "samples_done", "steps_done", "files", "started_at", "finished_at", "error",
                   "first_step_at", "latencies_s")
JSON_FIELDS = ("request", "files", "latencies_s")


@dataclass(frozen=True)
class Claim:
    """A job a node now holds: its writes about the job carry `token`; a node whose lease ran out (another took the
    job over) finds its writes refused."""

    record: JobRecord
    token: str


@dataclass(frozen=True)
class Beat:
    """What a heartbeat learned: whether the node still holds the job, and whether someone asked to cancel it."""

    held: bool
    cancel_requested: bool = False


@dataclass(frozen=True)
class NodeInfo:
    name: str
    url: str
    plan: str
    gpus: int
    model: str
    status: str  # the node's own: loading, ready, busy, unhealthy, stopped


def now() -> float:
    return time.time()
