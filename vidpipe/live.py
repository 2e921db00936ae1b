"""The live display of a run, drawn by the parent alone from the workers' events (to stderr)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vidpipe.report import stderr_console
from vidpipe.runtime.events import Event, FilesWritten, FramesDecoded, PhaseStarted, SampleDone, StepDone


@dataclass
class RankStatus:
    phase: str = "starting"
    sample: int | None = None
    step: int | None = None
    block_position: int = 0
    steps_in_block: int = 0
    steps_done: int = 0


class LiveView:
    """Per rank: phase, sample and step; overall: samples diffused (and decoded, for `generate`)."""

    def __init__(self, world_size: int, num_samples: int, verbose: bool = False, decode: bool = False):
        self.ranks = [RankStatus() for _ in range(world_size)]
        self.verbose = verbose
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=stderr_console,
        )
        self.diffused = self.progress.add_task("samples diffused", total=num_samples)
        self.decoded = self.progress.add_task("samples written", total=num_samples, visible=decode)
        self.live = Live(self._render(), console=stderr_console, refresh_per_second=6, transient=True)
        self._last_refresh = 0.0

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.update(self._render())
        return self.live.__exit__(*exc)

    def on_event(self, event: Event) -> None:
        status = self.ranks[event.rank] if 0 <= event.rank < len(self.ranks) else None
        if status is None:
            return
        if isinstance(event, PhaseStarted):
            status.phase = event.phase
        elif isinstance(event, StepDone):
            status.sample, status.step = event.sample, event.step
            status.block_position, status.steps_in_block = event.block_position, event.steps_in_block
            status.steps_done = max(status.steps_done, event.steps_done)
            if self.verbose:
                self.live.console.print(
                    f"[rank={event.rank}] step {event.step} completed in {event.seconds * 1000:.2f} ms"
                    + (" (warm-up)" if event.sample < 0 else f" (sample {event.sample})"),
                    markup=False, highlight=False,
                )
        elif isinstance(event, SampleDone) and event.sample >= 0:
            self.progress.advance(self.diffused)
        elif isinstance(event, FramesDecoded):
            status.phase, status.sample = "decode", event.sample
        elif isinstance(event, FilesWritten):
            self.progress.advance(self.decoded)
        now = time.monotonic()
        if now - self._last_refresh > 0.1:
            self._last_refresh = now
            self.live.update(self._render())

    def _render(self) -> Group:
        table = Table(box=None, pad_edge=False)
        for column in ("rank", "phase", "sample", "step", "in block", "steps done"):
            table.add_column(column, justify="right" if column != "phase" else "left")
        for rank, status in enumerate(self.ranks):
            sample = "-" if status.sample is None else ("warm-up" if status.sample < 0 else str(status.sample))
            in_block = f"{status.block_position}/{status.steps_in_block}" if status.steps_in_block else "-"
            table.add_row(str(rank), status.phase, sample, "-" if status.step is None else str(status.step),
                          in_block, str(status.steps_done))
        return Group(table, self.progress)
