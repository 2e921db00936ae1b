"""What the rest of vidpipe needs of the Stable Video Diffusion family: its options and defaults, its sizes, and
how one rank of a plan loads it. Every family package has a `family.py` with the same functions."""

from __future__ import annotations

from vidpipe.errors import UsageError
from vidpipe.models.svd.sizes import default_size, resolve_size  # noqa: F401 - part of the family surface

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
    from vidpipe.models.svd.sizes import SVDParams

    return SVDParams(
        steps=config.steps, frames=config.frames, height=config.height, width=config.width, fps=config.fps,
        motion_bucket_id=config.motion_bucket_id, noise_aug_strength=config.noise_aug_strength,
        min_guidance=config.min_guidance, max_guidance=config.max_guidance,
        decode_chunk_size=config.decode_chunk_size, vae_device=config.vae_device,
    )


#: What a job (a server's, a job file's line, a sweep entry) may set per sample beyond the common options (samples,
#: seed, steps, frames, height, width, format, save_latents), by name, with its type.
JOB_FIELDS = {"fps": int, "motion_bucket_id": int, "noise_aug_strength": float, "min_guidance": float,
              "max_guidance": float, "decode_chunk_size": int}


def expert_switch(source, steps: int) -> None:
    """SVD has one denoiser: the step pipeline's blocks are simply as even as possible."""
    return None


def job_fields(source=None) -> dict[str, type]:
    """The per-sample fields a job for `source` takes (SVD: every model the same ones)."""
    return dict(JOB_FIELDS)


def job_params(config, source, plan):
    """One sample of a job: `config` holds its options over the run's (`given` names them) -> SVDParams, every size
    resolved, checked as generate checks its flags and against `plan`. A Wan option is refused as generate
    refuses it; the decode chunk, unless given, is at most the frame count."""
    from dataclasses import replace

    config = complete(config)
    frames, height, width = resolve_size(source, config.frames, config.height, config.width)
    chunk = config.decode_chunk_size
    if "decode_chunk_size" not in config.given:
        chunk = min(chunk, frames)
    if chunk > frames:
        raise UsageError(f"--decode-chunk-size {chunk}: must be between 1 and {frames} frames")
    p = replace(params(config, (frames, height, width)), frames=frames, height=height, width=width,
                decode_chunk_size=chunk)
    check_job(plan, p)
    return p


def check_job(plan, params) -> None:
    """What one sample must give `plan`: a step per pp stage, a frame per sp rank, guidance for cfg."""
    plan.check_job(params.steps, params.frames, params.max_guidance > 1)


def load_for(layout, source, dtype, params, encoders: bool, blocks: list[range] | None):
    """The SVD model as the plan needs it on this rank: the image encoder only where samples are encoded, the UNet
    left on the CPU where fsdp moves it to the device shard by shard (no rank ever holds it whole)."""
    from vidpipe.models.svd.adapter import SVDModel
    from vidpipe.runtime.devices import DTYPES

    return SVDModel.load(source, layout.ctx.device, DTYPES[dtype], params, encoders=encoders,
                         stage_unet_on_cpu=layout.plan.fsdp)


def model_size(source, dtype_bytes: int):
    """What `auto`'s memory model needs of this model, from its configs (no weights)."""
    from vidpipe.models.svd.sizes import parameter_counts
    from vidpipe.parallel.auto import ModelSize

    counts = parameter_counts(source)
    return ModelSize(counts["unet"], counts["vae"] + counts["image_encoder"], counts["first_channels"], dtype_bytes,
                     vae_params=counts["vae"])


def bench_params(steps: int, size: tuple[int, int, int]):
    """The sampling parameters `bench` runs with: the pipeline's defaults at this size."""
    from vidpipe.models.svd.sizes import SVDParams

    return SVDParams(steps=steps, frames=size[0], height=size[1], width=size[2])


def bytes_per_step(source, plan, size: tuple[int, int, int], dtype_bytes: int) -> list[int]:
    """What cfg and sp send per step from each rank of a group (`cost.py`), for a run at `size` with guidance."""
    from vidpipe.models.svd.cost import svd_bytes_per_step
    from vidpipe.models.svd.sizes import _config, size_multiple

    factor = size_multiple(source)[1]
    return svd_bytes_per_step(plan, _config(source, "unet"), 2, size[0], size[1] // factor, size[2] // factor,
                              dtype_bytes)


def pixel_multiple(source) -> int:
    """Heights and widths must divide by this (VAE factor x 2 per UNet down-sampling)."""
    from vidpipe.models.svd.sizes import size_multiple

    return size_multiple(source)[0]


#: SVD's UNet has no positional limit on frames (its temporal embedding is sinusoidal); vidpipe takes 4 x the frames
#: the model was trained for (its UNet's `num_frames`: svd-xt 25 -> 100) as the model's maximum.
TRAINED_FRAMES_FACTOR = 4


def max_frames(source) -> int:
    """The most frames a job may ask of this model unless --max-frames says otherwise."""
    from vidpipe.models.svd.sizes import _config

    return TRAINED_FRAMES_FACTOR * _config(source, "unet")["num_frames"]
