"""Fast worker start: ranks are forked from a server process that imported torch and diffusers once.

Starting a rank with `spawn` means a new interpreter that imports torch and diffusers again: seconds of CPU per
rank, paid W times over on a machine with fewer cores than ranks. Python's `forkserver` start method fixes that
soundly: a clean server process (no CUDA, no threads, no process group) imports the modules named here once,
then forks one child per rank on request. `fork` from the launcher itself would not be sound: by the time it
launches, it holds a TCPStore thread, a queue feeder thread and possibly CUDA.

The server starts in the background (`start_worker_server`), so a command can call it first thing and do its own
imports and input checks while the server imports on another core. Its last preload (`server_ready.py`) writes a
small state file: the launcher waits for it under supervision (`WorkerServerWatch`), learns whether the preload
left CUDA initialised (then ranks are spawned instead, with a warning), and only then asks for ranks.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The start method every rank is created with.
CONTEXT = multiprocessing.get_context("forkserver")

#: Imported by the server before anything else: pins numpy's OpenBLAS to the calling thread (a thread holding a
#: lock at fork time deadlocks the child) and makes torch check for CUDA through NVML (no CUDA initialisation).
SERVER_INIT = "vidpipe.runtime.server_init"
#: Imported by the server after everything else: writes the state file the launcher waits for.
SERVER_READY = "vidpipe.runtime.server_ready"
#: Where the server writes its state file (set for the server's environment only).
STATE_FILE_ENV = "VIDPIPE_WORKER_SERVER_STATE"

#: What ranks of any command need; `simulate` asks only for its own, lighter, list (no SVD stack).
DEFAULT_PRELOAD = ("vidpipe.runtime.worker", "vidpipe.jobs.generate", "vidpipe.jobs.diffuse_only",
                   "vidpipe.models.svd.adapter")
SIMULATE_PRELOAD = ("vidpipe.jobs.simulate",)

_preload: tuple[str, ...] | None = None
_state_file: Path | None = None
_watch: WorkerServerWatch | None = None


@dataclass(frozen=True)
class ServerState:
    """What the server reported once its preload finished."""

    pid: int
    cuda_initialized: bool
    preload_s: float


def start_worker_server(modules: Sequence[str] = DEFAULT_PRELOAD) -> None:
    """Start the server that forks every rank of this process's runs, importing `modules` first.

    Returns at once; the server imports in the background. Only the first call in a process has an effect:
    later runs reuse the server (a module it did not preload is imported by the rank that needs it).
    """
    global _preload, _state_file, _watch
    if _preload is not None or "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun starts the ranks itself
        return
    _preload = (SERVER_INIT, "vidpipe.runtime.worker", *modules, SERVER_READY)
    _state_file = Path(tempfile.gettempdir()) / f"vidpipe-worker-server-{os.getpid()}-{time.monotonic_ns()}.json"
    CONTEXT.set_forkserver_preload(list(dict.fromkeys(_preload)))
    # NOTE: the server takes this process's environment when it is spawned, here and now; set only for that.
    previous = os.environ.get(STATE_FILE_ENV)
    os.environ[STATE_FILE_ENV] = str(_state_file)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if previous is None:
            os.environ.pop(STATE_FILE_ENV, None)
        else:
            os.environ[STATE_FILE_ENV] = previous
    _watch = WorkerServerWatch(worker_server_pid(), time.monotonic())


def worker_server_pid() -> int | None:
    """The server's process id once it runs (for tests and diagnostics), else None."""
    server = multiprocessing.forkserver._forkserver  # noqa: SLF001 - the stdlib keeps no public handle
    return getattr(server, "_forkserver_pid", None)


def read_server_state() -> ServerState | None:
    """The server's state once its preload has finished, else None."""
    if _state_file is None:
        return None
    try:
        return ServerState(**json.loads(_state_file.read_text()))
    except (OSError, ValueError, TypeError):  # not written yet, or caught half-written
        return None


def stop_worker_server() -> None:
    """Kill the server (and any rank it forked that still runs) so that the next run starts a fresh one.
    For a server that stopped answering: it may be stopped (SIGSTOP) or stuck in an import."""
    global _preload, _state_file, _watch
    import psutil

    pid = worker_server_pid()
    if pid is not None:
        try:
            server = psutil.Process(pid)
            for process in [*server.children(recursive=True), server]:
                process.send_signal(signal.SIGKILL)
            os.waitpid(pid, 0)  # the server is this process's child: reap it, leave no zombie
        except (psutil.NoSuchProcess, ChildProcessError):
            pass
    # ensure_running() sees the dead pid and starts a new server next time; the preload list is set again then.
    _preload = None
    _watch = None
    if _state_file is not None:
        _state_file.unlink(missing_ok=True)
        _state_file = None


class WorkerServerWatch:
    """Supervises the worker server, as the watchdog supervises ranks.

    A live server makes progress: it uses CPU while it imports and forks. One that uses none for the stall
    timeout while it preloads, or while the launcher waits for a fork, is stopped (SIGSTOP), stuck on a file
    system or a network call, or deadlocked; one still preloading after the load timeout is too slow to wait for.

    NOTE: its CPU time is sampled from the moment it is spawned, by a thread of the launcher that ends once the
    preload is done: the launcher itself may spend seconds on its own imports before it waits on the server,
    and a server that froze meanwhile must not get a fresh stall allowance when the waiting begins.
    """

    SAMPLE_S = 0.1

    def __init__(self, pid: int, now: float):
        import psutil

        self.pid = pid
        self.started = now
        self.last_progress = now
        self._process = psutil.Process(pid)
        self._cpu = -1.0
        self._status = "running"
        self._gone = False
        self._sampler = threading.Thread(target=self._sample_until_preloaded, name="vidpipe-server-watch",
                                         daemon=True)
        self._sampler.start()

    def _sample(self, now: float) -> None:
        import psutil

        try:
            self._status = self._process.status()
            times = self._process.cpu_times()
        except psutil.NoSuchProcess:
            self._gone = True
            return
        self._gone = self._status == psutil.STATUS_ZOMBIE
        cpu = times.user + times.system
        if cpu > self._cpu:
            self._cpu, self.last_progress = cpu, now

    def _sample_until_preloaded(self) -> None:
        while not self._gone and read_server_state() is None and worker_server_pid() == self.pid:
            self._sample(time.monotonic())
            time.sleep(self.SAMPLE_S)

    def check(self, now: float, since: float, waiting_for: str, stall_timeout_s: float,
              load_timeout_s: float) -> str | None:
        """None while the server is fine, else why the run must stop. `since`: when the launcher began to wait
        (progress is expected from then on; while preloading, from the server's start)."""
        self._sample(now)
        name = f"the worker server (pid {self.pid})"
        if self._gone:
            return f"{name} exited while {waiting_for}; no rank started"
        quiet = now - max(self.last_progress, since)
        if quiet > stall_timeout_s:
            return (f"{name} made no progress for {quiet:.0f} s while {waiting_for} (process {self._status}; "
                    f"--stall-timeout {stall_timeout_s:g}); it was stopped and no rank started")
        if read_server_state() is None and now - self.started > load_timeout_s:
            return (f"{name} was still {waiting_for} after {now - self.started:.0f} s (--load-timeout "
                    f"{load_timeout_s:g}); it was stopped and no rank started")
        return None


def server_watch() -> WorkerServerWatch | None:
    """The watch of this process's worker server (None before `start_worker_server`, or under torchrun)."""
    return _watch
