"""The `wan` adapter: Wan 2.1 / 2.2 image-to-video on one device, built from diffusers' own pipeline pieces.

A `WanImageToVideoPipeline` object holds the components and supplies every helper (prompt and image encoding,
initial latents and the first-frame condition, VAE decode, post-processing); only the denoising loop is ours
(`sampling.denoise_block`), so that any contiguous block of steps can run on its own, on any rank.
"""

from __future__ import annotations

import gc
from dataclasses import replace

import numpy as np
import PIL.Image
import torch

from vidpipe.models.base import Sample, SampleState, StepCallback, TensorSpec
from vidpipe.models.wan import context_cache
from vidpipe.models.wan.sampling import (
    TEXT_TOKENS,
    Experts,
    SequentialGuidance,
    SolverState,
    denoise_block,
    expert_switch_step,
    state_spec,
)
from vidpipe.models.wan.sizes import WanParams, denoiser_config, image_token_count, resolve_size

#: Prompt pairs whose embeddings a model keeps (a server's jobs often repeat them; 16 MB each for the 14B models).
PROMPTS_KEPT = 16
#: The transformers of a Wan pipeline: Wan 2.2 A14B's high-noise and low-noise experts (Wan 2.1: the first only).
EXPERTS = ("transformer", "transformer_2")


def _rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


class WanModel:
    """Wan image-to-video behind the `DiffusionModel` protocol, on one device."""

    family = "wan"
    #: What `--compile` compiles one by one (WanTransformer3DModel's own `_repeated_blocks`).
    repeated_blocks = ("WanTransformerBlock",)

    def __init__(self, pipeline, device: torch.device, dtype: torch.dtype, params: WanParams,
                 size: tuple[int, int, int], image_tokens: int | None = None, denoiser_config: dict | None = None):
        self.pipeline = pipeline
        self.device = device
        self.dtype = dtype
        self.params = params
        self.num_steps = params.steps
        self.num_frames, self.height, self.width = size
        self.guide = SequentialGuidance()  # the `cfg` axis replaces it
        config = pipeline.config
        ratio = self.boundary_ratio = config.get("boundary_ratio")
        self.boundary_timestep = None if ratio is None else ratio * pipeline.scheduler.config.num_train_timesteps
        self.expand_timesteps = bool(config.get("expand_timesteps", False))  # Wan 2.2 TI2V-5B
        self.z_dim = pipeline.vae.config.z_dim
        self.temporal_factor = pipeline.vae_scale_factor_temporal
        self.spatial_factor = pipeline.vae_scale_factor_spatial
        if denoiser_config is None:  # NOTE: a rank may hold neither expert (it only encodes): then it is given
            denoiser_config = next(m.config for m in (pipeline.transformer, pipeline.transformer_2) if m is not None)
        self.text_dim = denoiser_config["text_dim"]
        self.image_dim = denoiser_config["image_dim"]
        self.image_tokens = image_tokens  # of the CLIP embedding (Wan 2.1); known without the encoder loaded
        self.solver_order = pipeline.scheduler.config.solver_order
        self._prompt_cache: dict[tuple[str, str, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        self._prompts_to_come: set[tuple[str, str, bool]] | None = None  # None: any prompt may come (a server)
        self._switches: dict[int, int | None] = {}  # steps -> expert switch (asked once per sample in flight)

    @classmethod
    def load(cls, source, device: torch.device, dtype: torch.dtype | None, params: WanParams,
             encoders: bool = True, experts: tuple[str, ...] = EXPERTS, stage_on_cpu: bool = False,
             stock: bool = False) -> WanModel:
        """Load (kind "dir") or build (kind "random") on `device`; dtype None: bf16 on CUDA, fp32 on CPU.

        `encoders=False` skips UMT5 and CLIP, for ranks that never call `encode`; `experts` names the transformers
        this rank runs (a pp stage loads only the experts its steps use); `stage_on_cpu` leaves them on the CPU,
        for fsdp, which moves them to the device shard by shard. The VAE is always fp32 (phase 2 decodes in fp32).
        """
        from vidpipe.models.wan.loading import load_components

        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        components = load_components(source, dtype, encoders, experts)
        text_device = torch.device("cpu") if params.text_encoder_device == "cpu" else device
        for name, module in components.items():
            if not isinstance(module, torch.nn.Module):
                continue
            module.eval().requires_grad_(False)
            if name in EXPERTS:
                if not stage_on_cpu:
                    module.to(device)
                if not stock:
                    context_cache.install(module)
            else:
                module.to(text_device if name == "text_encoder" else device)
        from diffusers import WanImageToVideoPipeline

        pipeline = WanImageToVideoPipeline(**components)
        pipeline.set_progress_bar_config(disable=True)
        size = resolve_size(source, params.frames, params.height, params.width)
        return cls(pipeline, device, dtype, params, size, image_token_count(source.path), denoiser_config(source.path))

    # 1. The denoiser(s), as strategies and parallel axes see them.

    @property
    def unet(self) -> torch.nn.Module | None:
        """The denoiser a plan wraps or shards: the high-noise expert (or the one transformer)."""
        return self.pipeline.transformer

    @unet.setter
    def unet(self, denoiser: torch.nn.Module | None) -> None:
        self.pipeline.transformer = denoiser

    def experts(self) -> Experts:
        return Experts(self.pipeline.transformer, self.pipeline.transformer_2, self.boundary_timestep)

    def expert_switch(self, steps: int) -> int | None:
        """The step where the low-noise expert takes over (Wan 2.2 A14B; None: one expert)."""
        if steps not in self._switches:
            self._switches[steps] = expert_switch_step(self.pipeline.scheduler, self.boundary_ratio, steps)
        return self._switches[steps]

    def denoisers(self) -> list[torch.nn.Module]:
        """Every loaded expert (fsdp shards each, sp splits each)."""
        return [m for m in (self.pipeline.transformer, self.pipeline.transformer_2) if m is not None]

    # 2. Shapes of a sample's state.

    def params_of(self, sample: Sample | None) -> WanParams:
        p = sample.params if sample is not None and sample.params is not None else self.params
        return replace(p, frames=p.frames or self.num_frames, height=p.height or self.height,
                       width=p.width or self.width)

    def latent_shape(self, p: WanParams) -> tuple[int, ...]:
        frames = (p.frames - 1) // self.temporal_factor + 1
        return (1, self.z_dim, frames, p.height // self.spatial_factor, p.width // self.spatial_factor)

    def state_spec(self, params: WanParams | None = None) -> dict[str, TensorSpec]:
        """Shapes and dtypes of what `encode` returns, in a fixed order. The latents, the first-frame condition and
        the solver's history are fp32, as in the pipeline; the embeddings are in the transformer's dtype."""
        p = params or self.params_of(None)
        latent = self.latent_shape(p)
        return state_spec(latent, self.condition_shape(latent), self.text_dim, self.image_dim, self.image_tokens,
                          self.solver_order, self.dtype)

    def condition_shape(self, latent: tuple[int, ...]) -> tuple[int, ...]:
        """The first-frame condition: mask channels + the VAE latents of the image followed by zero frames, every
        latent frame (I2V); TI2V: the image's latents alone, one frame."""
        if self.expand_timesteps:
            return (1, self.z_dim, 1, *latent[3:])
        return (1, self.z_dim + self.temporal_factor, *latent[2:])

    def sample_spec(self, sample: Sample) -> dict[str, TensorSpec]:
        return self.state_spec(self.params_of(sample))

    # 3. Encoding: text, image, starting noise.

    @staticmethod
    def _prompt_key(p: WanParams) -> tuple[str, str, bool]:
        return p.prompt, p.negative_prompt, p.guidance_scale > 1

    def expect_samples(self, samples: list[Sample]) -> None:
        """These are all the samples this model will encode: once their prompts are embedded, UMT5 (11 GB for the
        14B models) is freed. A server never calls this, as any prompt may come. NOTE: the cache holds the
        embeddings of at most `PROMPTS_KEPT` prompts; a job file with more keeps UMT5 loaded."""
        expected = {self._prompt_key(self.params_of(s)) for s in samples}
        self._prompts_to_come = expected if len(expected) <= PROMPTS_KEPT else None

    def _prompt_embeds(self, p: WanParams) -> tuple[torch.Tensor, torch.Tensor]:
        """UMT5 embeddings of the prompt and the negative prompt, padded to 512 tokens as the pipeline pads them;
        computed once per prompt pair (a server's jobs often repeat them)."""
        use_cfg = p.guidance_scale > 1
        key = self._prompt_key(p)
        if key not in self._prompt_cache:
            pipe = self.pipeline
            if pipe.text_encoder is None:
                raise RuntimeError("WanModel.encode: this model was loaded without its text encoder")
            text_device = torch.device("cpu") if p.text_encoder_device == "cpu" else self.device
            cond, uncond = pipe.encode_prompt(prompt=p.prompt, negative_prompt=p.negative_prompt,
                                              do_classifier_free_guidance=use_cfg, num_videos_per_prompt=1,
                                              max_sequence_length=TEXT_TOKENS, device=text_device)
            uncond = torch.zeros_like(cond) if uncond is None else uncond
            if len(self._prompt_cache) >= PROMPTS_KEPT:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
            self._prompt_cache[key] = (cond.to(self.device, self.dtype), uncond.to(self.device, self.dtype))
            if self._prompts_to_come is not None:
                self._prompts_to_come.discard(key)
                if not self._prompts_to_come:
                    self._free_text_encoder()
        return self._prompt_cache[key]

    def _free_text_encoder(self) -> None:
        self.pipeline.text_encoder = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.no_grad()
    def encode(self, sample: Sample) -> SampleState:
        """Conditioning and starting noise of `sample`, as the pipeline computes them. NOTE: one CPU generator;
        the pipeline draws only the initial latents (the VAE encodes the condition with its mode, no noise)."""
        pipe, device, p = self.pipeline, self.device, self.params_of(sample)
        image = _rgb(sample.image)
        generator = torch.Generator("cpu").manual_seed(sample.seed)

        # 1. Text: the prompt and the negative prompt through UMT5.
        prompt_embeds, negative_embeds = self._prompt_embeds(p)

        # 2. Wan 2.1: the CLIP image embedding (the penultimate hidden states).
        state: SampleState = {}
        if self.image_dim is not None:
            state["image_embeds"] = pipe.encode_image(image, device).to(self.dtype)

        # 3. Starting noise and the first-frame condition (mask + VAE latents), in fp32 as the pipeline does.
        pixels = pipe.video_processor.preprocess(image, height=p.height, width=p.width).to(device, torch.float32)
        # NOTE: TI2V also returns its first-frame mask, which `denoise_block` rebuilds from the latents' shape.
        latents, condition = pipe.prepare_latents(pixels, 1, self.z_dim, p.height, p.width, p.frames, torch.float32,
                                                  device, generator)[:2]
        ordered = {"latents": latents, "condition": condition, "prompt_embeds": prompt_embeds,
                   "negative_prompt_embeds": negative_embeds, **state}
        SolverState.initial(self.solver_order, latents).into(ordered)
        guidance_2 = p.guidance[1]
        ordered["sampling"] = torch.tensor([p.steps, p.guidance_scale, guidance_2], dtype=torch.float64)
        return ordered

    # 4. Denoising a block of steps.

    @torch.no_grad()
    def denoise(self, state: SampleState, steps: range, on_step: StepCallback | None = None) -> torch.Tensor:
        """Run `steps`, a contiguous block of the sample's schedule, on `state`; return the new latents. The
        solver's history in `state` is advanced in place, so the state can travel on to the next block."""
        num_steps, guidance, guidance_2 = state["sampling"].tolist()
        num_steps = int(num_steps)
        if steps.step != 1 or not 0 <= steps.start <= steps.stop <= num_steps:
            raise ValueError(f"denoise: {steps} is not a contiguous block of range(0, {num_steps})")
        on_device = {k: v.to(self.device) for k, v in state.items() if k not in ("sampling", "solver_scalars")}
        on_device["solver_scalars"] = state["solver_scalars"]
        with context_cache.kept_for(self.denoisers()):  # a block's context is the same at every step
            latents, solver = denoise_block(self.experts(), self.pipeline.scheduler, num_steps, on_device, steps,
                                            (guidance, guidance_2), self.dtype, self.guide, on_step,
                                            self.expand_timesteps)
        solver.into(state)
        return latents

    def release_denoiser(self) -> None:
        """Drop the transformers and encoders (phase 2 needs only the VAE) and return their memory."""
        pipe = self.pipeline
        pipe.transformer = pipe.transformer_2 = None
        pipe.text_encoder = pipe.image_encoder = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # 5. Decoding.

    def placeholder_state(self, sample: Sample) -> SampleState:
        """Zeros of a sample's state shapes with a fresh solver, for a rank that does not encode (memory-probe)."""
        p = self.params_of(sample)
        state = {k: torch.zeros(s.shape, dtype=s.dtype, device=s.device_for(self.device))
                 for k, s in self.sample_spec(sample).items()}
        SolverState.initial(self.solver_order, state["latents"]).into(state)
        state["sampling"] = torch.tensor([p.steps, *p.guidance], dtype=torch.float64)
        return state

    def stock_latents(self, sample: Sample, step_end) -> torch.Tensor:
        """The stock pipeline's own `__call__` on `sample`, latents out (bench's baseline row); `step_end` is its
        `callback_on_step_end`."""
        p = self.params_of(sample)
        two_experts = self.boundary_timestep is not None
        return self.pipeline(
            _rgb(sample.image), prompt=p.prompt, negative_prompt=p.negative_prompt, height=p.height, width=p.width,
            num_frames=p.frames, num_inference_steps=p.steps, guidance_scale=p.guidance_scale,
            guidance_scale_2=p.guidance_scale_2 if two_experts else None,
            generator=torch.Generator("cpu").manual_seed(sample.seed), output_type="latent",
            callback_on_step_end=step_end,
        ).frames

    def decode_units(self, sample: Sample) -> tuple[int, int]:
        """(units, units per chunk) phase 2 may spread over ranks: one, as the causal VAE decodes a video frame by
        frame with a cache of the frames before, so one video decodes whole on one rank."""
        return 1, 1

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> np.ndarray:
        """Final latents [1, C, T, h, w] -> uint8 frames [F, H, W, 3]. The causal VAE decodes frame by frame with
        its feature cache, in fp32, on one device (no tiling: tiles are blended, which changes the output)."""
        pipe = self.pipeline
        device = torch.device("cpu") if self.params.vae_device == "cpu" else self.device
        parameter = next(pipe.vae.parameters())
        if parameter.device != device or parameter.dtype != torch.float32:  # diffusers warns on every cast
            pipe.vae.to(device, torch.float32)
        vae = pipe.vae.config
        latents = latents.to(device, torch.float32)
        mean = torch.tensor(vae.latents_mean).view(1, vae.z_dim, 1, 1, 1).to(latents)
        inverse_std = 1.0 / torch.tensor(vae.latents_std).view(1, vae.z_dim, 1, 1, 1).to(latents)
        video = pipe.vae.decode(latents / inverse_std + mean, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
        return (frames * 255).round().astype(np.uint8)

    def input_image(self, sample: Sample) -> PIL.Image.Image:
        p = self.params_of(sample)
        return self.pipeline.video_processor.resize(_rgb(sample.image), p.height, p.width)


def load_stock(source, device: torch.device, dtype: torch.dtype, params: WanParams) -> WanModel:
    """Everything on one device, for the stock pipeline's `__call__` (bench's baseline row)."""
    return WanModel.load(source, device, dtype, params, stock=True)
