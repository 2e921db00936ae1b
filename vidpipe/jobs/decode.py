"""Phase 2 on one rank: the UNet is gone; final latents are spread over the ranks, decoded in fp32 chunk by
chunk, and each sample's files are written (atomically) as soon as its frames exist.

With at least as many samples as ranks, each sample is decoded whole on one rank (round robin). With fewer, each
sample's `--decode-chunk-size` chunks are split over several ranks: the pipeline decodes every chunk on its own
(the temporal decoder sees that chunk's frames only), so a rank decoding chunks 2-3 computes exactly what one
rank decoding all chunks would; the frames are then gathered to the sample's writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from vidpipe import media
from vidpipe.models.base import Sample, TensorSpec
from vidpipe.parallel.plan import chunk_ranges
from vidpipe.runtime.dist import DistContext
from vidpipe.runtime.events import EventSink, FilesWritten, FramesDecoded
from vidpipe.strategies.handoff import recv_latent, send_latent


@dataclass(frozen=True)
class DecodePart:
    """Frames `frames` of one sample, decoded by `rank`."""

    rank: int
    frames: range


@dataclass(frozen=True)
class DecodeTask:
    position: int
    parts: tuple[DecodePart, ...]  # the first part (frames from 0) is decoded by the rank that writes the files

    @property
    def writer(self) -> int:
        return self.parts[0].rank


def plan_decode(sizes: list[tuple[int, int]], world_size: int) -> list[DecodeTask]:
    """Which of ranks 0..world_size-1 decodes which frames of each sample, given each sample's (frames, decode
    chunk size); every rank computes the same plan."""
    tasks = []
    num_samples = len(sizes)
    for position, (frames, chunk) in enumerate(sizes):
        if num_samples >= world_size:
            ranks = [position % world_size]
        else:  # fewer samples than ranks: sample p gets ranks p, p + N, p + 2N, ...
            ranks = list(range(position, world_size, num_samples))
        ranges = chunk_ranges(frames, chunk, len(ranks))
        tasks.append(DecodeTask(position, tuple(DecodePart(r, f) for r, f in zip(ranks, ranges, strict=False))))
    return tasks


def redistribute(
    ctx: DistContext,
    samples: list[Sample],
    tasks: list[DecodeTask],
    finals: dict,
    owners: Callable[[int], list[int]],
    specs: list[TensorSpec],
) -> dict[tuple[int, int], torch.Tensor]:
    """Give each decoding rank the latents it needs, from a rank that holds them (`owners(position)`): the writer
    gets the whole sample (it saves `--save-latents`), the other decoders only their frames.

    `specs[position]` is that sample's latents. Returns {(sample index, first frame of the part): latents
    [1, frames, C, h, w] on CPU} for this rank's parts.
    Every rank walks the same list in the same order, so each blocking send meets its receive: no cycle forms.
    """
    mine: dict[tuple[int, int], torch.Tensor] = {}
    for task in tasks:
        sample = samples[task.position]
        holders = owners(task.position)
        spec = specs[task.position]
        for number, part in enumerate(task.parts):
            source = part.rank if part.rank in holders else holders[number % len(holders)]
            needed = range(spec.shape[1]) if number == 0 else part.frames
            key = (sample.index, part.frames.start)
            if ctx.rank == part.rank == source:
                mine[key] = finals[sample.index][:, needed.start : needed.stop]
            elif ctx.rank == source:
                send_latent(finals[sample.index][:, needed.start : needed.stop].to(ctx.device, spec.dtype),
                            part.rank)
            elif ctx.rank == part.rank:
                shape = (spec.shape[0], len(needed), *spec.shape[2:])
                mine[key] = recv_latent(TensorSpec(shape, spec.dtype), source, ctx.device).to("cpu")
    return mine


def write_sample(frames, latents: torch.Tensor | None, targets: dict[str, str], fps: int) -> list[str]:
    """Write every requested format of one sample; returns the paths written."""
    writers = {
        "mp4": lambda path: media.write_mp4(path, frames, fps),
        "gif": lambda path: media.write_gif(path, frames, fps),
        "png": lambda path: media.write_png_frames(path, frames),
        "latents": lambda path: media.write_latents(path, latents[0].float()),  # [frames, 4, h, w]
    }
    for kind, path in targets.items():
        writers[kind](Path(path))
    return list(targets.values())


def gather_frames(ctx: DistContext, task: DecodeTask, decoded: np.ndarray | None, frame_shape) -> np.ndarray | None:
    """The writer receives every other part's uint8 frames, in order; the other decoders send theirs."""
    if ctx.rank != task.writer:
        if decoded is not None:
            dist.send(torch.from_numpy(np.ascontiguousarray(decoded)).to(ctx.device), task.writer)
        return None
    parts = [decoded]
    for part in task.parts[1:]:
        buffer = torch.empty((len(part.frames), *frame_shape), dtype=torch.uint8, device=ctx.device)
        dist.recv(buffer, part.rank)
        parts.append(buffer.cpu().numpy())
    return np.concatenate(parts)


def decode_and_write(
    ctx: DistContext,
    model,
    samples: list[Sample],
    tasks: list[DecodeTask],
    mine: dict[tuple[int, int], torch.Tensor],
    targets: dict[int, dict[str, str]],
    input_targets: dict[int, str],
    events: EventSink,
    manifest: Path | None = None,
    jobs: dict | None = None,
) -> list[dict]:
    """Decode this rank's parts, sample by sample; writers write (and append to `manifest` when given: under
    torchrun no parent sees every rank's events). Returns one row per sample written here."""
    rows = []
    for task in tasks:
        sample = samples[task.position]
        part = next((p for p in task.parts if p.rank == ctx.rank), None)
        if part is None:
            continue
        params = model.params_of(sample)
        frame_shape = (params.height, params.width, 3)
        started = time.perf_counter()
        latents = mine[(sample.index, part.frames.start)]
        # The writer holds every frame, and decodes its own (a video decoded whole: all of its latents).
        whole = len(task.parts) == 1
        decoded = model.decode(latents if whole else latents[:, : len(part.frames)], params.decode_chunk_size)
        ctx.synchronize()
        decode_s = time.perf_counter() - started
        total = len(decoded) if whole else task.parts[-1].frames.stop
        events.emit(FramesDecoded(ctx.rank, sample=sample.index, frames=len(decoded), total_frames=total))
        frames = gather_frames(ctx, task, decoded, frame_shape) if len(task.parts) > 1 else decoded
        if ctx.rank != task.writer:
            continue
        files = write_sample(frames, latents, targets[sample.index], params.fps)
        if sample.index in input_targets:
            media.write_png(Path(input_targets[sample.index]), model.input_image(sample))
            files.append(input_targets[sample.index])
        events.emit(FilesWritten(ctx.rank, sample=sample.index, files=tuple(files)))
        if manifest is not None:
            media.append_manifest(manifest, sample.index, files, (jobs or {}).get(sample.index))
        rows.append({"index": sample.index, "files": files, "decode_s": decode_s, "rank": ctx.rank,
                     "decoded_on_ranks": [p.rank for p in task.parts]})
    return rows
