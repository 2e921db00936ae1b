"""Fast worker start: ranks are forked from a server process that imported torch and diffusers once.

Starting a rank with `spawn` means a new interpreter that imports torch and diffusers again: seconds of CPU per
rank, paid W times over on a machine with fewer cores than ranks. Python's `forkserver` start method fixes that
soundly: a clean server process (no CUDA, no threads, no process group) imports the modules named here once,
then forks one child per rank on request. `fork` from the launcher itself would not be sound: by the time it
launches, it holds a TCPStore thread, a queue feeder thread and possibly CUDA.

The server starts in the background (`start_worker_server`), so a command can call it first thing and do its own
imports and input checks while the server imports on another core.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
from collections.abc import Sequence

#: The start method every rank is created with.
CONTEXT = multiprocessing.get_context("forkserver")

#: Imported by the server before anything else: pins numpy's OpenBLAS to the calling thread, so that the server
#: holds no thread of its own when it forks (a thread holding a lock at fork time deadlocks the child).
SERVER_INIT = "vidpipe.runtime.server_init"

#: What ranks of any command need; `simulate` asks only for its own, lighter, list (no SVD stack).
DEFAULT_PRELOAD = ("vidpipe.runtime.worker", "vidpipe.jobs.generate", "vidpipe.jobs.diffuse_only",
                   "vidpipe.models.svd")
SIMULATE_PRELOAD = ("vidpipe.jobs.simulate",)

_preload: tuple[str, ...] | None = None


def start_worker_server(modules: Sequence[str] = DEFAULT_PRELOAD) -> None:
    """Start the server that forks every rank of this process's runs, importing `modules` first.

    Returns at once; the server imports in the background. Only the first call in a process has an effect:
    later runs reuse the server (a module it did not preload is imported by the rank that needs it).
    """
    global _preload
    if _preload is not None or "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun starts the ranks itself
        return
    _preload = (SERVER_INIT, "vidpipe.runtime.worker", *modules)
    CONTEXT.set_forkserver_preload(list(dict.fromkeys(_preload)))
    multiprocessing.forkserver.ensure_running()


def worker_server_pid() -> int | None:
    """The server's process id once it runs (for tests and diagnostics), else None."""
    server = multiprocessing.forkserver._forkserver  # noqa: SLF001 - the stdlib keeps no public handle
    return getattr(server, "_forkserver_pid", None)
