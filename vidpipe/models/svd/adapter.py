"""The `svd` adapter: Stable Video Diffusion on one device, built from diffusers' own pipeline pieces.

A `StableVideoDiffusionPipeline` object holds the components and supplies every helper (image encoding, noise
augmentation, time ids, initial noise, VAE decode, post-processing); only the denoising loop is ours
(`sampling.denoise_block`), so that any contiguous block of steps can run on its own.
"""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from vidpipe.models.base import Sample, SampleState, StepCallback, TensorSpec
from vidpipe.models.source import ModelSource
from vidpipe.models.svd.sampling import denoise_block
from vidpipe.models.svd.sizes import SVDParams, _config, resolve_size


def meta_parameter_counts(source: ModelSource) -> dict[str, int]:
    """Parameters of each component, counted on the meta device from the configs (no memory, no weights)."""
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config(_config(source, "unet"))
        vae = AutoencoderKLTemporalDecoder.from_config(_config(source, "vae"))
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(source.path / "image_encoder"))
    return {name: sum(p.numel() for p in module.parameters())
            for name, module in (("unet", unet), ("vae", vae), ("image_encoder", encoder))}


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    # Only when needed: diffusers warns on every dtype cast, and a no-op `.to` still walks every parameter.
    parameter = next(module.parameters())
    if parameter.device != device or parameter.dtype != dtype:
        module.to(device, dtype)
    return module


def random_components(
    config_dir: Path, device: torch.device, dtype: torch.dtype, encoders: bool = True, unet_device=None
) -> dict[str, object]:
    """Pipeline components with random weights from a config directory, identical on every call.

    NOTE: each component is seeded and built on the CPU, then moved: every rank of a run, whatever its plan,
    holds the same weights without any of them being written to disk. (Built on a GPU, the weights would come
    from CUDA's generator, and a plan that builds on the CPU, as fsdp does, would hold other weights.)
    """
    unet_config = UNetSpatioTemporalConditionModel.load_config(config_dir / "unet")
    vae_config = AutoencoderKLTemporalDecoder.load_config(config_dir / "vae")
    unet_device = torch.device(unet_device or device)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(0)
        unet = UNetSpatioTemporalConditionModel.from_config(unet_config)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(0)
        vae = AutoencoderKLTemporalDecoder.from_config(vae_config)
        image_encoder = None
        if encoders:
            torch.manual_seed(0)
            encoder_config = CLIPVisionConfig.from_pretrained(config_dir / "image_encoder")
            image_encoder = CLIPVisionModelWithProjection(encoder_config)
    return {
        "unet": _place(unet, unet_device, dtype),
        "vae": _place(vae, device, dtype),
        "image_encoder": _place(image_encoder, device, dtype) if image_encoder is not None else None,
        "scheduler": EulerDiscreteScheduler.from_pretrained(config_dir / "scheduler"),
        "feature_extractor": CLIPImageProcessor.from_pretrained(config_dir / "feature_extractor"),
    }


def load_components(model_dir: Path, dtype: torch.dtype, encoders: bool = True) -> dict[str, object]:
    """Pipeline components from a local diffusers SVD directory, fp16 weight files where present."""

    def variant(component: str) -> str | None:
        return "fp16" if any((model_dir / component).glob("*fp16*.safetensors")) else None

    common = {"local_files_only": True}
    image_encoder = None
    if encoders:
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            model_dir, subfolder="image_encoder", dtype=dtype, variant=variant("image_encoder"), **common
        )
    return {
        "unet": UNetSpatioTemporalConditionModel.from_pretrained(
            model_dir, subfolder="unet", torch_dtype=dtype, variant=variant("unet"), **common
        ),
        "vae": AutoencoderKLTemporalDecoder.from_pretrained(
            model_dir, subfolder="vae", torch_dtype=dtype, variant=variant("vae"), **common
        ),
        "image_encoder": image_encoder,
        "scheduler": EulerDiscreteScheduler.from_pretrained(model_dir, subfolder="scheduler", **common),
        "feature_extractor": CLIPImageProcessor.from_pretrained(
            model_dir, subfolder="feature_extractor", **common
        ),
    }


def _rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    # The pipeline's helpers assume 3 channels; RGBA or grey inputs would otherwise break them.
    return image if image.mode == "RGB" else image.convert("RGB")


class SVDModel:
    """Stable Video Diffusion behind the `DiffusionModel` protocol, on one device."""

    family = "svd"
    #: What `--compile` compiles one by one (diffusers' `_repeated_blocks` convention, which SVD's UNet does not
    #: declare itself).
    repeated_blocks = ("ResnetBlock2D", "BasicTransformerBlock", "TemporalBasicTransformerBlock", "TemporalResnetBlock")

    def __init__(
        self,
        pipeline: StableVideoDiffusionPipeline,
        device: torch.device,
        dtype: torch.dtype,
        params: SVDParams,
        size: tuple[int, int, int],
    ):
        self.pipeline = pipeline
        self.device = device
        self.dtype = dtype
        self.params = params
        self.num_steps = params.steps
        self.num_frames, self.height, self.width = size
        self.scheduler_config = pipeline.scheduler.config
        # Kept apart from the UNet, which `release_denoiser` drops before phase 2.
        self.latent_channels = pipeline.unet.config.in_channels // 2
        self.embedding_dim = pipeline.unet.config.cross_attention_dim

    @classmethod
    def load(
        cls,
        source: ModelSource,
        device: torch.device,
        dtype: torch.dtype | None,
        params: SVDParams,
        encoders: bool = True,
        stage_unet_on_cpu: bool = False,
    ) -> SVDModel:
        """Load (kind "dir") or build (kind "random") on `device`; dtype None: fp16 on CUDA, fp32 on CPU.

        `encoders=False` skips the CLIP image encoder, for ranks that never call `encode`.
        `stage_unet_on_cpu` leaves the UNet on the CPU, for a strategy that moves it to the device in shards.
        """
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # compared with parameters' devices
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        size = resolve_size(source, params.frames, params.height, params.width)
        if source.kind == "random":
            unet_device = torch.device("cpu") if stage_unet_on_cpu else device
            components = random_components(source.path, device, dtype, encoders, unet_device)
        else:
            components = load_components(source.path, dtype, encoders)
        for module in (components["unet"], components["vae"], components["image_encoder"]):
            if module is not None:
                module.eval().requires_grad_(False)
                if not (module is components["unet"] and stage_unet_on_cpu):
                    module.to(device)
        pipeline = StableVideoDiffusionPipeline(**components)
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline, device, dtype, params, size)

    @property
    def unet(self) -> torch.nn.Module | None:
        return self.pipeline.unet

    @unet.setter
    def unet(self, denoiser: torch.nn.Module | None) -> None:
        """Parallel axes replace the UNet with their wrapper of it (same call signature)."""
        self.pipeline.unet = denoiser

    def params_of(self, sample: Sample | None) -> SVDParams:
        """The sample's own parameters when it carries them (a server's jobs differ), else the model's; sizes
        left at None are the model's."""
        p = sample.params if sample is not None and sample.params is not None else self.params
        return replace(p, frames=p.frames or self.num_frames, height=p.height or self.height,
                       width=p.width or self.width)

    def state_spec(self, params: SVDParams | None = None) -> dict[str, TensorSpec]:
        """Shapes and dtypes of what `encode` returns for `params` (default: the model's), in a fixed order (the
        conditioning is compact; `sampling` is [steps, min guidance, max guidance], so that a rank continuing
        another's sample needs nothing else)."""
        p = params or self.params_of(None)
        factor = self.pipeline.vae_scale_factor
        latent = (self.latent_channels, p.height // factor, p.width // factor)
        return {
            "latents": TensorSpec((1, p.frames, *latent), self.dtype),
            "image_embeddings": TensorSpec((1, 1, self.embedding_dim), self.dtype),
            "image_latents": TensorSpec((1, *latent), self.dtype),
            "added_time_ids": TensorSpec((1, 3), self.dtype),
            "sampling": TensorSpec((3,), torch.float64, on_host=True),
        }

    def sample_spec(self, sample: Sample) -> dict[str, TensorSpec]:
        return self.state_spec(self.params_of(sample))

    @torch.no_grad()
    def encode(self, sample: Sample) -> SampleState:
        """Conditioning and starting noise of `sample` (PIL image, seed), as the pipeline computes them.

        NOTE: one CPU generator, drawn in the pipeline's order: the noise-augmentation noise first, then the
        initial latents. Any other order or generator changes every output.
        """
        pipe, device, p = self.pipeline, self.device, self.params_of(sample)
        if pipe.image_encoder is None:
            raise RuntimeError("SVDModel.encode: this model was loaded with encoders=False")
        image = _rgb(sample.image)
        generator = torch.Generator("cpu").manual_seed(sample.seed)

        # 1. CLIP image embedding: the conditional half only (`denoise_block` adds the zero half).
        embeddings = pipe._encode_image(image, device, 1, False)

        # 2. Noise-augmented image -> VAE latents. As the pipeline does, an fp16 VAE with force_upcast encodes
        #    in fp32; the cast is repeated each time because `decode` may have moved the VAE since.
        pixels = pipe.video_processor.preprocess(image, height=p.height, width=p.width).to(device)
        noise = randn_tensor(pixels.shape, generator=generator, device=device, dtype=pixels.dtype)
        pixels = pixels + p.noise_aug_strength * noise
        upcast = self.dtype == torch.float16 and pipe.vae.config.force_upcast
        _place(pipe.vae, device, torch.float32 if upcast else self.dtype)
        image_latents = pipe._encode_vae_image(pixels, device, 1, False).to(embeddings.dtype)

        # 3. Micro-conditioning. SVD was trained on fps - 1.
        time_ids = pipe._get_add_time_ids(
            p.fps - 1, p.motion_bucket_id, p.noise_aug_strength, embeddings.dtype, 1, 1, False
        ).to(device)

        # 4. Starting noise, scaled by this schedule's initial sigma (hence set_timesteps first).
        pipe.scheduler.set_timesteps(p.steps, device=device)
        shape = (1, p.frames, 2 * self.latent_channels, p.height, p.width)  # 2x: UNet input
        latents = pipe.prepare_latents(*shape, embeddings.dtype, device, generator)
        return {
            "latents": latents,
            "image_embeddings": embeddings,
            "image_latents": image_latents,
            "added_time_ids": time_ids,
            "sampling": torch.tensor([p.steps, p.min_guidance, p.max_guidance], dtype=torch.float64),
        }

    @torch.no_grad()
    def denoise(self, state: SampleState, steps: range, on_step: StepCallback | None = None) -> torch.Tensor:
        """Run `steps`, a contiguous block of the sample's schedule, on `state`; return the new latents."""
        if "sampling" in state:
            num_steps, min_guidance, max_guidance = state["sampling"].tolist()
            num_steps = int(num_steps)
        else:
            num_steps, min_guidance, max_guidance = self.num_steps, self.params.min_guidance, self.params.max_guidance
        if steps.step != 1 or not 0 <= steps.start <= steps.stop <= num_steps:
            raise ValueError(f"denoise: {steps} is not a contiguous block of range(0, {num_steps})")
        if self.pipeline.unet is None:
            raise RuntimeError("SVDModel.denoise: the denoiser was released")
        state = {key: tensor.to(self.device) for key, tensor in state.items() if key != "sampling"}
        return denoise_block(
            self.pipeline.unet, self.pipeline.scheduler, num_steps, state, steps, (min_guidance, max_guidance),
            on_step,
        )

    def denoisers(self) -> list[torch.nn.Module]:
        """The denoiser(s) a model-level axis patches: the UNet (or the wrapper a parallel axis put in its place)."""
        return [self.unet] if self.unet is not None else []

    def release_denoiser(self) -> None:
        """Drop the UNet and image encoder (phase 2 needs only the VAE) and return their memory."""
        self.pipeline.unet = None
        self.pipeline.image_encoder = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def placeholder_state(self, sample: Sample) -> SampleState:
        """Zeros of a sample's state shapes, for a rank that does not encode (memory-probe): the same memory."""
        return {k: torch.zeros(s.shape, dtype=s.dtype, device=s.device_for(self.device))
                for k, s in self.sample_spec(sample).items() if k != "sampling"}

    def stock_latents(self, sample: Sample, step_end) -> torch.Tensor:
        """The stock pipeline's own `__call__` on `sample`, latents out (bench's baseline row); `step_end` is its
        `callback_on_step_end`."""
        p = self.params_of(sample)
        return self.pipeline(
            sample.image, height=p.height, width=p.width, num_frames=p.frames, num_inference_steps=p.steps, fps=p.fps,
            motion_bucket_id=p.motion_bucket_id, noise_aug_strength=p.noise_aug_strength,
            min_guidance_scale=p.min_guidance, max_guidance_scale=p.max_guidance,
            generator=torch.Generator("cpu").manual_seed(sample.seed), output_type="latent",
            callback_on_step_end=step_end,
        ).frames

    def decode_units(self, sample: Sample) -> tuple[int, int]:
        """(frames, decode chunk size): phase 2 may decode one video's chunks on several ranks (each chunk is
        decoded on its own by the pipeline, so the split changes nothing)."""
        p = self.params_of(sample)
        return p.frames, p.decode_chunk_size

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> np.ndarray:
        """Final latents [1, F, C, h, w] -> uint8 frames [F, H, W, 3], decoded in fp32, chunk by chunk."""
        pipe = self.pipeline
        device = torch.device("cpu") if self.params.vae_device == "cpu" else self.device
        _place(pipe.vae, device, torch.float32)
        frames = pipe.decode_latents(
            latents.to(device, torch.float32), latents.shape[1], decode_chunk_size or self.params.decode_chunk_size
        )
        video = pipe.video_processor.postprocess_video(frames, output_type="np")[0]
        # Rounded as diffusers' numpy_to_pil does, so the frames equal the pipeline's PIL output.
        return (video * 255).round().astype(np.uint8)

    def input_image(self, sample: Sample) -> PIL.Image.Image:
        """The input image resized as the VAE sees it (height x width), e.g. for `{stem}_input.png`."""
        p = self.params_of(sample)
        return self.pipeline.video_processor.resize(_rgb(sample.image), p.height, p.width)


def load_stock(source: ModelSource, device: torch.device, dtype: torch.dtype, params: SVDParams) -> SVDModel:
    """Everything on one device, for the stock pipeline's `__call__` (bench's baseline row)."""
    return SVDModel.load(source, device, dtype, params)
