"""Strategies by CLI name. Adding one = one module with `run`, `owner_of`, `needs_encoder`,
`ideal_makespan`, `prepare` and `STAGE_DENOISER_ON_CPU` plus one entry here."""

from __future__ import annotations

from types import ModuleType

from vidpipe.errors import UsageError
from vidpipe.strategies import dp, fsdp, pp

STRATEGIES: dict[str, ModuleType] = {"pp": pp, "dp": dp, "fsdp": fsdp}


def get_strategy(name: str) -> ModuleType:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UsageError(
            f"unknown strategy '{name}': choose one of {', '.join(STRATEGIES)}"
        ) from None
