"""The denoising loop of Wan image-to-video, cut so that any contiguous block of steps can run alone.

This is diffusers' `WanImageToVideoPipeline.__call__` step 6, unchanged in arithmetic. Wan's scheduler, UniPC, is
multistep: each step uses the model outputs of the steps before it, its corrector uses the previous sample, and a
warm-up order counter grows over the first steps. That history is part of a sample's state: `SolverState` turns it
into tensors that travel with the latents, so a block run on another rank continues exactly where the previous
block stopped, as if one scheduler had run every step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from vidpipe.models.base import SampleState, StepCallback, TensorSpec
from vidpipe.models.wan.sizes import TEXT_TOKENS


def state_spec(latent: tuple[int, ...], condition: tuple[int, ...], text_dim: int, image_dim: int | None,
               image_tokens: int | None, solver_order: int, dtype: torch.dtype) -> dict[str, TensorSpec]:
    """The tensors of a Wan sample in flight, in a fixed order (what `denoise_block` reads and `SolverState`
    writes): latents, the first-frame condition (`condition`: its shape) and the solver's history in fp32, as in
    the pipeline; the embeddings in the transformer's dtype; the step count, guidance and solver scalars on the
    host."""
    spec = {
        "latents": TensorSpec(latent, torch.float32),
        "condition": TensorSpec(condition, torch.float32),
        "prompt_embeds": TensorSpec((1, TEXT_TOKENS, text_dim), dtype),
        "negative_prompt_embeds": TensorSpec((1, TEXT_TOKENS, text_dim), dtype),
    }
    if image_dim is not None:
        spec["image_embeds"] = TensorSpec((1, image_tokens, image_dim), dtype)
    spec["solver_outputs"] = TensorSpec((solver_order, *latent), torch.float32)
    spec["solver_last_sample"] = TensorSpec(latent, torch.float32)
    spec["solver_scalars"] = TensorSpec((4 + solver_order,), torch.float64, on_host=True)
    spec["sampling"] = TensorSpec((3,), torch.float64, on_host=True)  # [steps, guidance, guidance_2]
    return spec


@dataclass
class SolverState:
    """UniPC's history after some steps, as tensors: `outputs` [order, *latent] (the converted model outputs of the
    last `order` steps, zeros where none yet), `last_sample` [*latent] (the corrector's input) and `scalars`, a host
    float64 vector [step_index, lower_order_nums, this_order, has_last_sample, *timestep_list] (NaN: no entry)."""

    outputs: torch.Tensor
    last_sample: torch.Tensor
    scalars: torch.Tensor

    @classmethod
    def initial(cls, order: int, latents: torch.Tensor) -> SolverState:
        """Before step 0: nothing in the history."""
        scalars = torch.tensor([0, 0, 0, 0] + [math.nan] * order, dtype=torch.float64)
        return cls(latents.new_zeros((order, *latents.shape)), torch.zeros_like(latents), scalars)

    @classmethod
    def of(cls, scheduler, latents: torch.Tensor) -> SolverState:
        """The history `scheduler` holds now (after its last step)."""
        order = scheduler.config.solver_order
        outputs = latents.new_zeros((order, *latents.shape))
        times = []
        for k, (output, timestep) in enumerate(zip(scheduler.model_outputs, scheduler.timestep_list, strict=True)):
            if output is not None:
                outputs[k] = output
            times.append(math.nan if timestep is None else float(timestep))
        last = scheduler.last_sample
        scalars = [scheduler.step_index or 0, scheduler.lower_order_nums, getattr(scheduler, "this_order", 0),
                   float(last is not None)]
        return cls(outputs, torch.zeros_like(latents) if last is None else last.clone(),
                   torch.tensor(scalars + times, dtype=torch.float64))

    def restore(self, scheduler, timesteps: torch.Tensor) -> None:
        """Put this history into `scheduler` (freshly positioned on the same schedule)."""
        step_index, lower_order_nums, this_order, has_last = (int(v) for v in self.scalars[:4].tolist())
        times = self.scalars[4:].tolist()
        scheduler._step_index = step_index  # noqa: SLF001 - UniPC keeps its position here
        scheduler.lower_order_nums = lower_order_nums
        scheduler.this_order = this_order
        scheduler.last_sample = self.last_sample if has_last else None
        # NOTE: an entry exists where its timestep does; outputs keep their place in the history, oldest first.
        scheduler.model_outputs = [None if math.isnan(t) else self.outputs[k] for k, t in enumerate(times)]
        scheduler.timestep_list = [None if math.isnan(t) else _timestep_like(t, timesteps) for t in times]

    def into(self, state: SampleState) -> None:
        state["solver_outputs"], state["solver_last_sample"], state["solver_scalars"] = (
            self.outputs, self.last_sample, self.scalars)

    @classmethod
    def from_state(cls, state: SampleState) -> SolverState:
        return cls(state["solver_outputs"], state["solver_last_sample"], state["solver_scalars"])


def _timestep_like(value: float, timesteps: torch.Tensor) -> torch.Tensor:
    # The scheduler stores the timestep tensors it was stepped with (0-d, int64, on the device).
    return torch.tensor(value, dtype=timesteps.dtype, device=timesteps.device)


class SequentialGuidance:
    """Classifier-free guidance as the pipeline does it: the conditional call, then the unconditional one.
    A parallel axis (`cfg`) replaces it with one that runs one call per rank and exchanges the predictions."""

    def __call__(self, denoiser, latent_input, timestep, cond, uncond, image_embeds, scale: float | None):
        noise_pred = denoiser(hidden_states=latent_input, timestep=timestep, encoder_hidden_states=cond,
                              encoder_hidden_states_image=image_embeds, return_dict=False)[0]
        if scale is None:  # guidance off (scale <= 1): the conditional prediction only
            return noise_pred
        noise_uncond = denoiser(hidden_states=latent_input, timestep=timestep, encoder_hidden_states=uncond,
                                encoder_hidden_states_image=image_embeds, return_dict=False)[0]
        return noise_uncond + scale * (noise_pred - noise_uncond)


def first_frame_mask(latents: torch.Tensor) -> torch.Tensor:
    """Wan 2.2 TI2V (`expand_timesteps`): 0 on the first latent frame (the image's own latents, kept), 1 on the
    frames being denoised; the pipeline's `first_frame_mask`."""
    mask = torch.ones(1, 1, *latents.shape[2:], dtype=latents.dtype, device=latents.device)
    mask[:, :, 0] = 0
    return mask


def expert_switch_step(scheduler, boundary_ratio: float | None, steps: int) -> int | None:
    """The first step of a `steps`-step schedule that runs the low-noise expert (its timestep below the boundary,
    the pipeline's switch), or `steps` if none does; None for a one-expert model. `scheduler` is any scheduler of
    the model's class and config: a fresh copy is positioned, not it."""
    if boundary_ratio is None:
        return None
    schedule = type(scheduler).from_config(scheduler.config)
    schedule.set_timesteps(steps, device=torch.device("cpu"))
    boundary = boundary_ratio * schedule.config.num_train_timesteps
    return next((i for i, t in enumerate(schedule.timesteps.tolist()) if t < boundary), steps)


@dataclass(frozen=True)
class Experts:
    """The denoiser(s) and when each runs: Wan 2.2 A14B's `transformer` for timesteps >= boundary (high noise),
    `transformer_2` below it; Wan 2.1 has one. Either may be None on a rank whose steps never use it."""

    high_noise: torch.nn.Module | None
    low_noise: torch.nn.Module | None = None
    boundary_timestep: float | None = None  # boundary_ratio x num_train_timesteps; None: one expert

    def for_timestep(self, t: torch.Tensor, guidance: tuple[float, float]):
        """(denoiser, guidance scale) for timestep `t`: the pipeline's switch, unchanged."""
        if self.boundary_timestep is None or t >= self.boundary_timestep:
            return self.high_noise, guidance[0]
        return self.low_noise, guidance[1]


def denoise_block(
    experts: Experts,
    scheduler,
    num_steps: int,
    state: SampleState,
    steps: range,
    guidance: tuple[float, float],
    transformer_dtype: torch.dtype,
    guide=None,
    on_step: StepCallback | None = None,
    expand_timesteps: bool = False,
) -> tuple[torch.Tensor, SolverState]:
    """Run steps `steps` (indices into the `num_steps` schedule) of `state`; return the new latents and the solver's
    history after them. `guidance` is (guidance_scale, guidance_scale_2); as in the pipeline, guidance is on when
    guidance_scale > 1 (and then the low-noise expert uses guidance_scale_2). `expand_timesteps` (Wan 2.2
    TI2V-5B): the first latent frame is the image's, every step, and timesteps are per token (0 on that frame)."""
    guide = guide or SequentialGuidance()
    latents, condition = state["latents"], state["condition"]
    cond, uncond = state["prompt_embeds"], state["negative_prompt_embeds"]
    image_embeds = state.get("image_embeds")
    use_cfg = guidance[0] > 1
    mask = first_frame_mask(latents) if expand_timesteps else None

    # 1. Position a scheduler at this block's first step, with the solver history the sample carries. NOTE: the
    #    schedule is computed once per model; each block steps a shallow copy with its own history.
    if getattr(scheduler, "num_inference_steps", None) != num_steps or scheduler.timesteps.device != latents.device:
        scheduler.set_timesteps(num_steps, device=latents.device)
    scheduler = copy.copy(scheduler)
    timesteps = scheduler.timesteps
    SolverState.from_state(state).restore(scheduler, timesteps)
    if scheduler.step_index != steps.start:
        raise ValueError(f"denoise: the sample's solver is at step {scheduler.step_index}, the block starts at "
                         f"{steps.start}")

    for i in steps:
        t = timesteps[i]
        # 2. The expert for this timestep (Wan 2.2: high noise first, then low noise).
        denoiser, scale = experts.for_timestep(t, guidance)
        if denoiser is None:
            raise RuntimeError(f"denoise: step {i} needs an expert this rank did not load")

        # 3. The image condition, in the transformer's dtype: beside the latents (mask + first-frame latents), or
        #    TI2V: in place of the first latent frame, which then gets timestep 0 (per token: 2 x 2 patches).
        if mask is None:
            latent_input = torch.cat([latents, condition], dim=1).to(transformer_dtype)
            timestep = t.expand(latents.shape[0])
        else:
            latent_input = ((1 - mask) * condition + mask * latents).to(transformer_dtype)
            timestep = (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(latents.shape[0], -1)

        # 4. Predict the flow, guided.
        noise_pred = guide(denoiser, latent_input, timestep, cond, uncond, image_embeds, scale if use_cfg else None)

        # 5. UniPC step x_t -> x_t-1 (its history advances inside).
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]

        # 6. The one hook per step: strategies time it and report progress here.
        if on_step is not None:
            on_step(i)
    solver = SolverState.of(scheduler, latents)
    if mask is not None and steps.stop == num_steps:  # TI2V: the video's first frame is the image's, as encoded
        latents = (1 - mask) * condition + mask * latents
    return latents, solver
