"""Sample schedulers by plan axis name. Adding one = one module with `run`, `owner_group`, `needs_encoder`,
`steps_of_group` and `ideal_makespan`, plus one entry here (and its name in `parallel.plan.SAMPLE_AXES`)."""

from __future__ import annotations

from types import ModuleType

from vidpipe.strategies import dp, pp

SCHEDULERS: dict[str, ModuleType] = {"pp": pp, "dp": dp}


def scheduler_for(plan) -> ModuleType:
    """The sample scheduler of a `ParallelPlan` (its sample axis)."""
    return SCHEDULERS[plan.sample_axis]
