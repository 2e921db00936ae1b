"""What the rest of vidpipe needs of the Stable Video Diffusion family: its options and defaults, its sizes, and
how one rank of a plan loads it. Every family package has a `family.py` with the same functions."""

from __future__ import annotations

from vidpipe.errors import UsageError
from vidpipe.models.svd.adapter import default_size, resolve_size  # noqa: F401 - part of the family surface

NAME = "svd"
PIPELINE_CLASS = "StableVideoDiffusionPipeline"
#: generate's options that only Wan takes: refused for SVD, never silently ignored.
FOREIGN_OPTIONS = {"prompt": "--prompt", "negative_prompt": "--negative-prompt", "guidance_scale": "--guidance-scale",
                   "guidance_scale_2": "--guidance-scale-2", "text_encoder_device": "--text-encoder-device"}
PRELOAD = ("vidpipe.models.svd.adapter",)


def complete(config):
    """`config` as given (its defaults are SVD's), and one line for an option SVD does not take."""
    foreign = [flag for name, flag in FOREIGN_OPTIONS.items() if name in config.given]
    if foreign:
        raise UsageError(f"{foreign[0]} is a Wan option; Stable Video Diffusion is guided by the image alone "
                         "(--min-guidance, --max-guidance, --motion-bucket-id, --fps)")
    return config


def uses_guidance(config) -> bool:
    return config.max_guidance > 1


def params(config, size: tuple[int, int, int]):
    """The sampling parameters of a generate run; sizes left to the model (None) where the user gave none."""
    from vidpipe.models.svd.adapter import SVDParams

    return SVDParams(
        steps=config.steps, frames=config.frames, height=config.height, width=config.width, fps=config.fps,
        motion_bucket_id=config.motion_bucket_id, noise_aug_strength=config.noise_aug_strength,
        min_guidance=config.min_guidance, max_guidance=config.max_guidance,
        decode_chunk_size=config.decode_chunk_size, vae_device=config.vae_device,
    )


def load_for(layout, source, dtype, params, encoders: bool, blocks: list[range] | None):
    """The SVD model as the plan needs it on this rank: the image encoder only where samples are encoded, the UNet
    left on the CPU where fsdp moves it to the device shard by shard (no rank ever holds it whole)."""
    from vidpipe.models.svd.adapter import SVDModel
    from vidpipe.runtime.devices import DTYPES

    return SVDModel.load(source, layout.ctx.device, DTYPES[dtype], params, encoders=encoders,
                         stage_unet_on_cpu=layout.plan.fsdp)


def model_size(source, dtype_bytes: int):
    """What `auto`'s memory model needs of this model, from its configs (no weights)."""
    from vidpipe.models.svd.adapter import parameter_counts
    from vidpipe.parallel.auto import ModelSize

    counts = parameter_counts(source)
    return ModelSize(counts["unet"], counts["vae"] + counts["image_encoder"], counts["first_channels"], dtype_bytes,
                     vae_params=counts["vae"])
