"""Stable Video Diffusion's sampling parameters and sizes, from the configs alone: what the parent process needs to
check a job (no torch model, no diffusers import)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from vidpipe.errors import UsageError
from vidpipe.models.source import ModelSource

#: The components with weights.
WEIGHTED = ("unet", "vae", "image_encoder")
#: Default pixel size per flavor; other models get the pipeline's own default, SVD's training size.
DEFAULT_PIXELS = {"tiny": (64, 64), "small": (256, 384)}
PIPELINE_PIXELS = (576, 1024)


@dataclass(frozen=True)
class SVDParams:
    """Everything the sampler needs (validated by the caller). None sizes mean the model's defaults."""

    steps: int
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance: float = 1.0
    max_guidance: float = 3.0
    decode_chunk_size: int = 4
    vae_device: str = "gpu"  # "cpu": phase-2 decode on the CPU, leaving the GPU to diffusion


def _config(source: ModelSource, component: str) -> dict:
    return json.loads((source.path / component / "config.json").read_text())


def default_size(source: ModelSource) -> tuple[int, int, int]:
    """(frames, height, width) the model generates by default: svd-xt 25 x 576 x 1024, small 14 x 256 x 384,
    tiny 4 x 64 x 64."""
    height, width = DEFAULT_PIXELS.get(source.name, PIPELINE_PIXELS)
    return _config(source, "unet")["num_frames"], height, width


def size_multiple(source: ModelSource) -> tuple[int, int, int]:
    """(pixel multiple, VAE factor, UNet down-samplings): heights and widths must divide by the first."""
    vae_factor = 2 ** (len(_config(source, "vae")["block_out_channels"]) - 1)
    downsamplings = len(_config(source, "unet")["down_block_types"]) - 1  # the last block keeps its size
    return vae_factor * 2**downsamplings, vae_factor, downsamplings


def resolve_size(
    source: ModelSource, frames: int | None, height: int | None, width: int | None
) -> tuple[int, int, int]:
    """(frames, height, width) to generate: the given sizes, checked (see `check_size`), else the model's."""
    check_size(source, frames, height, width)
    default_frames, default_height, default_width = default_size(source)
    return frames or default_frames, height or default_height, width or default_width


def check_size(source: ModelSource, frames: int | None, height: int | None, width: int | None) -> None:
    """UsageError, with the arithmetic, unless the sizes fit the model (None = the default, always fine).

    Pixels must divide by the VAE factor and then by 2 once per UNet down-sampling, or the UNet's skip
    connections stop lining up.
    """
    multiple, vae_factor, downsamplings = size_multiple(source)
    if frames is not None and frames < 1:
        raise UsageError(
            f"--frames {frames}: must be at least 1; try the model's default, {default_size(source)[0]}"
        )
    for flag, value in (("--height", height), ("--width", width)):
        if value is None or (value > 0 and value % multiple == 0):
            continue
        below, above = value // multiple * multiple, (value // multiple + 1) * multiple
        suggestion = f"{below} or {above}" if below > 0 else f"{above}"
        raise UsageError(
            f"{flag} {value}: must be a positive multiple of {multiple} (VAE factor {vae_factor} x "
            f"2**{downsamplings} UNet down-samplings); try {suggestion}"
        )


def parameter_counts(source: ModelSource) -> dict[str, int]:
    """Parameters of the UNet, the VAE and the image encoder, and the UNet's first channel count: read from the
    weights' headers when the model has files (no diffusers import), else counted on the meta device."""
    from vidpipe.models.weights import stored_counts

    counts = stored_counts(source.path, WEIGHTED) if source.kind == "dir" else None
    if counts is None or set(counts) != set(WEIGHTED):
        from vidpipe.models.svd.adapter import meta_parameter_counts

        counts = meta_parameter_counts(source)
    return {**counts, "first_channels": _config(source, "unet")["block_out_channels"][0]}
