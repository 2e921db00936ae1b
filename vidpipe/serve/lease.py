"""A node's side of the shared queue: its leases (`LeaseHolder`, which the engine is) and its heartbeat (design §11).

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

import shutil
import threading
from dataclasses import dataclass

from vidpipe.report import stderr_console
from vidpipe.serve.store import JobRecord, NodeInfo, StoreUnavailable, now


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


class LeaseHolder:
    """The engine's side of its leases (`Engine` is one): the fenced end of a job, and what the heartbeat and the
    store's notifications call from their threads (each takes the engine's lock)."""

    def _write_end(self, job_id: str, token: str, changes: dict, attempt: int) -> None:
        """A job's end, fenced by its lease; while the store is away it waits in the heartbeat's `pending`."""
        try:
            self.record_end(job_id, token, changes, attempt)
        except StoreUnavailable as error:
            self.heartbeat.pending[job_id] = (token, changes, attempt)
            self.store_lost(str(error))

    def record_end(self, job_id: str, token: str, changes: dict, attempt: int) -> None:
        """Write a job's end (StoreUnavailable if the store is away). Written and done, the job has this attempt's
        files only: earlier attempts' folders go (their nodes died). Refused (the lease was lost: another node took
        the job over), this attempt's files go."""
        if not self.store.update(job_id, token, changes):
            stderr_console.print(f"vidpipe serve: job {job_id} was taken over by another node before this one "
                                 "recorded its end; its files here are discarded", highlight=False, markup=False)
            self.discard_attempt(job_id, attempt)
        elif changes.get("status") == "done":
            for folder in self.job_dir(job_id).glob("attempt-*"):
                if folder != self.attempt_dir(job_id, attempt):
                    shutil.rmtree(folder, ignore_errors=True)

    def held_jobs(self) -> list[tuple[str, str, dict]]:
        """(id, lease token, progress) of every job this node holds."""
        with self.lock:
            return [(state.record.id, state.token, progress_of(state.record)) for state in self.jobs.values()
                    if not state.lost]

    def lease_lost(self, job_id: str) -> None:
        """Another node took this job over (this one did not heartbeat in time): stop its samples at the next step
        boundary and keep nothing of this attempt."""
        with self.lock:
            state = self.jobs.get(job_id)
            if state is None:
                return
            stderr_console.print(f"vidpipe serve: lost the lease on job {job_id} (another node took it over): "
                                 "stopping it here", highlight=False, markup=False)
            state.lost = True
        self.cancel(job_id)

    def _notified(self, message: str) -> None:
        if message == "job":
            self._claim_wake.set()
        elif message.startswith("cancel:"):
            self.cancelled_elsewhere(message.removeprefix("cancel:"))

    def cancelled_elsewhere(self, job_id: str) -> None:
        """A DELETE reached another node: its flag in the store says so. Stop the job here, and say so once."""
        with self.lock:
            state = self.jobs.get(job_id)
            if state is None or state.cancel_requested:
                return
        stderr_console.print(f"vidpipe serve: job {job_id} was cancelled through another node: stopping it at the "
                             "next step boundary", highlight=False, markup=False)
        self.cancel(job_id)

    def discard_attempt(self, job_id: str, attempt: int) -> None:
        shutil.rmtree(self.attempt_dir(job_id, attempt), ignore_errors=True)

    def store_lost(self, reason: str) -> None:
        with self.lock:
            if self.store_error is None:
                stderr_console.print(f"vidpipe serve: {reason}; claiming no job until it is back (retrying)",
                                     highlight=False, markup=False)
            self.store_error = reason
            self._publish()

    def store_back(self, nodes: list[dict], queue_length: int) -> None:
        with self.lock:
            if self.store_error is not None:
                stderr_console.print("vidpipe serve: the store is reachable again", highlight=False, markup=False)
                self._claim_wake.set()
            self.store_error = None
            self.nodes = [{**node, "seconds_since_heartbeat": round(node.pop("seconds_since"), 1)} for node in nodes]
            self.queue_length = queue_length
            self._publish()


class Heartbeat:
    def __init__(self, engine):
        self.engine = engine
        self.fleet: FleetSettings = engine.fleet
        self.started_at = now()
        self.pending: dict[str, tuple[str, dict, int]] = {}  # job id -> (token, its end, attempt), not yet stored
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
        for job_id, (token, changes, attempt) in list(self.pending.items()):
            engine.record_end(job_id, token, changes, attempt)
            self.pending.pop(job_id, None)
        for job_id, token, progress in engine.held_jobs():
            beat = store.heartbeat(job_id, token, self.fleet.lease_s, progress)
            if not beat.held:
                engine.lease_lost(job_id)
            elif beat.cancel_requested:
                engine.cancelled_elsewhere(job_id)
        engine.store_back(nodes, store.count_queued())


def progress_of(record: JobRecord) -> dict:
    """What a node writes about a held job as it runs (each write fenced by the job's lease)."""
    return {"samples_done": record.samples_done, "steps_done": record.steps_done, "files": record.files,
            "latencies_s": record.latencies_s, "first_step_at": record.first_step_at}
