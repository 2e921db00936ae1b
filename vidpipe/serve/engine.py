"""The warm ranks and the queue in front of them: the parent side of `vidpipe serve`.

One thread owns the ranks: it starts them (they load the model once), hands them samples, follows their events
and, when a rank fails, fails the jobs it was running, restarts the ranks and goes on with the queue. HTTP
handlers call `submit`, `cancel` and `record` from other threads; one lock guards the state, and a condition
wakes whoever follows a job's progress.

The queue lives in the store (`store/`): SQLite for one node, Postgres for a fleet whose nodes share it. A job is
committed there when submitted; a node claims one (with a lease, `lease.py` renews it) when a group or stage of its
ranks has room, so a waiting job stays claimable by whichever node frees up first. A claimed job's samples are
built and handed out lazily, a few per feed at a time, so a job of any admitted size costs the same to take in.
Its files go to `jobs/<id>/attempt-<n>/`; the fenced final write publishes one attempt's set.

When a rank runs out of memory (`memory.py` tells), the job it was running fails as "out of memory" and is not run
again; the other jobs' samples in flight go back to the queue and run on the restarted ranks.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vidpipe import media
from vidpipe.errors import RankFailed, UsageError
from vidpipe.jobs.serve import STOP, ServeJob, ServeSample
from vidpipe.jobspec import PER_JOB, CheckedJob, check_job, model_fields
from vidpipe.report import stderr_console
from vidpipe.runtime.events import (
    FilesWritten,
    FramesDecoded,
    PhaseStarted,
    RunFinished,
    SampleCancelled,
    SampleDone,
    SampleStarted,
    StageReached,
    StepDone,
)
from vidpipe.runtime.forkserver import CONTEXT
from vidpipe.runtime.launch import RankGroup
from vidpipe.serve.lease import FleetSettings, Heartbeat, LeaseHolder, progress_of
from vidpipe.serve.memory import MemoryWatch
from vidpipe.serve.store import JobRecord, JobStore, StoreUnavailable, now

#: How often an idle node looks for a job another node queued (a job submitted here wakes it at once).
CLAIM_POLL_S = 0.5


class QueueFull(Exception):
    """The queue (or a client's share of it) is full: 429, try again after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int = 10):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class ServeSettings:
    source: object  # ModelSource
    model_name: str
    placement: object  # jobs.run.Placement: launch spec, dtype, plan
    params: object  # the family's parameters the ranks load with: a job's defaults (SVDParams, WanParams)
    out: Path
    base: object = None  # GenerateConfig: what a job starts from (`jobspec.job_base`)
    limits: object = None  # Limits: the largest job taken
    max_queue: int = 100
    max_queued_per_client: int | None = None
    compile_unet: bool = False
    fleet: FleetSettings = FleetSettings("local", "")


@dataclass
class JobState:
    """A job this node holds (claimed from the store, with its lease's token)."""

    record: JobRecord
    token: str
    specs: Iterator  # its samples not handed out yet, built one at a time (`CheckedJob.samples`)
    formats: tuple
    samples: dict[int, ServeSample] = field(default_factory=dict)  # uid -> handed out, not finished
    progress: dict[int, int] = field(default_factory=dict)  # uid -> steps done (a sample has started once here)
    started: dict[int, float] = field(default_factory=dict)  # uid -> wall time its first step began
    cancel_requested: bool = False
    lost: bool = False  # another node holds it now: stop, write nothing, keep no files


class Engine(LeaseHolder):
    def __init__(self, settings: ServeSettings, store: JobStore):
        self.settings = settings
        self.store = store
        self.plan = settings.placement.plan
        self.fields = model_fields(settings.source)  # what a job for the served model may set
        self.world_size = settings.placement.spec.world_size
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.fleet = settings.fleet
        self.jobs: dict[str, JobState] = {}  # the jobs this node holds (every other is read from the store)
        self.queue: deque[str] = deque()  # held jobs with samples not handed out yet, in order
        self.queue_length = 0  # the store's queue, as last read
        self.nodes: list[dict] = []  # the fleet, as the last heartbeat read it
        self.store_error: str | None = None  # why the store cannot be reached now
        self._claim_wake = threading.Event()
        self._next_claim_at = 0.0
        self.heartbeat = Heartbeat(self)
        self.recent_run_s: deque[float] = deque(maxlen=8)  # the last finished jobs' run times (Retry-After)
        self.retry: deque[ServeSample] = deque()  # samples to hand out again first (their ranks failed)
        self.in_flight: dict[int, int] = {}  # uid -> feed
        self.feed_load = [0] * self.feed_count
        self.feeds: list = []
        self.controls: list = []
        self.status = "loading"
        self.ready_ranks: set[int] = set()
        self.rank_status = [{"phase": "starting"} for _ in range(self.world_size)]
        self.restarts = 0
        self.last_error: str | None = None
        self.uids = itertools.count()
        self.job_of_uid: dict[int, str] = {}
        self._stopping = threading.Event()
        self._group: RankGroup | None = None
        self._thread = threading.Thread(target=self._run, name="vidpipe-engine", daemon=True)
        placement = settings.placement
        self.memory = MemoryWatch(settings.source, self.plan, _dtype_bytes(placement.dtype),
                                  placement.spec.device_type, self.world_size)
        self.limits = settings.limits.for_model(settings.source) if settings.limits else None
        self._health: dict = {}  # published under the lock, read without it: health never waits for the engine
        self._publish()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def feed_count(self) -> int:
        return self.plan.groups if self.plan.sample_axis == "dp" else 1

    @property
    def feed_depth(self) -> int:
        """Samples handed to one feed before it finishes one: a dp group runs one and holds the next; a pipeline
        holds one per stage, and one more, so that stage 0 never waits."""
        return 2 if self.plan.sample_axis == "dp" else self.plan.groups + 1

    # 1. Lifetime.

    def start(self) -> None:
        self.memory.measure_budget()  # before the ranks load: what they have to spend
        self.memory.watch()
        released = self.store.release_node(self.fleet.node)  # this node was killed before: its jobs run again
        if released:
            stderr_console.print(f"vidpipe serve: {len(released)} job(s) this node ({self.fleet.node}) was running "
                                 "when it stopped are queued again", highlight=False, markup=False)
        self.queue_length = self.store.count_queued()
        self.store.listen(self._notified)  # other nodes' submissions and cancels, at once (polling backs it up)
        self.heartbeat.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop the ranks at once. The jobs this node held go back to the queue (the attempt is not counted): this
        node's next start, or another node, runs them."""
        self._stopping.set()
        self.memory.stop()
        with self.lock:
            for feed in self.feeds:
                feed.put(STOP)
            held = [(state.record.id, state.token) for state in self.jobs.values() if not state.lost]
        self._thread.join(timeout=30)
        if self._group is not None:
            self._group.stop()
        self.heartbeat.stop()
        try:
            for job_id, token in held:
                self.store.release(job_id, token)
            self.heartbeat.beat()  # the fleet sees this node stopped, and any end still pending is written
        except StoreUnavailable as error:
            stderr_console.print(f"vidpipe serve: {error}; the jobs this node held run again once their leases "
                                 "run out", highlight=False, markup=False)

    def _run(self) -> None:
        failures = 0  # in a row, before the ranks got ready again
        while not self._stopping.is_set():
            group = self._start_ranks()
            try:
                self._pump(group)
            except RankFailed as error:
                failures = 0 if len(self.ready_ranks) == self.world_size else failures + 1
                self._after_failure(error)
                # NOTE: ranks that cannot even load (a broken model, no memory) are not restarted in a tight loop.
                self._stopping.wait(min(30.0, 2.0 ** failures - 1))
            finally:
                group.stop()

    def _start_ranks(self) -> RankGroup:
        s = self.settings
        with self.lock:
            self.feeds = [CONTEXT.Queue() for _ in range(self.feed_count)]
            self.controls = [CONTEXT.Queue() for _ in range(self.world_size)]
            self.ready_ranks.clear()
            self.rank_status = [{"phase": "starting"} for _ in range(self.world_size)]
            if self.status != "unhealthy":
                self.status = "loading"
            self._publish()
        job = ServeJob(s.source, s.placement.dtype, self.plan, s.params, tuple(self.feeds), tuple(self.controls),
                       s.compile_unet)
        group = RankGroup(job, s.placement.spec)
        self._group = group
        group.start()
        return group

    def _pump(self, group: RankGroup) -> None:
        while not self._stopping.is_set():
            event = group.poll(timeout=0.1)
            with self.lock:
                if event is not None:
                    if isinstance(event, RunFinished):
                        return
                    self._on_event(event)
                self._dispatch()
                group.watchdog.set_busy(bool(self.in_flight) or self.status == "loading", time.monotonic())
                self._publish()

    def _after_failure(self, error: RankFailed) -> None:
        """A rank failed, died or stalled. The job it was running (`SampleStarted` says which) fails with the reason
        (out of memory, when `memory.py` tells so) and is not run again: rerunning it would only fail the same way.
        Every other job's samples in flight go back to the front of the queue, from their first step, for the
        restarted ranks. When no job can be blamed (a stall, a death before any sample), every job with samples on
        the ranks fails: rerunning them could loop."""
        reason = str(error)
        oom = self.memory.out_of_memory(error)
        with self.lock:
            self.restarts += 1
            self.last_error = f"out of memory: {reason}" if oom else reason
            self.status = "unhealthy"
            culprit = self.rank_status[error.rank].get("job") if error.rank is not None else None
            if oom:
                why = f"out of memory: {reason} (the job is not run again; try fewer frames or a smaller size)"
            else:
                why = f"a rank failed while this job ran: {reason} (the job is not run again)"
            for state in list(self.jobs.values()):
                on_ranks = any(uid in self.in_flight for uid in state.samples) or bool(state.progress)
                if state.record.id == culprit or (culprit is None and on_ranks):
                    self._finish(state, "failed", why)
            again = [sample for state in self.jobs.values() for uid, sample in sorted(state.samples.items())
                     if uid in self.in_flight]
            for sample in again:  # from their first step, on the restarted ranks
                state = self.jobs[sample.job]
                state.progress.pop(sample.uid, None)
                state.started.pop(sample.uid, None)
                state.record.steps_done = sum(state.progress.values())
            self.retry.extendleft(reversed(again))
            self.in_flight.clear()
            self.feed_load = [0] * self.feed_count
            self.memory.restarted()
            self._publish()
            self.changed.notify_all()

    # 2. Jobs in.

    def check(self, request: dict) -> CheckedJob:
        """A job's options (and sweep) checked for this server: fields, sizes, plan, limits; then its largest
        sample against the ranks' memory. UsageError (422) with the first problem."""
        s = self.settings
        options = {k: v for k, v in request.items() if k != "sweep" and not k.startswith("_")}
        job = check_job(options, request.get("sweep"), s.source, self.plan, s.base, s.limits)
        self.memory.check(job.largest, _guided(job.largest))
        return job

    def submit(self, record: JobRecord, job: CheckedJob, idempotency_key: str | None = None) -> JobRecord:
        """Commit a checked job to the store's queue (O(1) in its size: its samples are built when a node claims
        it). With `idempotency_key`, a client's retried POST returns the job its first one made."""
        s = self.settings
        queued = self.store.count_queued()
        if queued >= s.max_queue:
            raise QueueFull(f"the queue is full ({queued} jobs waiting, --max-queue {s.max_queue}); try again later",
                            self._retry_after_s())
        mine = self.store.count_queued(record.client) if s.max_queued_per_client is not None else 0
        if s.max_queued_per_client is not None and mine >= s.max_queued_per_client:
            raise QueueFull(f"you have {mine} jobs waiting, the most one client may "
                            f"(--max-queued-per-client {s.max_queued_per_client}); try again when one has started",
                            self._retry_after_s())
        record.request = {**record.request, "_formats": list(job.formats)}
        stored = self.store.insert(record, idempotency_key)
        with self.lock:
            self.queue_length += stored is record
            self._claim_wake.set()
            self._publish()
            self.changed.notify_all()
        return stored

    def _claim(self) -> bool:
        """Take the next job from the store's queue (or one whose node stopped answering); False when there is none
        (or the store is away). Called when a group or stage of the ranks has room."""
        if self.store_error or self.stopping:
            return False
        if not self._claim_wake.is_set() and time.monotonic() < self._next_claim_at:
            return False
        self._claim_wake.clear()
        try:
            claim = self.store.claim(self.fleet.node, self.fleet.lease_s, self.fleet.max_attempts, now(),
                                     exclude=tuple(self.jobs))
        except StoreUnavailable as error:
            self.store_lost(str(error))
            return False
        if claim is None:
            self._next_claim_at = time.monotonic() + CLAIM_POLL_S
            return False
        record = claim.record
        self.queue_length = max(0, self.queue_length - 1)
        try:
            job = self.check(record.request)
        except UsageError as error:  # made for another model, or past this node's limits
            self._write_end(record.id, claim.token, {
                "status": "failed", "finished_at": now(),
                "error": f"node {self.fleet.node} serves {self.settings.model_name}, which cannot run this job "
                         f"({error}): submit it again"}, record.attempts)
            return True
        if record.attempts > 1:
            stderr_console.print(f"vidpipe serve: job {record.id} taken over (attempt {record.attempts}; its last "
                                 "node stopped answering)", highlight=False, markup=False)
        self.jobs[record.id] = JobState(record, claim.token, job.samples(), job.formats)
        self.queue.append(record.id)
        return True

    def _next_sample(self, may_claim: bool) -> ServeSample | None:
        """The next sample to hand out: one whose ranks failed, else the next of the first held job with any left,
        else (when `may_claim`) the first of a job claimed from the store."""
        if self.retry:
            return self.retry.popleft()
        while self.queue or (may_claim and self._claim()):
            state = self.jobs[self.queue[0]]
            spec = next(state.specs, None)
            if spec is None:
                self.queue.popleft()
                continue
            record, folder = state.record, self.files_dir(state.record)
            stem = media.sample_stem(record.image_name, spec.index, spec.seed)
            targets = {kind: str(path) for kind, path in media.output_paths(folder, stem, state.formats).items()}
            input_target = str(folder / f"{record.image_name}_input.png") if spec.index == 0 else None
            sample = ServeSample(next(self.uids), record.id, spec.index, spec.seed, record.image_path,
                                 record.image_name, spec.params, spec.params.fps, targets, input_target,
                                 record.attempts)
            state.samples[sample.uid] = sample
            self.job_of_uid[sample.uid] = record.id
            return sample
        return None

    def _retry_after_s(self) -> int:
        """Seconds a refused client should wait: about the time the last jobs took to run (a place frees up when
        one starts), at least 1 and at most 10 minutes; 10 before any job has finished."""
        if not self.recent_run_s:
            return 10
        return max(1, min(600, round(sum(self.recent_run_s) / len(self.recent_run_s))))

    def cancel(self, job_id: str) -> None:
        """A queued job leaves the queue; a running one stops at its samples' next step boundary (a job another node
        runs is flagged in the store: that node stops it at its next heartbeat)."""
        with self.lock:
            state = self.jobs.get(job_id)
        if state is None:  # NOTE: outside the lock: the store's round trip never holds up the ranks' events
            self.store.request_cancel(job_id, now())
            return
        with self.lock:
            if state.record.finished or self.jobs.get(job_id) is not state:
                return
            self._unqueue(job_id)
            running = [uid for uid in self.in_flight if self._job_of(uid) == job_id]
            if not running:
                self._finish(state, "cancelled", None)
                self._publish()
                return
            state.cancel_requested = True
            for control in self.controls:
                control.put(("cancel", (job_id, state.record.attempts)))
            self._publish()
            self.changed.notify_all()

    def _unqueue(self, job_id: str) -> None:
        """No more of this job's samples are handed out."""
        if job_id in self.queue:
            self.queue.remove(job_id)
        if any(sample.job == job_id for sample in self.retry):
            self.retry = deque(sample for sample in self.retry if sample.job != job_id)

    # 3. Samples out, events back.

    def _dispatch(self) -> None:
        while self.status in ("ready", "busy"):
            feed = min(range(self.feed_count), key=self.feed_load.__getitem__)
            if self.feed_load[feed] >= self.feed_depth:
                return
            # NOTE: a new job is claimed only when a group is idle (or a pipeline's first stage about to be): a node
            # never holds a job it cannot start soon, so another node with room takes it.
            sample = self._next_sample(may_claim=self.feed_load[feed] < self.feed_depth - 1)
            if sample is None:
                return
            self.in_flight[sample.uid] = feed
            self.feed_load[feed] += 1
            self.feeds[feed].put(sample)
            self.status = "busy"
            self.changed.notify_all()

    def _on_event(self, event) -> None:
        rank_status = self.rank_status[event.rank] if 0 <= event.rank < self.world_size else {}
        if isinstance(event, StageReached) and event.stage == "ready":
            self.ready_ranks.add(event.rank)
            rank_status.update(phase="ready", job=None, sample=None, step=None, block=None)
            if len(self.ready_ranks) == self.world_size:
                self.status = "busy" if self.in_flight else "ready"
                self.memory.ranks_ready(self._pids(self._group))
                self.changed.notify_all()
        elif isinstance(event, PhaseStarted):
            rank_status["phase"] = event.phase
        elif isinstance(event, SampleStarted):
            rank_status.update(phase="encode", job=self._job_of(event.sample), sample=event.sample, step=None,
                               block=None)
        elif isinstance(event, StepDone):
            job = self._job_of(event.sample)
            rank_status.update(phase="diffuse", job=job, sample=event.sample, step=event.step,
                               block=f"{event.block_position}/{event.steps_in_block}")
            state = self.jobs.get(job)
            if state is not None:
                if event.step == 0:  # the sample's first step began `seconds` before the rank reported it
                    state.started.setdefault(event.sample, event.wall_time - event.seconds)
                if state.record.first_step_at is None:
                    state.record.first_step_at = state.started.get(event.sample)
                state.progress[event.sample] = max(state.progress.get(event.sample, 0), event.step + 1)
                self._progressed(state)
        elif isinstance(event, SampleDone):
            state = self.jobs.get(self._job_of(event.sample))
            if state is not None:
                state.progress[event.sample] = self._sample(state, event.sample).params.steps
                if event.sample in state.started:  # latency as generate defines it: first step to last step
                    state.record.latencies_s.append(round(event.wall_time - state.started[event.sample], 4))
                self._progressed(state)
        elif isinstance(event, FramesDecoded):
            rank_status.update(phase="decode", job=self._job_of(event.sample), sample=event.sample)
        elif isinstance(event, FilesWritten):
            self._sample_finished(event.sample, files=event.files)
            rank_status.update(phase="ready", job=None, sample=None, step=None, block=None)
        elif isinstance(event, SampleCancelled):
            self._sample_finished(event.sample, files=None)

    def _sample_finished(self, uid: int, files) -> None:
        feed = self.in_flight.pop(uid, None)
        if feed is not None:
            self.feed_load[feed] -= 1
        if not self.in_flight:
            self.status = "ready" if self.status == "busy" else self.status
            for rank_status in self.rank_status:
                rank_status.update(phase="ready", job=None, sample=None, step=None, block=None)
        state = self.jobs.get(self._job_of(uid))
        if state is None:
            return
        state.samples.pop(uid, None)
        self.job_of_uid.pop(uid, None)
        if files is not None:
            state.record.samples_done += 1
            state.record.files += self._relative_files(state.record.id, files)
        self._progressed(state)
        still_running = any(self._job_of(u) == state.record.id for u in self.in_flight)
        if state.cancel_requested and not still_running:
            self._finish(state, "cancelled", None)
        elif state.record.samples_done == state.record.samples_total:
            self._finish(state, "done", None)

    def _progressed(self, state: JobState) -> None:
        """Progress is kept here and written to the store by the heartbeat (`lease.py`); the end at once."""
        state.record.steps_done = sum(state.progress.values())
        self.changed.notify_all()

    def _finish(self, state: JobState, status: str, error: str | None) -> None:
        record = state.record
        self._unqueue(record.id)
        del self.jobs[record.id]
        for uid in state.samples:
            self.job_of_uid.pop(uid, None)
        self.changed.notify_all()
        if state.lost:  # another node runs it now: nothing of this attempt is kept
            self.discard_attempt(record.id, record.attempts)
            return
        record.status, record.error, record.finished_at = status, error, now()
        if status == "done" and record.started_at:
            self.recent_run_s.append(record.finished_at - record.started_at)
        self._write_end(record.id, state.token, {
            "status": status, "error": error, "finished_at": record.finished_at, **progress_of(record)},
            record.attempts)

    # 4. What the API shows.

    def job_dir(self, job_id: str) -> Path:
        return self.settings.out / "jobs" / job_id

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
        return self.job_dir(job_id) / f"attempt-{attempt}"

    def files_dir(self, record: JobRecord) -> Path:
        """Where the job's last attempt's files are (a job that never ran, or ran before attempts: its folder)."""
        return self.attempt_dir(record.id, record.attempts) if record.attempts else self.job_dir(record.id)

    def held(self, job_id: str) -> JobRecord | None:
        """A job this node runs, from memory; None for any other."""
        with self.lock:
            state = self.jobs.get(job_id)
            return state.record if state is not None and not state.lost else None

    def record(self, job_id: str) -> JobRecord | None:
        """A job as this node knows it best: held here, from memory (fresher than the store); else the store's row."""
        return self.held(job_id) or self.store.get(job_id)

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start, None once it runs or finished."""
        return self.store.queue_position(job_id)

    def queue_positions(self) -> dict[str, int]:
        return {job: position for position, job in enumerate(self.store.queued_ids(), start=1)}

    def health(self) -> dict:
        """The server's state as last published: read without the lock, so it answers at once under any load."""
        return self._health

    def _publish(self) -> None:
        with self.lock:
            self._health = {
                "status": "unhealthy" if self.store_error else self.status,
                "ranks": self.world_size,
                "plan": self.plan.name,
                "model": self.settings.model_name,
                "device": self.settings.placement.spec.device_type,
                "queue_length": self.queue_length,
                "running_jobs": sum(1 for s in self.jobs.values() if not s.lost),
                "samples_in_flight": len(self.in_flight),
                "restarts": self.restarts,
                "last_error": f"store unreachable: {self.store_error}" if self.store_error else self.last_error,
                "node": self.fleet.node,
                "store": self.store.name,
                "nodes": self.nodes,
                "rank_status": [dict(status, rank=rank) for rank, status in enumerate(self.rank_status)],
                "family": self.settings.source.family,
                "fields": list(self.fields),
                "defaults": self.defaults(),
                "limits": self._limits,
            }

    def defaults(self) -> dict:
        """A job's options when it gives none (the page fills its form with them); a field whose default follows
        another (Wan's guidance_scale_2: guidance_scale) is left out."""
        p = self.settings.params
        values = {name: getattr(p, name, None) for name in self.fields if name not in (*PER_JOB, "seed")}
        return {"samples": 1, "seed": 0, **{k: v for k, v in values.items() if v is not None}, "format": "mp4"}

    @property
    def _limits(self) -> dict:
        limits = self.limits
        return {} if limits is None else {
            "samples_per_job": limits.samples_per_job, "frames": limits.frames, "pixels": limits.pixels,
            "steps": limits.steps, "queued_per_client": self.settings.max_queued_per_client,
            "memory_per_rank_gb": round(self.memory.budget_gb, 2) if self.memory.budget_gb else None,
        }

    @staticmethod
    def _pids(group: RankGroup | None) -> dict[int, int]:
        workers = group.workers if group is not None else []
        return {rank: worker.pid for rank, worker in enumerate(workers) if getattr(worker, "pid", None)}

    def _job_of(self, uid: int) -> str | None:
        return self.job_of_uid.get(uid)

    @staticmethod
    def _sample(state: JobState, uid: int) -> ServeSample:
        return state.samples[uid]

    def _relative_files(self, job_id: str, files) -> list[str]:
        folder = self.files_dir(self.jobs[job_id].record)
        names = []
        for path in map(Path, files):
            if path.is_dir():  # --format png: a folder of frames; list the frames
                names += [str(p.relative_to(folder)) for p in sorted(path.iterdir())]
            else:
                names.append(str(path.relative_to(folder)))
        return names


def _dtype_bytes(dtype: str) -> int:
    return 2 if dtype in ("fp16", "bf16") else 4


def _guided(params) -> bool:
    """Whether a sample runs the guidance batch (two denoiser rows a step): SVD's max guidance, Wan's scale."""
    scale = getattr(params, "max_guidance", None)
    return (scale if scale is not None else params.guidance_scale) > 1
