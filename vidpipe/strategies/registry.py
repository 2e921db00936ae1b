"""Strategies by CLI name. Adding one = one module with `run`, `owner_of`, `needs_encoder`,
`ideal_makespan` (and `min_steps` if blocks need it) plus one entry here."""

from __future__ import annotations

from types import ModuleType

from vidpipe.errors import UsageError
from vidpipe.strategies import dp, pp

STRATEGIES: dict[str, ModuleType] = {"pp": pp, "dp": dp}


def get_strategy(name: str) -> ModuleType:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UsageError(
            f"unknown strategy '{name}': choose one of {', '.join(STRATEGIES)}"
        ) from None
