"""The body of every worker process: join the group, run the job, report, leave."""

from __future__ import annotations

import ctypes
import io
import os
import signal
import sys
import threading
import time
import traceback

import torch

from vidpipe.runtime.dist import RankSetup, join, leave
from vidpipe.runtime.events import HEARTBEAT_S, EventSink, Heartbeat, RunFinished, StageReached, WorkerError


def _die_with_parent(rank: int) -> None:
    """Linux: the kernel SIGKILLs this worker if its parent (the worker server, which exits with the launcher)
    dies, so no rank outlives a killed launcher. The process is named `vidpipe-rankN` for ps and top."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig, pr_set_name = 1, 15
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        libc.prctl(pr_set_name, f"vidpipe-rank{rank}".encode()[:15])
    except OSError:
        pass


def run_rank(setup: RankSetup, job, events: EventSink, started_at: float | None = None, on_error=None):
    """Join, run `job` on this rank, leave; returns the job's result (rank 0) or None.

    `on_error(error)` is called before the group is torn down: tearing down an NCCL group whose peers are gone
    or stuck in a collective can itself hang, and the parent must hear of the error first.
    """
    ctx = join(setup, started_at)
    try:
        events.emit(StageReached(setup.rank, stage="joined"))
        return job.run(ctx, events)
    except BaseException as error:
        if on_error is not None:
            on_error(error)
        raise
    finally:
        leave()


class HeartbeatThread:
    """Tells the parent this process still runs, whatever its main thread waits on. A stopped (SIGSTOP) or
    frozen process falls silent, so the parent can name it even while the other ranks go on working."""

    def __init__(self, events: EventSink):
        self._events = events
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="vidpipe-heartbeat", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2 * HEARTBEAT_S)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._events.emit(Heartbeat(self._events.rank))


def to_bytes(result) -> bytes:
    """Serialise a result holding tensors into plain bytes.

    NOTE: torch's queue pickler would share tensor storage through file descriptors, which vanish when this
    worker exits before the parent has read them ("connection reset"): bytes outlive the sender.
    """
    buffer = io.BytesIO()
    torch.save(result, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)


def _exit_on_sigterm(signum, _frame) -> None:
    # Once only: a SIGTERM arriving while the worker already unwinds or runs its exit handlers just ends it,
    # instead of raising again inside them (a traceback on the user's terminal).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(128 + signum)


def _quiet_loading_bars() -> None:
    """Workers load local files only; W copies of transformers' "Loading weights" bar would tear through the
    parent's live display. (Downloads happen in the parent, whose bars stay.)"""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # transformers, imported later, takes its own setting from this
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:  # already imported while the job was unpickled
        transformers_logging.disable_progress_bar()


def worker_entry(setup: RankSetup, job, queue) -> None:
    """Target of each rank's process. Errors become a `WorkerError` event naming this rank, then exit 1."""
    started_at = time.time()
    os.environ.update(dict(setup.env))
    _die_with_parent(setup.rank)
    # NOTE: Ctrl-C reaches the whole foreground process group; the parent alone decides how ranks stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM from the parent unwinds Python (finally blocks remove temporary files); a rank stuck in C code
    # does not return to Python and is SIGKILLed after a grace period instead.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _quiet_loading_bars()
    events = EventSink(setup.rank, queue=queue)
    events.emit(StageReached(setup.rank, stage="started"))
    reported: list[BaseException] = []

    def report(error: BaseException) -> None:
        events.emit(WorkerError(setup.rank, message=f"{type(error).__name__}: {error}",
                                traceback=traceback.format_exc()))
        reported.append(error)

    try:
        with HeartbeatThread(events):
            result = run_rank(setup, job, events, started_at, on_error=report)
        if setup.rank == 0:
            events.emit(RunFinished(0, result=to_bytes(result)))
    except BaseException as error:  # noqa: BLE001 - any failure must reach the parent
        if not reported:  # failed before or while joining the group
            report(error)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        queue.close()
        queue.join_thread()  # make sure the error is on the pipe before the process goes
        sys.exit(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # done: being stopped now needs no unwinding
    queue.close()
    queue.join_thread()
