"""When has a run stalled? Decided by the parent from the events its ranks send.

Two clocks, because a rank can fail to make progress in two ways:
- its process stops altogether (SIGSTOP, a frozen machine): its heartbeats stop, and it is named after
  `stall_timeout_s`, even while the other ranks keep working (a data-parallel peer never waits for it);
- the run stops moving (a deadlock, a collective that never completes): heartbeats go on, but no rank reports a
  stage, step or file for `stall_timeout_s`, or `load_timeout_s` while a rank is still loading its model.
A rank may wait quietly while others work (pipeline fill, the end of an uneven split), so the second clock is
the run's, not each rank's.
"""

from __future__ import annotations

from vidpipe.runtime.events import Event, Heartbeat, PhaseStarted, StageReached

#: Phases during which a slow start is normal: the model is being read or built, or torch.compile compiles it
#: inside its first step (`--load-timeout`).
LOADING_PHASES = frozenset({"joined", "load", "compile"})


class Watchdog:
    def __init__(self, world_size: int, stall_timeout_s: float, load_timeout_s: float, now: float):
        self.stall_timeout_s = stall_timeout_s
        self.load_timeout_s = load_timeout_s
        self.heard_at = [now] * world_size  # last sign of life (any event) per rank
        self.progress_at = [now] * world_size  # last progress (any event but a heartbeat) per rank
        self.phase = ["starting"] * world_size
        self.busy = True  # a server's ranks idle between jobs: no progress is expected then

    def set_busy(self, busy: bool, now: float) -> None:
        """A server tells whether work is in flight; the progress clock restarts when work arrives."""
        if busy and not self.busy:
            self.progress_at = [now] * len(self.progress_at)
        self.busy = busy

    def on_event(self, event: Event, now: float) -> None:
        if not 0 <= event.rank < len(self.heard_at):
            return
        self.heard_at[event.rank] = now
        if isinstance(event, Heartbeat):
            return
        self.progress_at[event.rank] = now
        if isinstance(event, StageReached):
            self.phase[event.rank] = event.stage
        elif isinstance(event, PhaseStarted):
            self.phase[event.rank] = event.phase

    def check(self, now: float) -> str | None:
        """A one-line reason to stop the run, or None while it is healthy."""
        for rank, heard in enumerate(self.heard_at):
            if now - heard > self.stall_timeout_s:
                return (
                    f"rank {rank} stopped responding: no heartbeat for {now - heard:.0f} s while in phase "
                    f"'{self.phase[rank]}' (a stopped or frozen process; --stall-timeout {self.stall_timeout_s:g})"
                    "; all ranks stopped"
                )
        if not self.busy:
            return None
        loading = any(phase in LOADING_PHASES for phase in self.phase)
        allowance = max(self.stall_timeout_s, self.load_timeout_s) if loading else self.stall_timeout_s
        last_progress = max(self.progress_at)
        if now - last_progress <= allowance:
            return None
        stuck = min(range(len(self.progress_at)), key=self.progress_at.__getitem__)
        flag = "--load-timeout" if loading else "--stall-timeout"
        return (
            f"no progress from any rank for {allowance:.0f} s; rank {stuck} has been silent longest "
            f"({now - self.progress_at[stuck]:.0f} s, phase '{self.phase[stuck]}'): stopped all ranks "
            f"(raise {flag} if this work is really that slow)"
        )
