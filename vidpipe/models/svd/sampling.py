"""The denoising loop of Stable Video Diffusion, cut so that any contiguous block of steps can run alone.

This is diffusers' `StableVideoDiffusionPipeline.__call__` step 9, unchanged in arithmetic; the only difference
is that the scheduler is told where the block begins, so a block run on another rank continues the schedule
exactly where the previous block stopped. The simulator's stand-in UNet runs through the very same loop.
"""

from __future__ import annotations

import copy

import torch
from diffusers.schedulers import EulerDiscreteScheduler

from vidpipe.models.base import SampleState, StepCallback


def fresh_scheduler(config, num_steps: int, device: torch.device) -> EulerDiscreteScheduler:
    """A scheduler with `num_steps` timesteps on `device`, positioned before step 0.

    Build it once per model: `from_config` costs milliseconds, which add up over many blocks.
    """
    scheduler = EulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(num_steps, device=device)
    return scheduler


def guidance_ramp(min_guidance: float, max_guidance: float, num_frames: int, latents: torch.Tensor) -> torch.Tensor:
    """Per-frame guidance scale, linear from min to max over frames, shaped to broadcast over `latents`."""
    scale = torch.linspace(min_guidance, max_guidance, num_frames).unsqueeze(0)
    scale = scale.to(latents.device, latents.dtype).repeat(latents.shape[0], 1)
    # The pipeline's `_append_dims`, inlined: importing the pipeline module pulls in transformers (seconds per
    # rank), which the simulator does not otherwise need.
    return scale[(...,) + (None,) * (latents.ndim - scale.ndim)]


def expand_for_guidance(
    state: SampleState, num_frames: int, use_cfg: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compact conditioning -> the unconditional/conditional batch of 2 the UNet sees (batch of 1 without CFG).

    Only the compact form travels between ranks (one image latent, not one per frame, and no zero half).
    NOTE: this must equal the pipeline's `_encode_image` / `_encode_vae_image` / `_get_add_time_ids` output:
    zeros first, then the conditional half; image latents repeated over frames.
    """
    embeddings = state["image_embeddings"]
    image_latents = state["image_latents"]
    time_ids = state["added_time_ids"]
    if use_cfg:
        embeddings = torch.cat([torch.zeros_like(embeddings), embeddings])
        image_latents = torch.cat([torch.zeros_like(image_latents), image_latents])
        time_ids = torch.cat([time_ids, time_ids])
    image_latents = image_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
    return embeddings, image_latents, time_ids


def denoise_block(
    unet: torch.nn.Module,
    scheduler: EulerDiscreteScheduler,
    num_steps: int,
    state: SampleState,
    steps: range,
    guidance: tuple[float, float],
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Run steps `steps` (indices into the `num_steps` schedule) of classifier-free-guided Euler sampling.

    As in the pipeline, guidance is on when `max_guidance > 1`; `guidance` is (min_guidance, max_guidance).
    """
    latents = state["latents"]
    num_frames = latents.shape[1]
    use_cfg = guidance[1] > 1
    embeddings, image_latents, time_ids = expand_for_guidance(state, num_frames, use_cfg)
    guidance_scale = guidance_ramp(guidance[0], guidance[1], num_frames, latents)

    # 1. Position a scheduler at the first step of this block. The schedule is computed once per model;
    #    NOTE: each block steps a shallow copy, which shares the sigmas but keeps its own step index, so
    #    blocks of different samples never disturb each other.
    if getattr(scheduler, "num_inference_steps", None) != num_steps or scheduler.timesteps.device != latents.device:
        scheduler.set_timesteps(num_steps, device=latents.device)
    scheduler = copy.copy(scheduler)
    scheduler.set_begin_index(steps.start)
    timesteps = scheduler.timesteps

    for i in steps:
        t = timesteps[i]
        # 2. Expand the latents for classifier-free guidance and scale them for this sigma.
        latent_model_input = torch.cat([latents] * 2) if use_cfg else latents
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        latent_model_input = torch.cat([latent_model_input, image_latents], dim=2)

        # 3. Predict the noise residual.
        noise_pred = unet(
            latent_model_input,
            t,
            encoder_hidden_states=embeddings,
            added_time_ids=time_ids,
            return_dict=False,
        )[0]

        # 4. Guidance, ramped per frame.
        if use_cfg:
            noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_cond - noise_pred_uncond)

        # 5. Euler step x_t -> x_t-1.
        latents = scheduler.step(noise_pred, t, latents).prev_sample

        # 6. The one hook per step: strategies time it and report progress here.
        if on_step is not None:
            on_step(i)
    return latents
