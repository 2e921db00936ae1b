"""A node's side of the shared queue: its heartbeat (design §11).

Every `beat_s` one thread, outside the engine's lock:
- extends the lease of each job this node holds and writes its progress (readers on other nodes see it);
- learns that a job was cancelled through another node (the row's flag), or that its lease was lost (another node
  took the job over after this one stopped answering): the engine then stops the job without writing anything;
- retries the final writes the store could not take (a job's end is never forgotten while the node lives);
- records the node itself and reads the fleet's nodes for `/v1/health`.

While the store is unreachable the engine claims nothing, health says `unhealthy`, and the thread retries with
back-off. Nothing about a held job is lost meanwhile: its samples go on running, its end waits in `pending`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from vidpipe.report import stderr_console
from vidpipe.serve.store import NodeInfo, StoreUnavailable, now


@dataclass(frozen=True)
class FleetSettings:
    node: str  # --node-name: unique in the fleet
    url: str  # where the node answers (for the page's node list)
    lease_s: float = 30.0  # --lease-timeout
    max_attempts: int = 3  # --max-attempts

    @property
    def beat_s(self) -> float:
        """How often a node renews its leases: several beats fit in one lease, so one slow write loses nothing."""
        return max(0.5, min(2.0, self.lease_s / 5))


class Heartbeat:
    def __init__(self, engine):
        self.engine = engine
        self.fleet: FleetSettings = engine.fleet
        self.started_at = now()
        self.pending: dict[str, tuple[str, dict]] = {}  # job id -> (token, its final write), not yet stored
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vidpipe-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        failures = 0
        while True:
            try:
                self.beat()
                failures = 0
            except StoreUnavailable as error:
                failures += 1
                self.engine.store_lost(str(error))
            # NOTE: back-off while the store is away (up to 8 beats), so a fleet does not hammer a recovering database.
            if self._stop.wait(self.fleet.beat_s * min(8, 2 ** max(0, failures - 1))):
                return

    def beat(self) -> None:
        """One round: the node, its jobs' leases and progress, the final writes still pending."""
        store, engine = self.engine.store, self.engine
        info = NodeInfo(self.fleet.node, self.fleet.url, engine.plan.name, engine.world_size,
                        engine.settings.model_name, engine.status if not engine.stopping else "stopped")
        nodes = store.node_beat(info, self.started_at)
        for job_id, (token, changes) in list(self.pending.items()):
            if not store.update(job_id, token, changes):
                stderr_console.print(f"vidpipe serve: job {job_id} was taken over by another node before this one "
                                     "could record its end; its files here are discarded", highlight=False,
                                     markup=False)
                engine.discard_attempt(job_id)
            self.pending.pop(job_id, None)
        for job_id, token, progress in engine.held_jobs():
            beat = store.heartbeat(job_id, token, self.fleet.lease_s, progress)
            if not beat.held:
                engine.lease_lost(job_id)
            elif beat.cancel_requested:
                engine.cancelled_elsewhere(job_id)
        engine.store_back(nodes, store.count_queued())
