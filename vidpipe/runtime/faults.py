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
