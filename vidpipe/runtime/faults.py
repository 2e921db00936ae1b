"""A test-only fault injector, so the supervision paths can be exercised for real.

`VIDPIPE_TEST_FAULT=raise:RANK:STEP` makes that rank raise when it finishes that step of a measured sample.
Unset (always, outside tests) it costs one dict lookup per step.
"""

from __future__ import annotations

import os


class InjectedFault(RuntimeError):
    pass


def fault_for(rank: int) -> int | None:
    """The step at which `rank` must fail, or None."""
    spec = os.environ.get("VIDPIPE_TEST_FAULT")
    if not spec:
        return None
    kind, fault_rank, step = spec.split(":")
    if kind != "raise" or int(fault_rank) != rank:
        return None
    return int(step)


def maybe_fail(rank: int, step: int, fault_step: int | None) -> None:
    if fault_step is not None and step == fault_step:
        raise InjectedFault(f"injected fault at step {step} (VIDPIPE_TEST_FAULT)")
