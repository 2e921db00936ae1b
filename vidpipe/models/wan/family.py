"""What the rest of vidpipe needs of the Wan family: its options and defaults, its sizes, and how one rank of a plan
loads it. Every family package has a `family.py` with the same functions; the registry picks the package."""

from __future__ import annotations

from dataclasses import replace

from vidpipe.errors import UsageError
from vidpipe.models.wan.sizes import default_size, resolve_size  # noqa: F401 - part of the family surface

NAME = "wan"
PIPELINE_CLASS = "WanImageToVideoPipeline"
#: The pipeline's own default step count (`WanImageToVideoPipeline.__call__`).
DEFAULT_STEPS = 50
#: generate's options that only SVD takes: refused for Wan, never silently ignored.
FOREIGN_OPTIONS = {"fps": "--fps", "motion_bucket_id": "--motion-bucket-id",
                   "noise_aug_strength": "--noise-aug-strength", "min_guidance": "--min-guidance",
                   "max_guidance": "--max-guidance", "decode_chunk_size": "--decode-chunk-size"}
#: The components with weights (Wan 2.2 A14B has both experts; Wan 2.1 has CLIP).
COMPONENTS = ("transformer", "transformer_2", "vae", "text_encoder", "image_encoder")
#: Modules a rank of a Wan run needs, for the worker server to preload.
PRELOAD = ("vidpipe.models.wan.adapter", "vidpipe.models.wan.parallelize")


def complete(config):
    """`config` with Wan's defaults where the user gave nothing, and one line for an option Wan does not take."""
    foreign = [flag for name, flag in FOREIGN_OPTIONS.items() if name in config.given]
    if foreign:
        raise UsageError(f"{foreign[0]} is a Stable Video Diffusion option; Wan takes --prompt, --negative-prompt, "
                         "--guidance-scale and --guidance-scale-2 instead")
    config = replace(config, steps=config.steps if "steps" in config.given else DEFAULT_STEPS,
                     prompt=config.prompt or "", negative_prompt=config.negative_prompt or "",
                     guidance_scale=5.0 if config.guidance_scale is None else config.guidance_scale)
    # NOTE: no frame check: sp splits Wan's tokens, not its frames (a too-short sequence is refused when split).
    config.run.check_plan(config.steps, None, config.guidance_scale > 1)
    return config


def uses_guidance(config) -> bool:
    return config.guidance_scale > 1


def params(config, size: tuple[int, int, int]):
    """The sampling parameters of a generate run (`complete`d), sizes resolved."""
    from vidpipe.models.wan.sizes import WanParams

    frames, height, width = size
    return WanParams(steps=config.steps, frames=frames, height=height, width=width, prompt=config.prompt,
                     negative_prompt=config.negative_prompt, guidance_scale=config.guidance_scale,
                     guidance_scale_2=config.guidance_scale_2, text_encoder_device=config.text_encoder_device,
                     vae_device=config.vae_device)


#: What a job (a server's, a job file's line, a sweep entry) may set per sample beyond the common options (samples,
#: seed, steps, frames, height, width, format, save_latents), by name, with its type.
JOB_FIELDS = {"prompt": str, "negative_prompt": str, "guidance_scale": float, "guidance_scale_2": float}


def job_fields(source=None) -> dict[str, type]:
    """The per-sample fields a job for `source` takes; `guidance_scale_2` only for a two-expert model (Wan 2.2
    A14B), as only its low-noise expert uses it (None: every field the family knows)."""
    import json

    if source is None or json.loads((source.path / "model_index.json").read_text()).get("boundary_ratio"):
        return dict(JOB_FIELDS)
    return {name: kind for name, kind in JOB_FIELDS.items() if name != "guidance_scale_2"}


def job_params(config, source, plan):
    """One sample of a job: `config` holds its options over the run's (`given` names them) -> WanParams, sizes
    resolved, checked as generate checks its flags and against `plan`. An SVD option is refused as generate
    refuses it."""
    config = complete(config)
    p = params(config, resolve_size(source, config.frames, config.height, config.width))
    check_job(plan, p)
    return p


def check_job(plan, params) -> None:
    """What one sample must give `plan`: a step per pp stage, guidance for cfg (sp splits tokens, not frames)."""
    plan.check_job(params.steps, None, params.guidance_scale > 1)


def expert_switch(source, steps: int) -> int | None:
    """The step where Wan 2.2 A14B's low-noise expert takes over on a `steps`-step schedule (None: one expert);
    the step pipeline breaks its blocks there when it can."""
    import json

    ratio = json.loads((source.path / "model_index.json").read_text()).get("boundary_ratio")
    if ratio is None:  # NOTE: before the imports: a one-expert model's parent process never imports diffusers
        return None
    from diffusers import UniPCMultistepScheduler

    from vidpipe.models.wan.sampling import expert_switch_step

    return expert_switch_step(UniPCMultistepScheduler.from_pretrained(source.path, subfolder="scheduler"), ratio,
                              steps)


def experts_for_steps(source, steps: int, block: range) -> tuple[str, ...]:
    """The experts a block of steps uses: on Wan 2.2 A14B the high-noise one before the switch, then the other."""
    switch = expert_switch(source, steps)
    if switch is None:
        return ("transformer",)
    used = {"transformer": block.start < switch, "transformer_2": block.stop > switch}
    return tuple(name for name, uses in used.items() if uses)


def load_for(layout, source, dtype, params, encoders: bool, blocks: list[range] | None):
    """The Wan model as the plan needs it on this rank: encoders only where samples are encoded; on a pp stage only
    the experts its steps use (`blocks`: this rank's blocks; None: every step); under fsdp the experts stay on the
    CPU until they are sharded."""
    from vidpipe.models.wan.adapter import EXPERTS, WanModel
    from vidpipe.runtime.devices import DTYPES

    experts = EXPERTS
    if blocks is not None:
        experts = tuple(sorted({e for b in blocks for e in experts_for_steps(source, params.steps, b)}))
    return WanModel.load(source, layout.ctx.device, DTYPES[dtype], params, encoders=encoders, experts=experts,
                         stage_on_cpu=layout.plan.fsdp)


def model_size(source, dtype_bytes: int):
    """What `auto`'s memory model needs of this model, from its configs on the meta device (no weights).

    Every loaded expert counts (dp and fsdp hold both of Wan 2.2's; a pp stage may hold one). NOTE: `auto`'s
    activation estimate is a UNet's (20 tensors of the first level's width per latent pixel and frame); a DiT's
    is about 10 tensors of its width per token, a token being 4 frames x 2 x 2 latent pixels: dim / 32 gives the
    same bytes. An approximation, stated as one.
    """
    from vidpipe.models.wan.sizes import denoiser_config, image_token_count, kept_context_bytes
    from vidpipe.models.wan.tiny import parameter_counts
    from vidpipe.models.weights import stored_counts
    from vidpipe.parallel.auto import ModelSize

    # NOTE: read from the weights' headers when the model has files: the parent process never imports diffusers.
    counts = stored_counts(source.path, COMPONENTS) if source.kind == "dir" else None
    if not counts:
        counts = parameter_counts(source.path)
    experts = counts.get("transformer", 0) + counts.get("transformer_2", 0)
    encoders = counts.get("text_encoder", 0) + counts.get("image_encoder", 0)
    config = denoiser_config(source.path)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    return ModelSize(experts, counts["vae"] + encoders, max(1, width // 32), dtype_bytes, vae_params=counts["vae"],
                     experts=1 + ("transformer_2" in counts and counts["transformer_2"] > 0),
                     context_bytes=kept_context_bytes(config, image_token_count(source.path), dtype_bytes))


def bench_params(steps: int, size: tuple[int, int, int]):
    """The sampling parameters `bench` runs with: the pipeline's defaults (guidance 5.0) at this size, an empty
    negative prompt and a fixed prompt (any text costs the same: UMT5 pads it to 512 tokens)."""
    from vidpipe.models.wan.sizes import WanParams

    return WanParams(steps=steps, frames=size[0], height=size[1], width=size[2], prompt="a video")


def bytes_per_step(source, plan, size: tuple[int, int, int], dtype_bytes: int) -> list[int]:
    """What cfg and sp send per step from each rank of a group (`cost.py`), for a run at `size` with guidance."""
    import json

    from vidpipe.models.wan.cost import wan_bytes_per_step
    from vidpipe.models.wan.sizes import denoiser_config, size_factors

    temporal, _multiple = size_factors(source.path)
    vae = json.loads((source.path / "vae" / "config.json").read_text())
    spatial = vae.get("scale_factor_spatial") or 8
    return wan_bytes_per_step(plan, denoiser_config(source.path), (size[0] - 1) // temporal + 1, size[1] // spatial,
                              size[2] // spatial, dtype_bytes)


def pixel_multiple(source) -> int:
    """Heights and widths must divide by this (VAE factor x the transformer's 2 x 2 patches)."""
    from vidpipe.models.wan.sizes import size_factors

    return size_factors(source.path)[1]


__all__ = ["JOB_FIELDS", "NAME", "PIPELINE_CLASS", "bench_params", "bytes_per_step", "check_job", "complete",
           "default_size", "job_fields", "job_params", "load_for", "model_size", "params", "pixel_multiple",
           "resolve_size", "uses_guidance"]


def max_frames(source) -> int:
    """The most frames the transformer can place: its rotary table holds `rope_max_seq_len` latent frames (1024),
    and each latent frame after the first is `temporal` video frames (4k + 1 frames)."""
    from vidpipe.models.wan.sizes import denoiser_config, size_factors

    temporal, _multiple = size_factors(source.path)
    return temporal * (denoiser_config(source.path).get("rope_max_seq_len", 1024) - 1) + 1
