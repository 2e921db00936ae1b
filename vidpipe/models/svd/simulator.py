"""The simulator model: a shape-faithful stand-in for SVD's UNet, with no weights to download.

It runs through the very same denoising loop and Euler scheduler as `svd` (so the step pipeline's hand-offs and
scheduler continuation are exercised for real); only the UNet is replaced by a few cheap elementwise ops. With
`step_ms` each UNet call also waits that long without using the CPU, as a GPU kernel would, so W ranks can be
studied on a machine with fewer cores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources

import torch
from diffusers.utils.torch_utils import randn_tensor

from vidpipe.models.base import Sample, SampleState, StepCallback, TensorSpec
from vidpipe.models.svd.architecture import temporal_layers
from vidpipe.models.svd.sampling import denoise_block, fresh_scheduler
from vidpipe.models.svd.simulator_temporal import apply_stand_ins, stand_in_layers

#: SVD's CLIP image-embedding width, so the conditioning that travels in `pp` has the real size.
EMBEDDING_DIM = 1024


def svd_scheduler_config() -> dict:
    """SVD-XT's own EulerDiscreteScheduler config (sigma_max 700, sigma_min 0.002, continuous timesteps)."""
    path = resources.files("vidpipe.models.svd") / "configs" / "svd-xt" / "scheduler" / "scheduler_config.json"
    return json.loads(path.read_text())


def svd_unet_config() -> dict:
    """SVD-XT's UNet config: where its frame-mixing layers are (the stand-ins copy them)."""
    path = resources.files("vidpipe.models.svd") / "configs" / "svd-xt" / "unet" / "config.json"
    return json.loads(path.read_text())


@dataclass(frozen=True)
class DummyParams:
    steps: int
    latent_shape: tuple[int, int, int, int, int]  # B C F H W, as the CLI takes it
    step_ms: float = 0.0
    min_guidance: float = 1.0
    max_guidance: float = 3.0
    temporal_layers: bool = False  # SVD-XT's frame-mixing layers as stand-ins (for sp's collectives)


#: Parameter-bearing blocks of the stand-in UNet (sharded one by one under fsdp).
DUMMY_BLOCKS = 4


class _ChannelScale(torch.nn.Module):
    """out = x * w[c]: elementwise, so bit-identical whatever the thread count."""

    def __init__(self, channels: int, k: int, dtype: torch.dtype, device):
        super().__init__()
        weight = 1.0 + 0.01 * (k + 1) * torch.linspace(-1.0, 1.0, channels)
        self.weight = torch.nn.Parameter(weight.to(device, dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, 1, -1, 1, 1)


class DummyUNet(torch.nn.Module):
    """Same call signature and output shape as `UNetSpatioTemporalConditionModel`; no weights.

    With `step_ms` it behaves like a GPU running a fixed-time kernel: call k of a block ends at
    `block_started + (k + 1) * step_ms`, so the CPU-side work around it (the scheduler, guidance, hand-offs,
    all microseconds on a GPU) overlaps the wait instead of adding to it. A CPU that falls behind is not
    waited for: contention still shows. The cost model of the latency axes: a call that gets part of the work
    (cfg: one of the 2 batch rows; sp: some of the frames) takes that fraction of `step_ms`, as a GPU kernel
    whose time is proportional to its work would; the communication around it is real.
    """

    def __init__(self, latent_channels: int, step_ms: float, dtype: torch.dtype = torch.float32, device=None,
                 full_work: int = 1, temporal: torch.nn.ModuleList | None = None):
        super().__init__()
        self.latent_channels = latent_channels
        self.full_work = full_work  # batch rows x frames of a whole step
        # A few parameter-bearing blocks, so `fsdp` has something to shard. The same fixed values on every rank
        # (no random init to agree on); a per-channel scale close to 1.
        self.blocks = torch.nn.ModuleList(
            _ChannelScale(latent_channels, k, dtype, device) for k in range(DUMMY_BLOCKS)
        )
        self.temporal = temporal if temporal is not None else torch.nn.ModuleList()
        self.step_ms = step_ms
        self.block_started = 0.0
        self.calls_in_block = 0

    def start_block(self) -> None:
        self.block_started = time.perf_counter()
        self.calls_in_block = 0

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False):
        noisy, image = sample[:, :, : self.latent_channels], sample[:, :, self.latent_channels :]
        # NOTE: elementwise ops only (plus a reduction too small to be split over threads), so the result is
        # bit-identical whatever the rank's thread count: `simulate` verifies every sample exactly on CPU.
        cond = encoder_hidden_states.mean(dim=(1, 2)) + added_time_ids[:, 1] / 255.0
        scale = (0.1 * (torch.sigmoid(timestep) + cond)).view(-1, 1, 1, 1, 1)
        out = noisy.add(image, alpha=0.5).mul_(scale)
        for block in self.blocks:
            out = block(out)
        out = apply_stand_ins(self.temporal, out)
        if self.step_ms > 0:
            work = sample.shape[0] * sample.shape[1] / self.full_work
            self.calls_in_block += work
            kernel_done = self.block_started + self.calls_in_block * self.step_ms / 1000.0
            time.sleep(max(0.0, kernel_done - time.perf_counter()))  # wall time without CPU time
        return (out,)


class DummyModel:
    """The `dummy` adapter: seeded random conditioning, the real SVD sampler, no decode."""

    repeated_blocks = ()  # nothing for `--compile` (which the dummy model refuses)

    def __init__(self, params: DummyParams, device: torch.device, dtype: torch.dtype):
        self.params = params
        self.device = device
        self.dtype = dtype
        self.num_steps = params.steps
        batch, channels, frames, height, width = params.latent_shape
        self.latents_shape = (batch, frames, channels, height, width)  # SVD's layout: frames before channels
        self.scheduler = fresh_scheduler(svd_scheduler_config(), self.num_steps, device)
        guidance_rows = 2 if params.max_guidance > 1 else 1
        temporal = None
        if params.temporal_layers:
            temporal = stand_in_layers(temporal_layers(svd_unet_config()), dtype, device)
        self.stand_in = DummyUNet(channels, params.step_ms, dtype, device, full_work=guidance_rows * batch * frames,
                                  temporal=temporal)
        self.unet = self.stand_in  # what denoise calls: the stand-in, or a parallel axis' wrapper of it

    def state_spec(self) -> dict[str, TensorSpec]:
        batch, _frames, channels, height, width = self.latents_shape
        return {
            "latents": TensorSpec(self.latents_shape, self.dtype),
            "image_embeddings": TensorSpec((batch, 1, EMBEDDING_DIM), self.dtype),
            "image_latents": TensorSpec((batch, channels, height, width), self.dtype),
            "added_time_ids": TensorSpec((batch, 3), self.dtype),
        }

    def sample_spec(self, sample: Sample) -> dict[str, TensorSpec]:
        return self.state_spec()  # the simulator's samples all have the run's shape

    def encode(self, sample: Sample) -> SampleState:
        spec = self.state_spec()
        generator = torch.Generator("cpu").manual_seed(sample.seed)
        state = {
            name: randn_tensor(spec[name].shape, generator=generator, device=self.device, dtype=self.dtype)
            for name in ("image_embeddings", "image_latents")
        }
        batch = self.latents_shape[0]
        state["added_time_ids"] = torch.tensor([[6.0, 127.0, 0.02]] * batch, dtype=self.dtype, device=self.device)
        noise = randn_tensor(self.latents_shape, generator=generator, device=self.device, dtype=self.dtype)
        state["latents"] = noise * self.scheduler.init_noise_sigma
        return state

    @torch.no_grad()
    def denoise(self, state: SampleState, steps: range, on_step: StepCallback | None = None) -> torch.Tensor:
        guidance = (self.params.min_guidance, self.params.max_guidance)
        self.stand_in.start_block()
        return denoise_block(self.unet, self.scheduler, self.num_steps, state, steps, guidance, on_step)

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.unet] if self.unet is not None else []

    def release_denoiser(self) -> None:
        self.unet = None

    def decode(self, latents: torch.Tensor):
        raise NotImplementedError("the dummy model has no VAE: `simulate` stops after phase 1")
