"""Parent side of every command: resolve where the ranks run, launch them under the live display."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

from vidpipe.config import RunOptions
from vidpipe.errors import UsageError
from vidpipe.live import LiveView
from vidpipe.parallel.plan import ParallelPlan
from vidpipe.runtime.devices import resolve_backend, resolve_device_type, resolve_dtype
from vidpipe.runtime.launch import LaunchSpec, launch, under_torchrun


@dataclass(frozen=True)
class Placement:
    """Where a run goes, resolved against this machine."""

    spec: LaunchSpec
    dtype: str
    torchrun: bool
    draws: bool  # this process draws progress (the parent, or local rank 0 under torchrun)
    plan: ParallelPlan


def place(
    run: RunOptions, steps: int, default_gpus: int, frames: int | None = None, guidance: bool = True
) -> Placement:
    """Resolve world size, plan, device, backend and dtype. Under torchrun the world size is torchrun's."""
    torchrun = under_torchrun()
    if torchrun:
        world_size = int(os.environ["WORLD_SIZE"])
        if run.gpus is not None and run.gpus != world_size:
            raise UsageError(f"--gpus {run.gpus}, but torchrun started {world_size} ranks: drop --gpus under torchrun")
    else:
        world_size = run.gpus or default_gpus
    plan = run.plan(world_size)
    plan.check_job(steps, frames, guidance)
    device_type = resolve_device_type(run.device, world_size, torchrun)
    backend = resolve_backend(run.backend, device_type)
    dtype = resolve_dtype(run.dtype, device_type)
    draws = not torchrun or int(os.environ.get("LOCAL_RANK", "0")) == 0
    spec = LaunchSpec(world_size, device_type, backend, run.stall_timeout_s, run.load_timeout_s, run.dist_timeout_s)
    return Placement(spec, dtype, torchrun, draws, plan)


def run_with_display(
    job, placement: Placement, num_samples: int, verbose: bool, decode: bool = False, listener=None
):
    """Launch `job` on every rank; returns rank 0's result, or None on the other ranks under torchrun.

    `listener(event)`, if given, sees every event too (e.g. to log finished files as they appear).
    """
    view = LiveView(placement.spec.world_size, num_samples, verbose, decode) if placement.draws else None

    def on_event(event) -> None:
        if view is not None:
            view.on_event(event)
        if listener is not None:
            listener(event)

    with view if view is not None else nullcontext():
        return launch(job, placement.spec, on_event)
