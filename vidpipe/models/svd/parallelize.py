"""`sp`: frame parallelism for SVD's UNet, exact up to float rounding (design §6a).

Each rank of an sp group runs the UNet on its own contiguous frames (25 frames on 4 ranks: 7, 6, 6, 6). Spatial
layers treat every frame on its own and run unchanged. The layers that mix frames get exactly what they need:

- `TemporalResnetBlock`: its Conv3d (kernel 3 over frames) gets a one-frame halo from each neighbour
  (`HaloConv3d`); its GroupNorm normalises over (C/G, F, H, W), so the statistics of all frames are combined
  (`FrameSplitGroupNorm`: each rank's exact mean and centred sum of squares, merged in fp32 after one gather).
- `TemporalBasicTransformerBlock`: self-attention over all frames of a pixel. An all-to-all turns frame-split
  activations into pixel-split ones, the block runs unchanged on all frames of this rank's pixels, and a second
  all-to-all turns them back (`PixelSplitTemporalBlock`). Its cross-attention context is per pixel: sliced.
- `TransformerSpatioTemporalModel`: the temporal position embedding is `arange(num_frames)`: the local indices
  are shifted to the global ones (`GlobalFrameIndex`).

`apply_sp` patches these layers in place, from outside the model (as `fully_shard` is applied), and returns a
wrapper with the UNet's call signature that cuts the input's frames and all-gathers the noise prediction
(`parallel/sp.py`'s `FrameSplit`), so the denoising loop runs unchanged on full latents. Which layers are
patched is a plain table keyed by layer type.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidpipe.parallel.comm import Group, all_to_all, exchange_halo, gather_small
from vidpipe.parallel.plan import frame_split
from vidpipe.parallel.sp import FrameSplit, FrameSplitState


class HaloConv3d(torch.nn.Module):
    """A Conv3d with kernel 3 over frames, on local frames plus one halo frame from each neighbour (zeros at
    the ends of the video, as the conv's own zero padding)."""

    holds_collectives = True  # `--compile` leaves the block that holds it eager

    def __init__(self, conv: torch.nn.Conv3d, state: FrameSplitState):
        super().__init__()
        if conv.kernel_size[0] != 3 or conv.padding[0] != 1 or conv.padding_mode != "zeros" or conv.stride[0] != 1:
            raise ValueError(f"HaloConv3d needs a kernel-3, stride-1, zero-padded conv over frames, got {conv}")
        self.conv = conv
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, F_local, H, W]
        before, after = exchange_halo(x[:, :, :1], x[:, :, -1:], self.state.group)
        zeros = None
        if before is None or after is None:
            zeros = x.new_zeros(x[:, :, :1].shape)
        padded = torch.cat([before if before is not None else zeros, x, after if after is not None else zeros], 2)
        conv = self.conv
        return F.conv3d(padded, conv.weight, conv.bias, conv.stride, (0, *conv.padding[1:]), conv.dilation,
                        conv.groups)


class FrameSplitGroupNorm(torch.nn.Module):
    """`nn.GroupNorm` over (C/G, F, H, W) of a frame-split [B, C, F_local, H, W] tensor.

    Each rank computes the exact mean and (biased) variance of its own frames in fp32, one gather brings every
    rank's pair, and they are merged with the parallel-variance formula (Chan et al.): the global mean, and the
    centred sum of squares = sum of the local ones + n_r (mean_r - mean)^2. Numerically this is the two-pass
    computation (no sum-of-squares cancellation), with one collective instead of two.
    """

    holds_collectives = True

    def __init__(self, norm: torch.nn.GroupNorm, state: FrameSplitState):
        super().__init__()
        self.norm = norm
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        groups = self.norm.num_groups
        local = x.reshape(batch * groups, -1).float()  # NOTE: no copy in fp32; one in fp16, as GroupNorm's fp32
        if x.is_cuda:
            # One Welford pass in fp32 over this rank's frames (biased variance, as nn.GroupNorm).
            var, mean = torch.var_mean(local, dim=1, correction=0)
        else:
            # Two plain passes: the mean, then the centred sum of squares. NOTE: torch.var_mean's Welford pass
            # is 15x slower on CPU.
            mean = local.mean(dim=1)
            var = (local - mean[:, None]).square_().mean(dim=1)
        every = gather_small(torch.stack([mean, var]), self.state.group)  # [K, 2, B*G]
        # Each rank's share of the group's elements is its share of the frames (every frame has the same pixels).
        weights = self.state.frame_weights(x.device)
        means, variances = every[:, 0], every[:, 1]
        mean = (weights * means).sum(0)
        var = (weights * (variances + (means - mean) ** 2)).sum(0)
        # One fused pass: batch_norm in eval mode with these statistics per (batch, channel), and the affine.
        per_channel = channels // groups
        mean_bc = mean.repeat_interleave(per_channel)
        var_bc = var.repeat_interleave(per_channel)
        weight = self.norm.weight.repeat(batch) if self.norm.affine else None
        bias = self.norm.bias.repeat(batch) if self.norm.affine else None
        out = F.batch_norm(x.reshape(1, batch * channels, -1), mean_bc, var_bc, weight, bias, False, 0.0,
                           self.norm.eps)
        return out.view_as(x)


class PixelSplitTemporalBlock(torch.nn.Module):
    """A `TemporalBasicTransformerBlock` (attention over frames, per pixel) on all frames of this rank's pixels."""

    def __init__(self, block: torch.nn.Module, state: FrameSplitState):
        super().__init__()
        self.block = block
        self.state = state

    def forward(self, hidden_states, num_frames, encoder_hidden_states=None):
        group, frame_sizes = self.state.group, self.state.sizes
        batch_frames, pixels, channels = hidden_states.shape
        batch = batch_frames // num_frames
        pixel_sizes = frame_split(pixels, group.size)
        starts = [sum(pixel_sizes[:j]) for j in range(group.size)]
        mine = slice(starts[group.rank], starts[group.rank] + pixel_sizes[group.rank])
        local_pixels = pixel_sizes[group.rank]

        # 1. Frames -> pixels: send rank j my frames of its pixels; get all frames of mine.
        x = hidden_states.view(batch, num_frames, pixels, channels)
        parts = all_to_all([x[:, :, s : s + n] for s, n in zip(starts, pixel_sizes, strict=True)],
                           [batch * f * local_pixels * channels for f in frame_sizes], group)
        x = torch.cat([p.view(batch, f, local_pixels, channels) for p, f in zip(parts, frame_sizes, strict=True)], 1)

        # 2. The block, unchanged, on every frame of this rank's pixels; its per-pixel context sliced to match.
        context = encoder_hidden_states
        if context is not None:
            context = context.view(batch, pixels, *context.shape[1:])[:, mine].reshape(-1, *context.shape[1:])
        frames = sum(frame_sizes)
        x = self.block(x.reshape(batch * frames, local_pixels, channels), num_frames=frames,
                       encoder_hidden_states=context).view(batch, frames, local_pixels, channels)

        # 3. Pixels -> frames: send rank i its frames of my pixels; get my frames of every pixel.
        frame_starts = [sum(frame_sizes[:i]) for i in range(group.size)]
        parts = all_to_all([x[:, s : s + f] for s, f in zip(frame_starts, frame_sizes, strict=True)],
                           [batch * num_frames * n * channels for n in pixel_sizes], group)
        x = torch.cat([p.view(batch, num_frames, n, channels) for p, n in zip(parts, pixel_sizes, strict=True)], 2)
        return x.reshape(batch_frames, pixels, channels)


class GlobalFrameIndex(torch.nn.Module):
    """The temporal position embedding's `Timesteps`, fed global frame indices instead of local ones."""

    def __init__(self, time_proj: torch.nn.Module, state: FrameSplitState):
        super().__init__()
        self.time_proj = time_proj
        self.state = state

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.time_proj(positions + self.state.offset)


def _split_temporal_resnet(block: torch.nn.Module, state: FrameSplitState) -> None:
    block.norm1 = FrameSplitGroupNorm(block.norm1, state)
    block.norm2 = FrameSplitGroupNorm(block.norm2, state)
    block.conv1 = HaloConv3d(block.conv1, state)
    block.conv2 = HaloConv3d(block.conv2, state)


def _split_temporal_blocks(model: torch.nn.Module, state: FrameSplitState) -> None:
    for index, block in enumerate(model.temporal_transformer_blocks):
        model.temporal_transformer_blocks[index] = PixelSplitTemporalBlock(block, state)


def _split_spatio_temporal_transformer(model: torch.nn.Module, state: FrameSplitState) -> None:
    model.time_proj = GlobalFrameIndex(model.time_proj, state)
    _split_temporal_blocks(model, state)


#: The layers that mix frames, by class name (diffusers' `_repeated_blocks` convention, and no import of diffusers'
#: model zoo, seconds per process), and how each is split. Everything else runs on local frames unchanged. The
#: simulator's stand-ins (`simulator_temporal.py`) have the same parts under the same names.
FRAME_MIXING_LAYERS = {
    "TemporalResnetBlock": _split_temporal_resnet,
    "TransformerSpatioTemporalModel": _split_spatio_temporal_transformer,
    "StandInTemporalResBlock": _split_temporal_resnet,
    "StandInTemporalTransformer": _split_temporal_blocks,
}
#: Blocks that attend over the frames of each pixel, which the splits above wrap in `PixelSplitTemporalBlock`.
FRAME_ATTENTION_BLOCKS = ("TemporalBasicTransformerBlock", "StandInFrameMix")


def apply_sp(unet: torch.nn.Module, group: Group) -> FrameSplit:
    """Patch `unet`'s frame-mixing layers for the sp group `group`; returns the frame-splitting wrapper."""
    state = FrameSplitState(group)
    for module in list(unet.modules()):
        split = FRAME_MIXING_LAYERS.get(type(module).__name__)
        if split is not None:
            split(module, state)
    _check_nothing_left(unet)
    return FrameSplit(unet, state)


def _check_nothing_left(unet: torch.nn.Module) -> None:
    """A layer that mixes frames and was not split would silently see only local frames: refuse instead."""
    modules = list(unet.modules())
    split = {id(m.conv) for m in modules if isinstance(m, HaloConv3d)}
    split |= {id(m.block) for m in modules if isinstance(m, PixelSplitTemporalBlock)}
    for name, module in unet.named_modules():
        mixes_frames = (isinstance(module, torch.nn.Conv3d) and module.kernel_size[0] > 1) or (
            type(module).__name__ in FRAME_ATTENTION_BLOCKS)
        if mixes_frames and id(module) not in split:
            raise NotImplementedError(f"sp: {name} ({type(module).__name__}) mixes frames and was not split")


def parallelize(model, layout) -> None:
    """Apply the plan's model-level axes to this rank's SVD model, replacing `model.unet` with its part: sp patches
    layers inside the UNet and fsdp shards the patched blocks; the cfg and sp wrappers then go around the UNet,
    outermost last, so a call splits the guidance batch first, then the frames."""
    from vidpipe.parallel.cfg import apply_cfg
    from vidpipe.parallel.fsdp import apply_fsdp

    plan, unet = layout.plan, model.unet
    denoiser = unet
    if plan.sp > 1:
        denoiser = apply_sp(unet, Group.of(layout.submesh("sp"), layout.comm))
    group_mesh = layout.group_mesh()
    if plan.fsdp and group_mesh is not None:
        apply_fsdp(unet, group_mesh, model.dtype)
    if plan.cfg > 1:
        denoiser = apply_cfg(denoiser, Group.of(layout.submesh("cfg"), layout.comm))
    model.unet = denoiser
