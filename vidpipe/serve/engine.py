"""The warm ranks and the queue in front of them: the parent side of `vidpipe serve`.

One thread owns the ranks: it starts them (they load the model once), hands them samples, follows their events
and, when a rank fails, fails the jobs it was running, restarts the ranks and goes on with the queue. HTTP
handlers call `submit`, `cancel` and `snapshot` from other threads; one lock guards the state, and a condition
wakes whoever follows a job's progress.

Samples are handed out lazily, a few per feed at a time (enough to keep every group or stage busy), so a queued
job stays in the parent until its turn: cancelling it touches no rank.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from vidpipe import media
from vidpipe.errors import RankFailed
from vidpipe.jobs.serve import STOP, ServeJob, ServeSample
from vidpipe.jobspec import PER_JOB, SampleSpec, model_fields
from vidpipe.runtime.events import (
    FilesWritten,
    FramesDecoded,
    PhaseStarted,
    RunFinished,
    SampleCancelled,
    SampleDone,
    StageReached,
    StepDone,
)
from vidpipe.runtime.forkserver import CONTEXT
from vidpipe.runtime.launch import RankGroup
from vidpipe.serve.store import JobRecord, JobStore, now

#: How often a running job's progress is written to the store (its state changes are written at once).
PERSIST_PROGRESS_S = 2.0


class QueueFull(Exception):
    pass


@dataclass(frozen=True)
class ServeSettings:
    source: object  # ModelSource
    model_name: str
    placement: object  # jobs.run.Placement: launch spec, dtype, plan
    params: object  # the family's parameters the ranks load with: a job's defaults (SVDParams, WanParams)
    out: Path
    max_queue: int = 100
    compile_unet: bool = False


@dataclass
class JobState:
    record: JobRecord
    samples: list[ServeSample]
    progress: dict[int, int] = field(default_factory=dict)  # uid -> steps done (a sample has started once here)
    started: dict[int, float] = field(default_factory=dict)  # uid -> wall time its first step began
    finished_uids: set[int] = field(default_factory=set)
    cancel_requested: bool = False
    persisted_at: float = 0.0


class Engine:
    def __init__(self, settings: ServeSettings, store: JobStore):
        self.settings = settings
        self.store = store
        self.plan = settings.placement.plan
        self.fields = model_fields(settings.source)  # what a job for the served model may set
        self.world_size = settings.placement.spec.world_size
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.jobs: dict[str, JobState] = {}  # jobs not finished yet (finished ones are read from the store)
        self.pending: deque[ServeSample] = deque()
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
        for record in self.store.unfinished():  # a restarted server runs what it had not finished, in order
            record.status, record.started_at, record.samples_done, record.steps_done = "queued", None, 0, 0
            record.files, record.latencies_s, record.first_step_at = [], [], None
            try:
                self._enqueue(record)
            except TypeError:  # its samples were made for a model of another family than this server's
                record.status, record.finished_at = "failed", now()
                record.error = (f"this job was made for another model than {self.settings.model_name}; the server "
                                "restarted with it: submit the job again")
            self.store.save(record)
        self._thread.start()

    def stop(self) -> None:
        """Stop the ranks at once. Unfinished jobs stay in the store as queued: a restart runs them again."""
        self._stopping.set()
        with self.lock:
            for feed in self.feeds:
                feed.put(STOP)
            for state in self.jobs.values():
                if state.record.status == "running":
                    state.record.status = "queued"
                    self.store.save(state.record)
        self._thread.join(timeout=30)
        if self._group is not None:
            self._group.stop()

    def _run(self) -> None:
        failures = 0  # in a row, before the ranks got ready again
        while not self._stopping.is_set():
            group = self._start_ranks()
            try:
                self._pump(group)
            except RankFailed as error:
                failures = 0 if len(self.ready_ranks) == self.world_size else failures + 1
                self._after_failure(str(error))
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

    def _after_failure(self, reason: str) -> None:
        """A rank failed, died or stalled: every job that was running fails with the reason; samples handed to
        the ranks but not started go back to the front of the queue for the restarted ranks."""
        with self.lock:
            self.restarts += 1
            self.last_error = reason
            self.status = "unhealthy"
            for state in list(self.jobs.values()):
                if state.record.status == "running":
                    self._finish(state, "failed", f"a rank failed while this job ran: {reason}")
            not_started = [sample for state in self.jobs.values() for sample in state.samples
                           if sample.uid in self.in_flight]
            self.pending.extendleft(reversed(not_started))
            self.in_flight.clear()
            self.feed_load = [0] * self.feed_count
            self.changed.notify_all()

    # 2. Jobs in.

    def submit(self, record: JobRecord, specs: list[SampleSpec], formats: tuple[str, ...]) -> None:
        with self.lock:
            queued = sum(1 for state in self.jobs.values() if state.record.status == "queued")
            if queued >= self.settings.max_queue:
                raise QueueFull(f"the queue is full ({queued} jobs waiting, --max-queue {self.settings.max_queue}); "
                                "try again later")
            record.request = {**record.request, "_samples": [_spec_json(spec) for spec in specs],
                              "_formats": list(formats)}
            self.store.save(record)
            self._enqueue(record)
            self.changed.notify_all()

    def _enqueue(self, record: JobRecord) -> None:
        folder = self.job_dir(record.id)
        formats = record.request["_formats"]
        params_type = type(self.settings.params)  # the served family's
        samples = []
        for spec in record.request["_samples"]:
            params = params_type(**spec["params"])
            stem = media.sample_stem(record.image_name, spec["index"], spec["seed"])
            targets = {kind: str(path) for kind, path in media.output_paths(folder, stem, formats).items()}
            input_target = str(folder / f"{record.image_name}_input.png") if spec["index"] == 0 else None
            samples.append(ServeSample(next(self.uids), record.id, spec["index"], spec["seed"], record.image_path,
                                       record.image_name, params, params.fps, targets, input_target))
        self.jobs[record.id] = JobState(record, samples)
        self.job_of_uid.update((sample.uid, record.id) for sample in samples)
        self.pending.extend(samples)

    def cancel(self, job_id: str) -> None:
        """A queued job leaves the queue; a running one stops at its samples' next step boundary."""
        with self.lock:
            state = self.jobs.get(job_id)
            if state is None or state.record.finished:
                return
            self.pending = deque(s for s in self.pending if s.job != job_id)
            running = [uid for uid in self.in_flight if self._job_of(uid) == job_id]
            if not running:
                self._finish(state, "cancelled", None)
                return
            state.cancel_requested = True
            for control in self.controls:
                control.put(("cancel", job_id))
            self.changed.notify_all()

    # 3. Samples out, events back.

    def _dispatch(self) -> None:
        while self.pending and self.status in ("ready", "busy"):
            feed = min(range(self.feed_count), key=self.feed_load.__getitem__)
            if self.feed_load[feed] >= self.feed_depth:
                return
            sample = self.pending.popleft()
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
                self.changed.notify_all()
        elif isinstance(event, PhaseStarted):
            rank_status["phase"] = event.phase
        elif isinstance(event, StepDone):
            job = self._job_of(event.sample)
            rank_status.update(phase="diffuse", job=job, sample=event.sample, step=event.step,
                               block=f"{event.block_position}/{event.steps_in_block}")
            state = self.jobs.get(job)
            if state is not None:
                if event.step == 0:  # the sample's first step began `seconds` before the rank reported it
                    state.started.setdefault(event.sample, event.wall_time - event.seconds)
                if state.record.status == "queued":  # its first sample has started on the ranks
                    state.record.status, state.record.started_at = "running", now()
                    state.record.first_step_at = state.started.get(event.sample)
                    self.store.save(state.record)
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
        state.finished_uids.add(uid)
        if files is not None:
            state.record.samples_done += 1
            state.record.files += self._relative_files(state.record.id, files)
        self._progressed(state, force=True)
        still_running = any(self._job_of(u) == state.record.id for u in self.in_flight)
        if state.cancel_requested and not still_running:
            self._finish(state, "cancelled", None)
        elif state.record.samples_done == state.record.samples_total:
            self._finish(state, "done", None)

    def _progressed(self, state: JobState, force: bool = False) -> None:
        record = state.record
        record.steps_done = sum(state.progress.values())
        if force or now() - state.persisted_at >= PERSIST_PROGRESS_S:
            state.persisted_at = now()
            self.store.save(record)
        self.changed.notify_all()

    def _finish(self, state: JobState, status: str, error: str | None) -> None:
        self.pending = deque(s for s in self.pending if s.job != state.record.id)
        state.record.status, state.record.error, state.record.finished_at = status, error, now()
        self.store.save(state.record)
        del self.jobs[state.record.id]
        for sample in state.samples:
            self.job_of_uid.pop(sample.uid, None)
        self.changed.notify_all()

    # 4. What the API shows.

    def job_dir(self, job_id: str) -> Path:
        return self.settings.out / "jobs" / job_id

    def record(self, job_id: str) -> JobRecord | None:
        with self.lock:
            state = self.jobs.get(job_id)
            return state.record if state is not None else self.store.get(job_id)

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start, None once it runs or finished."""
        with self.lock:
            queued = sorted((s.record.seq, s.record.id) for s in self.jobs.values() if s.record.status == "queued")
            ids = [job for _seq, job in queued]
            return ids.index(job_id) + 1 if job_id in ids else None

    def health(self) -> dict:
        with self.lock:
            return {
                "status": self.status,
                "ranks": self.world_size,
                "plan": self.plan.name,
                "model": self.settings.model_name,
                "device": self.settings.placement.spec.device_type,
                "queue_length": sum(1 for s in self.jobs.values() if s.record.status == "queued"),
                "running_jobs": sum(1 for s in self.jobs.values() if s.record.status == "running"),
                "samples_in_flight": len(self.in_flight),
                "restarts": self.restarts,
                "last_error": self.last_error,
                "rank_status": [dict(status, rank=rank) for rank, status in enumerate(self.rank_status)],
                "family": self.settings.source.family,
                "fields": list(self.fields),
                "defaults": self.defaults(),
            }

    def defaults(self) -> dict:
        """A job's options when it gives none (the page fills its form with them); a field whose default follows
        another (Wan's guidance_scale_2: guidance_scale) is left out."""
        p = self.settings.params
        values = {name: getattr(p, name, None) for name in self.fields if name not in (*PER_JOB, "seed")}
        return {"samples": 1, "seed": 0, **{k: v for k, v in values.items() if v is not None}, "format": "mp4"}

    def _job_of(self, uid: int) -> str | None:
        return self.job_of_uid.get(uid)

    @staticmethod
    def _sample(state: JobState, uid: int) -> ServeSample:
        return next(sample for sample in state.samples if sample.uid == uid)

    def _relative_files(self, job_id: str, files) -> list[str]:
        folder = self.job_dir(job_id)
        names = []
        for path in map(Path, files):
            if path.is_dir():  # --format png: a folder of frames; list the frames
                names += [str(p.relative_to(folder)) for p in sorted(path.iterdir())]
            else:
                names.append(str(path.relative_to(folder)))
        return names


def _spec_json(spec: SampleSpec) -> dict:
    from dataclasses import asdict

    return {"index": spec.index, "seed": spec.seed, "params": asdict(spec.params)}
