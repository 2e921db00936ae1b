"""Phase 2 on one rank: the UNet is gone; final latents are spread over the ranks, decoded in fp32 chunk by
chunk, and each sample's files are written (atomically) as soon as its frames exist."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import torch

from vidpipe import media
from vidpipe.models.base import Sample, TensorSpec
from vidpipe.runtime.dist import DistContext
from vidpipe.runtime.events import EventSink, FilesWritten, FramesDecoded
from vidpipe.strategies.handoff import recv_latent, send_latent


def decoder_of(position: int, world_size: int) -> int:
    """Decode work goes round robin, whoever holds the latents after phase 1."""
    return position % world_size


def redistribute(
    ctx: DistContext, strategy: ModuleType, samples: list[Sample], finals: dict, spec: TensorSpec
) -> dict[int, torch.Tensor]:
    """Move each sample's final latents from the rank that holds them to the rank that decodes them.

    Every rank walks the samples in the same order, so each blocking send meets its receive; a rank only ever
    waits on the one rank that owns the latents it needs, so there is no cycle to deadlock on.
    """
    mine: dict[int, torch.Tensor] = {}
    for position, sample in enumerate(samples):
        owner = strategy.owner_of(position, ctx.world_size)
        decoder = decoder_of(position, ctx.world_size)
        if ctx.rank == owner == decoder:
            mine[sample.index] = finals[sample.index]
        elif ctx.rank == owner:
            send_latent(finals[sample.index].to(ctx.device, spec.dtype), decoder)
        elif ctx.rank == decoder:
            mine[sample.index] = recv_latent(spec, owner, ctx.device).to("cpu")
    return mine


def write_sample(
    frames, latents: torch.Tensor, targets: dict[str, str], fps: int
) -> list[str]:
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


def decode_and_write(
    ctx: DistContext,
    model,
    samples: list[Sample],
    mine: dict[int, torch.Tensor],
    targets: dict[int, dict[str, str]],
    input_targets: dict[int, str],
    fps: int,
    events: EventSink,
) -> list[dict]:
    """Decode this rank's samples in order; returns one row per sample (files, decode seconds)."""
    rows = []
    for sample in samples:
        if sample.index not in mine:
            continue
        started = time.perf_counter()
        latents = mine[sample.index]
        frames = model.decode(latents)
        ctx.synchronize()
        decode_s = time.perf_counter() - started
        events.emit(FramesDecoded(ctx.rank, sample=sample.index, frames=len(frames), total_frames=len(frames)))
        files = write_sample(frames, latents, targets[sample.index], fps)
        if sample.index in input_targets:
            media.write_png(Path(input_targets[sample.index]), model.input_image(sample))
            files.append(input_targets[sample.index])
        events.emit(FilesWritten(ctx.rank, sample=sample.index, files=tuple(files)))
        rows.append({"index": sample.index, "files": files, "decode_s": decode_s, "rank": ctx.rank})
    return rows
