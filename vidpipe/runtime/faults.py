"""A test-only fault injector, so the supervision paths can be exercised for real.

`VIDPIPE_TEST_FAULT=KIND:RANK:STEP` acts when that rank finishes that step of a measured sample: `raise` raises,
`hang` blocks the rank forever in Python (its heartbeats go on, so only the run-wide progress clock can catch
it). Unset (always, outside tests) it costs one dict lookup per step.
"""

from __future__ import annotations

import os
import time


class InjectedFault(RuntimeError):
    pass


def fault_for(rank: int) -> tuple[str, int] | None:
    """(kind, step) at which `rank` must fail, or None."""
    spec = os.environ.get("VIDPIPE_TEST_FAULT")
    if not spec:
        return None
    kind, fault_rank, step = spec.split(":")
    if kind not in ("raise", "hang") or int(fault_rank) != rank:
        return None
    return kind, int(step)


def maybe_fail(rank: int, step: int, fault: tuple[str, int] | None) -> None:
    if fault is None or step != fault[1]:
        return
    if fault[0] == "hang":
        while True:
            time.sleep(1.0)
    raise InjectedFault(f"injected fault at step {step} (VIDPIPE_TEST_FAULT)")


#: Test-only memory faults for a server's ranks, set once a rank has loaded its model (`limit_memory`), each
#: `RANK:X` (that rank) or `X` (every rank): `VIDPIPE_TEST_RANK_MEMORY_CAP_GB` caps the rank's address space X GB
#: above what it holds then, so a larger allocation fails in the allocator (as a CUDA out-of-memory error does);
#: `VIDPIPE_TEST_OOM_KILL_GB` plays the kernel's OOM killer: once the rank's resident memory is X GB above what it
#: held, it is SIGKILLed a moment later.
MEMORY_CAP_ENV, OOM_KILL_ENV = "VIDPIPE_TEST_RANK_MEMORY_CAP_GB", "VIDPIPE_TEST_OOM_KILL_GB"
#: How long the stand-in OOM killer lets memory stay high before it kills (the kernel's takes about as long to
#: reclaim what it can first); the parent samples the rank's memory meanwhile.
OOM_KILL_DELAY_S = 1.5


def limit_memory(rank: int) -> None:
    """Apply the memory faults the environment asks for to this rank's process (nothing when unset)."""
    cap, kill = _for_rank(MEMORY_CAP_ENV, rank), _for_rank(OOM_KILL_ENV, rank)
    if cap:
        import resource

        import psutil

        limit = psutil.Process().memory_info().vms + int(float(cap) * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    if kill:
        import threading

        threading.Thread(target=_oom_killer, args=(float(kill),), name="vidpipe-test-oom-killer", daemon=True).start()


def _for_rank(name: str, rank: int) -> str | None:
    value = os.environ.get(name)
    if not value or ":" not in value:
        return value
    target, amount = value.split(":")
    return amount if int(target) == rank else None


def _oom_killer(above_gb: float) -> None:
    import signal

    import psutil

    process = psutil.Process()
    threshold = process.memory_info().rss + above_gb * 2**30
    while process.memory_info().rss < threshold:
        time.sleep(0.02)
    time.sleep(OOM_KILL_DELAY_S)
    os.kill(os.getpid(), signal.SIGKILL)
