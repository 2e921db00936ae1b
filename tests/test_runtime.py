"""The runtime's pieces on their own: the worker server, and the watchdog's two clocks."""

from __future__ import annotations

import os

from vidpipe.runtime.events import Heartbeat, PhaseStarted, StageReached, StepDone
from vidpipe.runtime.forkserver import CONTEXT, start_worker_server, worker_server_pid
from vidpipe.runtime.watchdog import Watchdog


def _nothing() -> None:
    pass


def test_the_worker_server_holds_a_single_thread_when_it_forks():
    """A process that forks while holding threads hands its children locks nobody will release: the server
    imports torch and diffusers (numpy's BLAS pool pinned) and must still be one thread."""
    start_worker_server()
    process = CONTEXT.Process(target=_nothing)
    process.start()  # returns once the server has imported everything and forked
    process.join(timeout=60)
    assert process.exitcode == 0
    assert len(os.listdir(f"/proc/{worker_server_pid()}/task")) == 1


def test_a_silent_rank_is_named_even_while_the_others_progress():
    watchdog = Watchdog(2, stall_timeout_s=5, load_timeout_s=60, now=0.0)
    for t in range(1, 9):
        watchdog.on_event(StepDone(1, step=t), float(t))  # rank 1 works; rank 0 says nothing at all
        assert watchdog.check(float(t)) is None if t <= 5 else "rank 0 stopped responding" in watchdog.check(t)


def test_the_progress_clock_waits_while_loading_and_while_a_server_idles():
    watchdog = Watchdog(2, stall_timeout_s=5, load_timeout_s=60, now=0.0)
    for rank in (0, 1):
        watchdog.on_event(StageReached(rank, stage="joined"), 0.0)
        watchdog.on_event(PhaseStarted(rank, phase="load"), 0.0)
    for t in range(1, 40):  # alive (heartbeats), loading for 40 s: within --load-timeout
        for rank in (0, 1):
            watchdog.on_event(Heartbeat(rank), float(t))
        assert watchdog.check(float(t)) is None
    for rank in (0, 1):
        watchdog.on_event(PhaseStarted(rank, phase="diffuse"), 40.0)
    for rank in (0, 1):
        watchdog.on_event(Heartbeat(rank), 46.0)
    assert "no progress from any rank for 5 s" in watchdog.check(46.0)
    watchdog.set_busy(False, 46.0)  # a server with nothing to do: silence is fine
    assert watchdog.check(46.0) is None
    watchdog.set_busy(True, 100.0)  # work arrives: the clock starts from now
    for rank in (0, 1):
        watchdog.on_event(Heartbeat(rank), 100.0)
    assert watchdog.check(100.0) is None
