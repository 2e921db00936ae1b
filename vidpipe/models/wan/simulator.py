"""The simulator's Wan: a stand-in for Wan's transformer, as many blocks and as many tokens as the real one, run
through the real Wan sampling loop, so that `vidpipe simulate --model wan2.1-i2v-14b-720p-random` exercises every
plan with Wan's real state and Wan's real collectives on a machine without GPUs.

Real: the denoising loop (`sampling.denoise_block`), UniPC from the flavor's own scheduler config with its history
in the sample's state, the expert switch (Wan 2.2 A14B), the tensors that travel in a pp hand-off (latents,
first-frame condition, 512-token text embeddings, image embedding, solver history, at their real sizes), the token
grid (T x h/2 x w/2, 75,600 tokens at 81 x 720 x 1280), the block count (40 for the 14B models), and the plan's
axes exactly as `parallelize.py` applies them: `SplitGuidance` for cfg, `apply_sp` for sp (the rotary embedding
of the whole grid cut to local tokens, local tokens from the first block on, the gather after `proj_out`, the
token and head split of `UlyssesSelfAttention`).
Stand-in: each layer's arithmetic. A head has `HEAD_DIM` channel instead of 128, and attention is causal linear
attention (a running sum over the tokens: O(L)) instead of softmax attention (O(L^2): hours a call at 75,600
tokens on a CPU); under sp it runs between the same two all-to-alls as Ulysses. Every op is elementwise or a
sequential running sum, so the result does not depend on a rank's thread count.
With `step_ms` each transformer call also waits, without using the CPU, `step_ms` x its share of a step's work
(tokens x calls), like a GPU kernel; the same rule as SVD's stand-in (`models/svd/simulator.py`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from vidpipe.errors import UsageError
from vidpipe.models.base import Sample, SampleState, StepCallback, TensorSpec
from vidpipe.models.wan.cost import wan_bytes_per_step
from vidpipe.models.wan.parallelize import UlyssesSelfAttention
from vidpipe.models.wan.sampling import (
    Experts,
    SequentialGuidance,
    SolverState,
    denoise_block,
    expert_switch_step,
    state_spec,
)
from vidpipe.models.wan.sizes import DEFAULT_SIZES, denoiser_config, image_token_count, size_factors
from vidpipe.parallel.comm import Group, all_to_all
from vidpipe.parallel.gpu_model import gpu_model_figures
from vidpipe.parallel.plan import ParallelPlan, frame_split, parse_plan

#: The flavors' configs (`models/registry.py WAN_CONFIGS`): the simulator takes the full-size ones (`WAN_RANDOM`).
CONFIGS = Path(__file__).parent / "configs"
#: Channels per head in the stand-in (Wan: 128), and the share of each block's output added to its input.
HEAD_DIM = 1
RESIDUAL = 0.01
#: The pipeline's default guidance (both experts), so the step makes its two calls.
GUIDANCE = (5.0, 5.0)

#: Wan's own multi-GPU figures, for reference beside our model: their measurements, not ours.
PUBLISHED_SPEEDUPS = {
    "wan2.1": "Wan2.1 I2V-14B at 720p, FSDP + Ulysses: 1.98x / 3.69x / 6.25x on 2 / 4 / 8 H800 (Wan2.1's README)",
    "wan2.2": "Wan2.2 I2V-A14B: 6.64x on 8 H100 (Wan2.2's README)",
    "wan2.2-ti2v": "Wan2.2 TI2V-5B: its GPU figures are in Wan2.2's README; none is modelled here",
}


def published_speedups(flavor: str) -> str:
    return PUBLISHED_SPEEDUPS["wan2.2-ti2v" if "ti2v" in flavor else flavor.split("-")[0]]


# 1. What the stand-in takes from a flavor's configs.


@dataclass(frozen=True)
class FlavorConfigs:
    transformer: dict  # either expert's config: block count, heads, patch, channels, text and image widths
    scheduler: dict
    boundary_ratio: float | None  # Wan 2.2 A14B: the expert switch; None: one expert
    image_tokens: int | None  # Wan 2.1's CLIP image embedding
    expand_timesteps: bool = False  # Wan 2.2 TI2V-5B: per-token timesteps, the image's latents as the first frame


def read_flavor(flavor: str) -> FlavorConfigs:
    path = CONFIGS / flavor
    index = json.loads((path / "model_index.json").read_text())
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    return FlavorConfigs(denoiser_config(path), scheduler, index.get("boundary_ratio"), image_token_count(path),
                         bool(index.get("expand_timesteps", False)))


def expert_switch(flavor: str, steps: int) -> int | None:
    """The step where the flavor's low-noise expert takes over (None: one expert), as for the real model."""
    configs = read_flavor(flavor)
    return expert_switch_step(UniPCMultistepScheduler.from_config(configs.scheduler), configs.boundary_ratio, steps)


def default_latent_shape(flavor: str) -> tuple[int, int, int, int, int]:
    """B C T h w of the flavor's default video (81 x 720 x 1280 -> 1 16 21 90 160)."""
    frames, height, width = DEFAULT_SIZES[flavor]
    path = CONFIGS / flavor
    temporal, multiple = size_factors(path)
    spatial = multiple // denoiser_config(path)["patch_size"][1]
    return 1, denoiser_config(path)["out_channels"], (frames - 1) // temporal + 1, height // spatial, width // spatial


def token_count(config: dict, latent_shape) -> int:
    patch = config["patch_size"]
    return math.prod(size // p for size, p in zip(latent_shape[2:], patch, strict=True))


def check_latent_shape(flavor: str, latent_shape, plan: ParallelPlan) -> None:
    """UsageError unless `latent_shape` is a latent this flavor takes and every sp rank gets a token."""
    config = denoiser_config(CONFIGS / flavor)
    batch, channels, *grid = latent_shape
    patch = config["patch_size"]
    example = " ".join(map(str, default_latent_shape(flavor)))
    if batch != 1 or channels != config["out_channels"] or any(s % p for s, p in zip(grid, patch, strict=True)):
        raise UsageError(
            f"--latent-shape {' '.join(map(str, latent_shape))}: {flavor} takes latents 1 x "
            f"{config['out_channels']} x T x h x w with T, h, w multiples of its patch {'x'.join(map(str, patch))} "
            f"(T = (frames - 1) / 4 + 1, h = height / 8, w = width / 8); its default is {example}"
        )
    tokens = token_count(config, latent_shape)
    if plan.sp > tokens:
        raise UsageError(f"{plan.name} with {tokens} tokens: each rank of an sp group needs at least one token "
                         f"(sp{plan.sp} > {tokens}); use a larger --latent-shape or a smaller sp")


# 2. The stand-in transformer: `rope`, `blocks[k].attn1` and `proj_out`, the names `apply_sp` patches.


class GridRotary(torch.nn.Module):
    """Stand-in for Wan's rotary embedding: a value per token from its (frame, row, column), [1, L, 1, HEAD_DIM]
    twice, computed on the whole grid (under sp `LocalRotaryEmbedding` cuts it: global positions)."""

    def __init__(self, patch: tuple[int, int, int]):
        super().__init__()
        self.patch = patch

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = [s // p for s, p in zip(hidden_states.shape[2:], self.patch, strict=True)]
        axes = [torch.cos(0.3 * (k + 1) * torch.arange(n, device=hidden_states.device)) for k, n in enumerate(sizes)]
        grid = (axes[0].view(-1, 1, 1) * axes[1].view(1, -1, 1) * axes[2].view(1, 1, -1)).to(hidden_states.dtype)
        grid = grid.reshape(1, -1, 1, 1).expand(-1, -1, -1, HEAD_DIM)
        return 1 + 0.1 * grid, 1 - 0.1 * grid


def _exchange(x: torch.Tensor, part_dim: int, whole_dim: int, part_sizes: list[int], whole_sizes: list[int],
              group: Group) -> torch.Tensor:
    """One all-to-all: `x` holds this rank's part of dim `part_dim` (cut as `part_sizes`) and all of `whole_dim`;
    the result holds all of `part_dim` and this rank's part of `whole_dim` (cut as `whole_sizes`). Ulysses' two
    exchanges are this, tokens <-> heads, with `UlyssesSelfAttention`'s parts and order."""
    starts = [sum(whole_sizes[:j]) for j in range(group.size)]
    shapes = []
    for i in range(group.size):
        shape = list(x.shape)
        shape[part_dim], shape[whole_dim] = part_sizes[i], whole_sizes[group.rank]
        shapes.append(shape)
    parts = all_to_all([x.narrow(whole_dim, s, n) for s, n in zip(starts, whole_sizes, strict=True)],
                       [math.prod(shape) for shape in shapes], group)
    return torch.cat([p.view(shape) for p, shape in zip(parts, shapes, strict=True)], dim=part_dim)


class StandInSelfAttention(torch.nn.Module):
    """`attn1`: q, k, v per head (`HEAD_DIM` channels), the keys rotated by the grid stand-in, then causal linear
    attention over every token: out_i = q_i x sum_{j <= i} k_j v_j / L. Under sp the Ulysses exchange surrounds
    it. NOTE: few passes over whole tensors (one product makes q, k and v): at 75,600 tokens x 40 heads each pass
    is 3 M values, 40 blocks a call, and the CPU cores are shared by every emulated rank."""

    def __init__(self, heads: int, k: int, dtype: torch.dtype, device):
        super().__init__()
        self.heads = heads
        weight = 1.0 + 0.01 * (k + 1) * torch.linspace(-1.0, 1.0, 3 * heads * HEAD_DIM)
        self.weight = torch.nn.Parameter(weight.to(device, dtype), requires_grad=False)
        self.split = None  # sp's `TokenSplit`, once `apply_sp` has set a processor

    def set_processor(self, processor) -> None:
        """`apply_sp` installs Ulysses here: keep its token split and make its two all-to-alls around the stand-in
        kernel (the real one is O(L^2))."""
        if not isinstance(processor, UlyssesSelfAttention):
            raise TypeError(f"the Wan stand-in runs Ulysses sp only, not {type(processor).__name__}")
        self.split = processor.split

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        freqs_cos, _freqs_sin = rotary  # [1, local tokens, 1, d]
        tokens = x.shape[1] if self.split is None else sum(self.split.sizes)
        weight = self.weight.view(3, 1, 1, self.heads, HEAD_DIM)
        weight = torch.cat([weight[:2], weight[2:] / tokens])  # the 1/L of the attention, on the values
        qkv = x.unflatten(-1, (self.heads, HEAD_DIM)).unsqueeze(0) * weight  # [3, B, local tokens, H, d]
        qkv[1].mul_(freqs_cos)
        if self.split is not None:  # tokens -> heads: all tokens of this rank's heads
            group = self.split.group
            head_sizes = frame_split(self.heads, group.size)
            qkv = _exchange(qkv, 2, 3, self.split.sizes, head_sizes, group)
        query, key, value = qkv
        # NOTE: a running sum is sequential (in double on CPU), so any split of the heads gives the same bits.
        out = (key * value).cumsum_(dim=1).mul_(query)
        if self.split is not None:  # heads -> tokens: this rank's tokens of every head
            out = _exchange(out, 2, 1, head_sizes, self.split.sizes, group)
        return out.flatten(2)


class StandInBlock(torch.nn.Module):
    """A transformer block: self-attention on the first heads x `HEAD_DIM` channels of each token, added to them
    in place; the other channels pass (the per-token rest of a block, cross-attention, feed-forward and
    modulation, adds nothing to what the plans must get right)."""

    def __init__(self, heads: int, k: int, dtype: torch.dtype, device):
        super().__init__()
        self.attn1 = StandInSelfAttention(heads, k, dtype, device)

    def forward(self, x: torch.Tensor, rotary) -> torch.Tensor:
        mixed = x[..., : self.attn1.heads * HEAD_DIM]
        mixed.add_(self.attn1(mixed, rotary), alpha=RESIDUAL)  # NOTE: x is this call's own token tensor
        return x


class ChannelScale(torch.nn.Module):
    def __init__(self, width: int, dtype: torch.dtype, device):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.9, 1.1, width).to(device, dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class EmulatedKernel:
    """GPU time, emulated: after a call, the block of steps has waited `step_ms` x the work done so far (whole
    steps = 1), without using the CPU; CPU work that fits in the wait overlaps it, as on a GPU."""

    def __init__(self, step_ms: float, full_work: int):
        self.step_ms, self.full_work = step_ms, full_work
        self.started, self.done = 0.0, 0.0

    def start(self) -> None:
        self.started, self.done = time.perf_counter(), 0.0

    def run(self, work: int) -> None:
        if self.step_ms <= 0:
            return
        self.done += work / self.full_work
        time.sleep(max(0.0, self.started + self.done * self.step_ms / 1000 - time.perf_counter()))


class StandInTransformer(torch.nn.Module):
    """Same call as `WanTransformer3DModel` (hidden_states [B, C_in, T, H, W] -> the flow [B, C_out, T, H, W])."""

    def __init__(self, config: dict, expert: int, kernel: EmulatedKernel, dtype: torch.dtype, device):
        super().__init__()
        self.patch = tuple(config["patch_size"])
        self.out_channels = config["out_channels"]
        heads, layers = config["num_attention_heads"], config["num_layers"]
        width = self.out_channels * math.prod(self.patch)
        if heads * HEAD_DIM > width:
            raise ValueError(f"the stand-in's {heads} heads need {heads * HEAD_DIM} of its {width} channels")
        self.rope = GridRotary(self.patch)
        self.blocks = torch.nn.ModuleList(
            StandInBlock(heads, expert * layers + k, dtype, device) for k in range(layers))
        self.proj_out = ChannelScale(width, dtype, device)
        self.kernel = kernel

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None,
                return_dict=False):
        rotary = self.rope(hidden_states)
        # 1. The patch embedding's stand-in: noisy latents + half the first-frame latents, scaled by the timestep
        #    and the context (prompt or negative prompt: the guidance calls differ), cut into the grid's tokens.
        noisy, image = hidden_states[:, : self.out_channels], hidden_states[:, -self.out_channels :]
        context = encoder_hidden_states[:, :, :8].mean(dim=(1, 2))  # NOTE: small enough for one thread
        if encoder_hidden_states_image is not None:
            context = context + encoder_hidden_states_image[:, :, :8].mean(dim=(1, 2))
        if timestep.dim() > 1:  # TI2V-5B: a timestep per token (0 on the image's frame); the stand-in takes the mean
            timestep = timestep.to(torch.float64).mean(dim=1)
        scale = 0.1 * (torch.sigmoid(timestep.to(noisy.dtype) / 1000) + context)
        tokens = _patchify(noisy.add(image, alpha=0.5) * scale.view(-1, 1, 1, 1, 1), self.patch)
        # 2. The blocks (under sp: on this rank's tokens from the first block on).
        for block in self.blocks:
            tokens = block(tokens, rotary)
        self.kernel.run(tokens.shape[0] * tokens.shape[1])
        # 3. Out (under sp gathered here), back to the latent's layout.
        return (_unpatchify(self.proj_out(tokens), self.patch, hidden_states.shape),)


def _patchify(x: torch.Tensor, patch) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, tokens in (frame, row, column) order, (pt, ph, pw, C)], as Wan orders them."""
    b, c, t, h, w = x.shape
    pt, ph, pw = patch
    x = x.view(b, c, t // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, -1, pt * ph * pw * c)


def _unpatchify(tokens: torch.Tensor, patch, shape) -> torch.Tensor:
    b, _c, t, h, w = shape
    pt, ph, pw = patch
    x = tokens.view(b, t // pt, h // ph, w // pw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, -1, t, h, w)


# 3. The model: the `DiffusionModel` protocol around the stand-in, with Wan's state and sampler.


@dataclass(frozen=True)
class WanStandInParams:
    flavor: str
    steps: int
    latent_shape: tuple[int, int, int, int, int]  # B C T h w
    step_ms: float = 0.0


class WanStandIn:
    """A Wan flavor's stand-in behind the `DiffusionModel` protocol: seeded random conditioning at the real sizes,
    the real sampler, no VAE."""

    family = "wan"  # so `models/wan/parallelize.py` applies the plan's axes, as to the real model
    repeated_blocks = ()  # the stand-in's blocks are not compiled

    def __init__(self, params: WanStandInParams, device: torch.device, dtype: torch.dtype):
        configs = read_flavor(params.flavor)
        self.params, self.device, self.dtype = params, device, dtype
        self.num_steps = params.steps
        self.config = configs.transformer
        self.image_tokens = configs.image_tokens
        self.expand_timesteps = configs.expand_timesteps
        self.condition_channels = self.config["in_channels"] - self.config["out_channels"]
        self.scheduler = UniPCMultistepScheduler.from_config(configs.scheduler)
        self.solver_order = configs.scheduler["solver_order"]
        calls = 2 if GUIDANCE[0] > 1 else 1
        self.kernel = EmulatedKernel(params.step_ms, calls * params.latent_shape[0] *
                                     token_count(self.config, params.latent_shape))
        self.high_noise = StandInTransformer(self.config, 0, self.kernel, dtype, device)
        self.boundary_ratio = configs.boundary_ratio
        self._switches: dict[int, int | None] = {}  # steps -> expert switch (asked once per sample in flight)
        self.low_noise = None
        self.boundary_timestep = None
        if configs.boundary_ratio is not None:
            self.low_noise = StandInTransformer(self.config, 1, self.kernel, dtype, device)
            self.boundary_timestep = configs.boundary_ratio * configs.scheduler["num_train_timesteps"]
        self.guide = SequentialGuidance()  # the `cfg` axis replaces it

    def expert_switch(self, steps: int) -> int | None:
        """As `WanModel.expert_switch`: the step pipeline's blocks break here on Wan 2.2 A14B."""
        if steps not in self._switches:
            self._switches[steps] = expert_switch_step(self.scheduler, self.boundary_ratio, steps)
        return self._switches[steps]

    @property
    def unet(self) -> torch.nn.Module | None:
        return self.high_noise

    @unet.setter
    def unet(self, denoiser) -> None:
        self.high_noise = denoiser

    def denoisers(self) -> list[torch.nn.Module]:
        return [m for m in (self.high_noise, self.low_noise) if m is not None]

    def state_spec(self) -> dict[str, TensorSpec]:
        """As `WanModel.state_spec`: what a sample carries, at Wan's sizes."""
        latent = tuple(self.params.latent_shape)
        # As `WanModel.condition_shape`: TI2V's condition is the image's latents alone, one frame.
        condition = (1, latent[1], 1, *latent[3:]) if self.expand_timesteps else (1, self.condition_channels,
                                                                                   *latent[2:])
        return state_spec(latent, condition, self.config["text_dim"],
                          self.config.get("image_dim"), self.image_tokens, self.solver_order, self.dtype)

    def sample_spec(self, sample: Sample) -> dict[str, TensorSpec]:
        return self.state_spec()  # the simulator's samples all have the run's shape

    def encode(self, sample: Sample) -> SampleState:
        spec = self.state_spec()
        generator = torch.Generator("cpu").manual_seed(sample.seed)
        drawn = [name for name in spec if name in ("latents", "condition", "prompt_embeds",
                                                   "negative_prompt_embeds", "image_embeds")]
        state = {name: randn_tensor(spec[name].shape, generator=generator, device=self.device, dtype=spec[name].dtype)
                 for name in drawn}
        SolverState.initial(self.solver_order, state["latents"]).into(state)
        state["sampling"] = torch.tensor([self.num_steps, *GUIDANCE], dtype=torch.float64)
        return state

    @torch.no_grad()
    def denoise(self, state: SampleState, steps: range, on_step: StepCallback | None = None) -> torch.Tensor:
        """As `WanModel.denoise`: the block `steps` of the sample's schedule; the solver's history in `state` is
        advanced in place, so the state can travel on."""
        num_steps, guidance, guidance_2 = state["sampling"].tolist()
        on_device = {k: v.to(self.device) for k, v in state.items() if k not in ("sampling", "solver_scalars")}
        on_device["solver_scalars"] = state["solver_scalars"]
        experts = Experts(self.high_noise, self.low_noise, self.boundary_timestep)
        self.kernel.start()
        latents, solver = denoise_block(experts, self.scheduler, int(num_steps), on_device, steps,
                                        (guidance, guidance_2), self.dtype, self.guide, on_step, self.expand_timesteps)
        solver.into(state)
        return latents

    def release_denoiser(self) -> None:
        self.high_noise = self.low_noise = None

    def decode(self, latents: torch.Tensor):
        raise NotImplementedError("the Wan stand-in has no VAE: `simulate` stops after phase 1")


# 4. What the collectives should send, and the stated GPU model.


def stand_in_bytes_per_step(flavor: str, plan: ParallelPlan, latent_shape, dtype_bytes: int) -> list[int]:
    """`wan_bytes_per_step` for the stand-in (its heads of `HEAD_DIM` channels): what the run must measure."""
    config = {**denoiser_config(CONFIGS / flavor), "attention_head_dim": HEAD_DIM}
    return wan_bytes_per_step(plan, config, *latent_shape[2:], dtype_bytes)


def wan_gpu_model(flavor: str, plan: ParallelPlan, latent_shape, step_ms: float, guidance: bool = True) -> dict:
    """The stated GPU model of `plan` for the real transformer (`parallel/gpu_model.py`): the one-GPU step
    (`step_ms`, both guidance calls) x the slowest rank's share of the tokens and calls; per transformer call under
    spK two all-to-alls per block and one gather after `proj_out`, one gather of the prediction for cfg; the bytes
    of `wan_bytes_per_step` in bf16. Beside it Wan's published figures, and the same model of Wan's own plans
    (Ulysses over all G GPUs: our spG) on 2, 4 and 8 GPUs."""
    config = denoiser_config(CONFIGS / flavor)
    model = _modelled(flavor, config, plan, latent_shape, step_ms, guidance)
    model["published"] = published_speedups(flavor)
    model["published_plans"] = {
        gpus: _modelled(flavor, config, parse_plan(f"sp{gpus}").resolve(gpus), latent_shape, step_ms,
                        guidance)["predicted_latency_speedup"]
        for gpus in (2, 4, 8)
    }
    return model


def _modelled(flavor: str, config: dict, plan: ParallelPlan, latent_shape, step_ms: float, guidance: bool) -> dict:
    tokens = token_count(config, latent_shape)
    calls_per_step = 2 if guidance else 1
    calls = 1 if plan.cfg > 1 or not guidance else 2  # this rank's transformer calls a step
    share = calls / calls_per_step * max(frame_split(tokens, plan.sp)) / tokens
    collectives = calls * (2 * config["num_layers"] + 1 if plan.sp > 1 else 0) + (1 if plan.cfg > 1 else 0)
    sent = max(wan_bytes_per_step(plan, config, *latent_shape[2:], 2, guidance))
    grid = "x".join(map(str, latent_shape[2:]))
    return gpu_model_figures(step_ms / 1000, share, collectives, sent,
                             f"{flavor}'s bytes at latent {grid} ({tokens} tokens), bf16")
