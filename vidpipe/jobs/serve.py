"""What a server's ranks do: load and split the model once, then run samples as they come, until told to stop.

Samples come from the parent through **feeds**: one queue per group that starts samples (every `dp` group; the
first `pp` stage), read by the group's leader and broadcast to its other ranks. A `pp` stage hands each sample to
the next with a small header first (what the sample is, its shape), so samples of consecutive jobs, with their
own seeds, sizes and guidance (SVD's motion, Wan's prompts), flow through the stages back to back: the pipeline
never drains between jobs. The group that finishes a sample decodes it at once (SVD's chunks split over the group's
ranks; a Wan video whole, on the group's first rank) and its leader writes the files. The denoiser stays loaded: a
server decodes beside it (`--vae-device cpu` moves the VAE off the GPU).

Cancelling: the parent sends the job's id to every rank's control queue; at each step boundary the group's
leader decides from its own view and tells its group, so the ranks of a group stop at the same step.
"""

from __future__ import annotations

import pickle
import queue as queue_module
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.distributed as dist

from vidpipe import media
from vidpipe.jobs.decode import DecodePart, DecodeTask, gather_frames, write_sample
from vidpipe.jobs.diffusion import build_layout
from vidpipe.metrics import StepRecorder, reset_peak_rss
from vidpipe.models.base import Sample
from vidpipe.models.registry import family_module
from vidpipe.models.source import ModelSource
from vidpipe.parallel.compile import compile_model
from vidpipe.parallel.layout import Layout
from vidpipe.parallel.parallelize import parallelize
from vidpipe.parallel.plan import ParallelPlan, chunk_ranges
from vidpipe.runtime.dist import DistContext
from vidpipe.runtime.events import (
    EventSink,
    FilesWritten,
    FramesDecoded,
    SampleCancelled,
    SampleDone,
    SampleStarted,
    StageReached,
)
from vidpipe.runtime.faults import limit_memory
from vidpipe.runtime.forkserver import DEFAULT_PRELOAD
from vidpipe.strategies.registry import scheduler_for
from vidpipe.strategies.schedule import steps_for_rank, switch_of

#: An idle feed sends a tick this often, so that ranks waiting in a collective never reach its timeout.
TICK_S = 30.0
TICK, STOP = "tick", "stop"
#: Header kinds of a pp hand-off.
_SAMPLE, _TICK, _STOP = 0, 1, 2
MAX_SENDS_IN_FLIGHT = 2


@dataclass(frozen=True)
class ServeSample:
    """One sample of one job, as the parent sends it: everything a rank needs, picklable."""

    uid: int  # unique over the server's life
    job: str
    index: int  # within its job
    seed: int
    image_path: str
    image_name: str
    params: object  # the family's parameters (SVDParams, WanParams), every size resolved
    fps: int
    targets: dict  # format -> path
    input_target: str | None = None
    attempt: int = 0  # the job's attempt (fleet): a cancel stops this attempt, not a later one of the same job


class SampleCancelledError(Exception):
    pass


@dataclass(frozen=True)
class ServeJob:
    source: ModelSource
    dtype: str
    plan: ParallelPlan
    params: object  # a job's defaults (the family's parameters): what the model is loaded with
    feeds: tuple  # one queue per feed group, in group order
    controls: tuple  # one queue per rank
    compile_unet: bool = False
    preload: ClassVar[tuple[str, ...]] = DEFAULT_PRELOAD

    def run(self, ctx: DistContext, events: EventSink):
        layout = build_layout(ctx, self.plan)
        # NOTE: blocks None: jobs choose their own steps, so a pp stage loads every expert any block may use.
        encoders = scheduler_for(self.plan).needs_encoder(layout)
        model = family_module(self.source.family).load_for(layout, self.source, self.dtype, self.params, encoders,
                                                           None)
        parallelize(model, layout)
        if self.compile_unet:
            compile_model(model, channels_last=ctx.device.type == "cuda")
        reset_peak_rss()  # from now on, the rank's peak memory is its jobs' (the parent reads it after an OOM)
        limit_memory(ctx.rank)  # test-only: a memory cap or a stand-in OOM killer, when the environment asks
        events.emit(StageReached(ctx.rank, stage="ready"))
        feeds_here = self.plan.sample_axis == "dp" or layout.group_index == 0
        feed = self.feeds[layout.group_index if self.plan.sample_axis == "dp" else 0] if feeds_here else None
        ServeRank(layout, model, events, feed, self.controls[ctx.rank]).serve()


class ServeRank:
    def __init__(self, layout: Layout, model, events: EventSink, feed, control):
        self.layout, self.model, self.events = layout, model, events
        self.ctx = layout.ctx
        self.feed, self.control = feed, control
        self.pipelined = layout.plan.sample_axis == "pp"
        self.stage, self.stages = layout.group_index, layout.plan.groups
        group_mesh = layout.group_mesh()
        self.group = group_mesh.get_group() if group_mesh is not None else None
        self.leader = layout.group_ranks(layout.group_index)[0]
        self.recorder = StepRecorder(self.ctx.device, events, self.ctx.rank, keep_steps=False)
        self.cancelled: set[tuple[str, int]] = set()  # (job, attempt)
        self.images: dict[str, object] = {}
        self.sends: deque = deque()

    # 1. Where the next sample comes from.

    def serve(self) -> None:
        first = not self.pipelined or self.stage == 0
        while True:
            item = self._from_feed() if first else self._from_previous_stage()
            if item in (TICK, STOP):
                self._forward(item)
                if item == STOP:
                    break
                continue
            sample, state = item
            self._run(sample, state)
        self._drain_sends()

    def _from_feed(self):
        """The leader reads the group's feed (a tick when it stays empty); the group learns it by broadcast."""
        item = None
        if self.ctx.rank == self.leader:
            try:
                item = self.feed.get(timeout=TICK_S)
            except queue_module.Empty:
                item = TICK
        if self.group is not None:
            box = [item]
            dist.broadcast_object_list(box, src=self.leader, group=self.group)
            item = box[0]
        if item in (TICK, STOP):
            return item
        self.events.emit(SampleStarted(self.ctx.rank, sample=item.uid))
        with self.recorder.encoding():
            return item, self.model.encode(self._sample(item))

    def _from_previous_stage(self):
        source = self.layout.peer(self.stage - 1)
        header = torch.empty(2, dtype=torch.int64)
        dist.recv(header, source, tag=0)
        kind, size = header.tolist()
        if kind != _SAMPLE:
            return TICK if kind == _TICK else STOP
        payload = torch.empty(size, dtype=torch.uint8)
        dist.recv(payload, source, tag=1)
        sample = pickle.loads(payload.numpy().tobytes())
        self.events.emit(SampleStarted(self.ctx.rank, sample=sample.uid))
        state = {}
        for tag, (name, spec) in enumerate(self.model.state_spec(sample.params).items(), start=2):
            state[name] = spec.empty(self.ctx.device)
            dist.recv(state[name], source, tag=tag)
        return sample, state

    def _forward(self, item, sample: ServeSample | None = None, state: dict | None = None) -> None:
        """Hand `item` (a sample with its state, a tick or stop) to the next stage, without waiting for it."""
        if not self.pipelined or self.stage == self.stages - 1:
            return
        target = self.layout.peer(self.stage + 1)
        payload = torch.frombuffer(bytearray(pickle.dumps(sample)), dtype=torch.uint8) if sample else None
        kind = {TICK: _TICK, STOP: _STOP}.get(item, _SAMPLE)
        header = torch.tensor([kind, 0 if payload is None else payload.numel()], dtype=torch.int64)
        tensors = [header] + ([payload] if payload is not None else [])
        if state is not None:
            tensors += [state[name].to(spec.device_for(self.ctx.device)).contiguous()
                        for name, spec in self.model.state_spec(sample.params).items()]
        works = [dist.isend(tensor, target, tag=tag) for tag, tensor in enumerate(tensors)]
        self.sends.append((works, tensors))  # NOTE: the tensors must live until their sends complete
        while len(self.sends) > MAX_SENDS_IN_FLIGHT:
            self._wait_send()

    def _wait_send(self) -> None:
        works, _tensors = self.sends.popleft()
        for work in works:
            work.wait()

    def _drain_sends(self) -> None:
        while self.sends:
            self._wait_send()

    # 2. One sample: this rank's block of steps, then the hand-off, or decode and files.

    def _run(self, item: ServeSample, state: dict) -> None:
        p = item.params
        block = (steps_for_rank(p.steps, self.stages, self.stage, switch_of(self.model, p.steps)) if self.pipelined
                 else range(p.steps))
        sample = self._sample(item)
        try:
            self._check_cancel(item)
            on_step = self.recorder.on_step_for(sample, block)
            state["latents"] = self.model.denoise(state, block, self._cancellable(on_step, item))
        except SampleCancelledError:
            if self.ctx.rank == self.leader:
                self.events.emit(SampleCancelled(self.ctx.rank, sample=item.uid))
            return
        if self.pipelined and self.stage < self.stages - 1:
            self._forward(None, item, state)
            return
        if self.ctx.rank == self.leader:
            self.events.emit(SampleDone(self.ctx.rank, sample=item.uid))
        self._decode_and_write(item, sample, state["latents"])

    def _cancellable(self, on_step, item: ServeSample):
        def on_step_or_stop(step: int) -> None:
            on_step(step)
            self._check_cancel(item)

        return on_step_or_stop

    def _check_cancel(self, item: ServeSample) -> None:
        """Raise at a step boundary when the job was cancelled; the leader's view decides for its group."""
        while True:
            try:
                kind, job = self.control.get_nowait()
            except queue_module.Empty:
                break
            if kind == "cancel":
                self.cancelled.add(job)
        stop = torch.tensor([int((item.job, item.attempt) in self.cancelled)])
        if self.group is not None:
            dist.broadcast(stop, src=self.leader, group=self.group)
        if stop.item():
            raise SampleCancelledError(item.job)

    def _decode_and_write(self, item: ServeSample, sample: Sample, latents: torch.Tensor) -> None:
        """The group decodes its sample: SVD's decode chunks split over its ranks, one range each; a video that
        decodes whole (Wan's causal VAE: `decode_units` (1, 1)) on the group's first rank. The leader writes."""
        p = item.params
        ranks = self.layout.group_ranks(self.layout.group_index)
        units, per_chunk = self.model.decode_units(sample)
        ranges = chunk_ranges(units, per_chunk, len(ranks))
        task = DecodeTask(0, tuple(DecodePart(rank, part) for rank, part in zip(ranks, ranges, strict=False)))
        part = next((x for x in task.parts if x.rank == self.ctx.rank), None)
        if part is None:
            return
        whole = len(task.parts) == 1
        mine = latents if whole else latents[:, part.frames.start : part.frames.stop]
        decoded = self.model.decode(mine.cpu(), p.decode_chunk_size)
        self.events.emit(FramesDecoded(self.ctx.rank, sample=item.uid, frames=len(decoded), total_frames=p.frames))
        frames = decoded if whole else gather_frames(self.ctx, task, decoded, (p.height, p.width, 3))
        if self.ctx.rank != task.writer:
            return
        for path in list(item.targets.values()) + ([item.input_target] if item.input_target else []):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        files = write_sample(frames, latents.cpu(), item.targets, item.fps)
        if item.input_target:
            media.write_png(Path(item.input_target), self.model.input_image(sample))
            files.append(item.input_target)
        self.events.emit(FilesWritten(self.ctx.rank, sample=item.uid, files=tuple(files)))

    def _sample(self, item: ServeSample) -> Sample:
        if item.image_path not in self.images:
            if len(self.images) > 16:  # a long-lived server sees many images; keep the recent ones
                self.images.pop(next(iter(self.images)))
            self.images[item.image_path] = media.load_image(Path(item.image_path))
        return Sample(item.uid, item.seed, self.images[item.image_path], item.image_name, item.params)
