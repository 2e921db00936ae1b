"""Phase 1 on one rank, the same for every command: warm up, then diffuse the samples under the clock."""

from __future__ import annotations

import time
from itertools import cycle, islice
from types import ModuleType

import torch.distributed as dist

from vidpipe.metrics import RankRecord, StepRecorder, param_bytes, startup_seconds
from vidpipe.models.base import DiffusionModel, Sample
from vidpipe.runtime.dist import DistContext
from vidpipe.runtime.events import EventSink, PhaseStarted


def load_svd_for(strategy: ModuleType, ctx: DistContext, source, dtype: str, params):
    """The SVD model as `strategy` needs it on this rank: image encoder only where it encodes, the UNet left on
    the CPU where the strategy moves it to the device itself (fsdp, shard by shard)."""
    from vidpipe.models.svd import SVDModel
    from vidpipe.runtime.devices import DTYPES

    return SVDModel.load(source, ctx.device, DTYPES[dtype], params,
                         encoders=strategy.needs_encoder(ctx.rank, ctx.world_size),
                         stage_unet_on_cpu=strategy.STAGE_DENOISER_ON_CPU)


def warmup_samples(samples: list[Sample], count: int) -> list[Sample]:
    """Copies of the first samples with negative indices, so progress and records never mix them up."""
    return [
        Sample(-1 - k, s.seed, s.image, s.image_name) for k, s in enumerate(islice(cycle(samples), count))
    ]


def run_diffusion(
    ctx: DistContext,
    model: DiffusionModel,
    strategy: ModuleType,
    samples: list[Sample],
    warmup: int,
    events: EventSink,
) -> tuple[dict, RankRecord]:
    """Returns this rank's final latents {index: CPU tensor} and its measured record."""
    ctx.stage_times["loaded"] = time.time()
    strategy.prepare(ctx, model)
    if warmup > 0:
        events.emit(PhaseStarted(ctx.rank, phase="warmup"))
        strategy.run(ctx, model, warmup_samples(samples, warmup),
                     StepRecorder(ctx.device, events, ctx.rank, ctx.stage_times))
    # NOTE: the clock starts after every rank is warm and past this barrier (design §7).
    recorder = StepRecorder(ctx.device, events, ctx.rank, ctx.stage_times)
    recorder.record.unet_param_bytes = param_bytes(model.unet)
    recorder.mark_memory("load")
    ctx.barrier()
    events.emit(PhaseStarted(ctx.rank, phase="diffuse"))
    recorder.start_clock()
    finals = strategy.run(ctx, model, samples, recorder)
    recorder.mark_memory("diffuse")
    recorder.record.startup_s = startup_seconds(ctx.stage_times)
    return finals, recorder.record


def gather_to_first(ctx: DistContext, obj):
    """Every rank's `obj`, as a list in rank order, on rank 0; None elsewhere."""
    gathered = [None] * ctx.world_size if ctx.is_first else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered
