"""Start the ranks and supervise them: fork W workers from the worker server (or, under torchrun, be one), relay
their events to the parent's display, and stop everything cleanly when a rank fails, dies, stalls, or the user
interrupts."""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch.distributed as dist

from vidpipe.errors import Interrupted, RankFailed
from vidpipe.runtime.dist import RankSetup, process_start_time, torchrun_setup
from vidpipe.runtime.events import Event, EventSink, Heartbeat, RunFinished, WorkerError
from vidpipe.runtime.forkserver import (
    CONTEXT,
    DEFAULT_PRELOAD,
    read_server_state,
    server_watch,
    start_worker_server,
    stop_worker_server,
)
from vidpipe.runtime.watchdog import Watchdog
from vidpipe.runtime.worker import from_bytes, run_rank, worker_entry

#: How long a worker gets to exit after SIGTERM before it is SIGKILLed.
TERMINATE_GRACE_S = 3.0
#: How long a finished run waits for its workers to exit by themselves.
WORKER_EXIT_WAIT_S = 15.0


@dataclass(frozen=True)
class LaunchSpec:
    world_size: int
    device_type: str
    backend: str
    stall_timeout_s: float
    load_timeout_s: float = 600.0
    dist_timeout_s: float = 1800.0  # the process group's timeout: a collective waiting longer fails


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ


def launch(job, spec: LaunchSpec, on_event: Callable[[Event], None]):
    """Run `job` on every rank; returns rank 0's result (None on ranks > 0 under torchrun)."""
    setup = torchrun_setup(spec.device_type, spec.backend, spec.dist_timeout_s) if under_torchrun() else None
    if setup is not None:
        return _run_as_torchrun_rank(setup, job, on_event)
    return _spawn_and_supervise(job, spec, on_event)


def _run_as_torchrun_rank(setup: RankSetup, job, on_event):
    """torchrun started us: this process is one rank; local rank 0 draws its own progress."""
    events = EventSink(setup.rank, listener=on_event if setup.local_rank == 0 else None)
    return run_rank(setup, job, events)


def _spawn_and_supervise(job, spec: LaunchSpec, on_event):
    ranks = RankGroup(job, spec)
    previous_handlers = _install_signal_handlers(ranks.workers)
    try:
        ranks.start()
        while True:
            event = ranks.poll()
            if isinstance(event, RunFinished):
                break
            if event is not None:
                on_event(event)
        # Success: every rank is past its work; let them exit on their own before anything is stopped.
        ranks.join(WORKER_EXIT_WAIT_S)
        return from_bytes(event.result)
    finally:
        ranks.stop()
        _restore_signal_handlers(previous_handlers)


class RankGroup:
    """W worker processes running `job`, forked from the worker server around a rendezvous store this process
    owns, and their supervision: `poll` returns their events one by one and raises `RankFailed` when a rank
    fails, dies or stalls. `generate` runs one job to its end; `serve` keeps one alive across many jobs."""

    def __init__(self, job, spec: LaunchSpec):
        self.job = job
        self.spec = spec
        self.workers: list = []
        self.events = None
        self.store = None
        self.watchdog: Watchdog | None = None
        self._next_check = 0.0

    def start(self) -> None:
        # The modules this job's ranks need, imported once by the server (a no-op if the command started it).
        start_worker_server(getattr(self.job, "preload", DEFAULT_PRELOAD))
        spec = self.spec
        context = self._rank_context()
        launched_at = process_start_time()
        settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("VIDPIPE_")))
        self.events = context.Queue()
        # NOTE: port 0 lets the OS pick a free port and this process keeps the listening socket: no race between
        # choosing a port and binding it, so several vidpipe runs can start at the same moment.
        self.store = dist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False)
        for rank in range(spec.world_size):
            setup = RankSetup(rank, spec.world_size, rank, spec.world_size, spec.device_type, spec.backend,
                              "127.0.0.1", self.store.port, timeout_s=spec.dist_timeout_s, launched_at=launched_at,
                              env=settings)
            process = context.Process(target=worker_entry, args=(setup, self.job, self.events),
                                      name=f"vidpipe-rank{rank}")
            if context is CONTEXT:
                self._supervise_server(process.start, f"forking rank {rank}")
            else:
                process.start()
            self.workers.append(process)
        self.watchdog = Watchdog(spec.world_size, spec.stall_timeout_s, spec.load_timeout_s, time.monotonic())

    def _rank_context(self):
        """The worker server's context once its preload is done; `spawn` if that preload initialised CUDA."""
        if server_watch() is None:  # no server started by this process
            return CONTEXT
        self._supervise_server(self._wait_until_preloaded, "preloading")
        state = read_server_state()
        if self.spec.device_type == "cuda" and state is not None and state.cuda_initialized:
            print("vidpipe: warning: the worker server initialised CUDA while preloading, so ranks forked from it "
                  "could not use CUDA; starting them with spawn instead (slower start). `vidpipe doctor` shows why.",
                  file=sys.stderr, flush=True)
            return multiprocessing.get_context("spawn")
        return CONTEXT

    @staticmethod
    def _wait_until_preloaded() -> None:
        while read_server_state() is None and server_watch() is not None:  # None: the server was stopped
            time.sleep(0.02)

    def _supervise_server(self, action, waiting_for: str) -> None:
        """Run `action` (which waits on the worker server) in a thread while this one watches the server; a server
        that stops making progress is killed (which also ends the wait) and the run fails, naming it."""
        failure: list[BaseException] = []

        def run() -> None:
            try:
                action()
            except BaseException as error:  # noqa: BLE001 - reported by the watching thread
                failure.append(error)

        watch = server_watch()
        since = watch.started if waiting_for == "preloading" else time.monotonic()
        thread = threading.Thread(target=run, name="vidpipe-server-wait", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(timeout=0.1)
            reason = None
            if thread.is_alive():
                reason = watch.check(time.monotonic(), since, waiting_for, self.spec.stall_timeout_s,
                                     self.spec.load_timeout_s)
            if reason is not None:
                stop_worker_server()
                thread.join(timeout=TERMINATE_GRACE_S)
                raise RankFailed(reason)
        if failure:
            stop_worker_server()
            raise RankFailed(f"the worker server failed while {waiting_for}: {failure[0]!r}")

    def poll(self, timeout: float = 0.1) -> Event | None:
        """The next event (heartbeats are consumed here), or None after `timeout`; raises `RankFailed`."""
        try:
            event = self.events.get(timeout=timeout)
        except queue_module.Empty:
            event = None
        now = time.monotonic()
        if event is not None:
            self.watchdog.on_event(event, now)
            if isinstance(event, WorkerError):
                raise _root_cause(self.workers, event)
        # NOTE: checked on a clock, not only when the queue is idle: a busy run (many ranks' heartbeats and
        # steps) must still notice the one rank that has fallen silent.
        if now >= self._next_check:
            self._next_check = now + 0.1
            _check_exits(self.workers, self.events)
            reason = self.watchdog.check(now)
            if reason is not None:
                raise RankFailed(reason)
        return None if isinstance(event, Heartbeat) else event

    def join(self, timeout: float) -> None:
        for worker in self.workers:
            worker.join(timeout=timeout)

    def stop(self) -> None:
        """Stop every rank (SIGTERM, grace, SIGKILL) and close the rendezvous; safe to call twice."""
        _stop_workers(self.workers)
        if self.events is not None:
            self.events.close()
            self.events = None
        self.store = None  # closes the rendezvous port


def _short(message: str, limit: int = 300) -> str:
    first_line = message.strip().splitlines()[0] if message.strip() else message
    return first_line if len(first_line) <= limit else first_line[: limit - 3] + "..."


def _root_cause(workers, error: WorkerError) -> RankFailed:
    """A rank that dies takes its neighbours' connections with it, and they often report first: wait a moment
    and name the dead rank as the cause when there is one."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        for rank, process in enumerate(workers):
            if rank != error.rank and process.exitcode is not None and process.exitcode < 0:
                return RankFailed(
                    f"rank {rank} died unexpectedly ({describe_exit(process.exitcode)}); all ranks stopped "
                    f"(rank {error.rank} then failed: {_short(error.message, 120)})", error.traceback, rank,
                    process.exitcode,
                )
        time.sleep(0.05)
    return RankFailed(f"rank {error.rank} failed: {_short(error.message)}", error.traceback, error.rank)


def _check_exits(workers, events) -> None:
    for rank, process in enumerate(workers):
        if process.exitcode is None or process.exitcode == 0:
            continue
        # The rank may have reported its error just before exiting: prefer that message. NOTE: bounded by a
        # deadline, not by the queue falling idle: the other ranks keep it busy with steps and heartbeats.
        deadline = time.monotonic() + 0.5
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = events.get(timeout=left)
            except queue_module.Empty:
                break
            if isinstance(event, WorkerError):
                raise _root_cause(workers, event)
        raise RankFailed(f"rank {rank} died unexpectedly ({describe_exit(process.exitcode)}); all ranks stopped",
                         rank=rank, exitcode=process.exitcode)


def describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _stop_workers(workers) -> None:
    """SIGTERM every live worker and whatever it started, then SIGKILL what is left after a grace period."""
    processes = []
    for worker in workers:
        if worker.is_alive():
            try:
                parent = psutil.Process(worker.pid)
                processes.extend(parent.children(recursive=True))
                processes.append(parent)
            except psutil.NoSuchProcess:
                pass
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(processes, timeout=TERMINATE_GRACE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    for worker in workers:
        worker.join(timeout=TERMINATE_GRACE_S)


def _install_signal_handlers(workers):
    """First SIGINT/SIGTERM: unwind and stop the ranks cleanly. A second: kill them all at once and exit."""
    interrupted = []

    def handler(signum, _frame):
        if interrupted:
            for worker in workers:
                if worker.is_alive():
                    os.kill(worker.pid, signal.SIGKILL)
            os._exit(128 + signum)
        interrupted.append(signum)
        raise Interrupted(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore_signal_handlers(previous) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
