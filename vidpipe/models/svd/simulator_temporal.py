"""The simulator's stand-ins for SVD's frame-mixing layers, so that frame parallelism (`sp`) runs its real
collectives in `simulate`: the same kinds of layer as SVD-XT's UNet, as many, in the same order.

- `StandInTemporalResBlock`, like `TemporalResnetBlock`: GroupNorm over (C/G, F, H, W), then a kernel-3 conv over
  frames, twice (`norm1`, `conv1`, `norm2`, `conv2`: the names `parallelize.py` splits);
- `StandInTemporalTransformer`, like `TransformerSpatioTemporalModel`: blocks that attend over the frames of each
  pixel (here: mix in the mean over frames), called as `block(hidden_states, num_frames=...)`.
Each adds a small residual, so the latents stay what the stand-in UNet makes of them. They act on the first
latent channel only (`STAND_IN_CHANNELS`): their job is to make sp's collectives happen, as many and in the same
order as on SVD-XT, not to burn the CPU that emulated ranks share. They are built only when a plan splits frames.
"""

from __future__ import annotations

import torch

from vidpipe.models.svd.architecture import TemporalLayer

#: Latent channels the stand-ins act on, and their GroupNorm groups (SVD: 320-1280 channels, 32 groups).
STAND_IN_CHANNELS = 1
STAND_IN_NORM_GROUPS = 1
RESIDUAL = 0.01


class StandInTemporalResBlock(torch.nn.Module):
    def __init__(self, channels: int, dtype: torch.dtype, device):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.norm1 = torch.nn.GroupNorm(STAND_IN_NORM_GROUPS, channels, **factory)
        self.norm2 = torch.nn.GroupNorm(STAND_IN_NORM_GROUPS, channels, **factory)
        self.conv1 = self._frame_conv(channels, factory)
        self.conv2 = self._frame_conv(channels, factory)

    @staticmethod
    def _frame_conv(channels: int, factory: dict) -> torch.nn.Conv3d:
        conv = torch.nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0), groups=channels, bias=False,
                               **factory)
        with torch.no_grad():  # fixed weights, the same on every rank: 0.25 of each neighbour frame
            conv.weight.copy_(torch.tensor([0.25, 0.5, 0.25]).view(1, 1, 3, 1, 1).expand_as(conv.weight))
        conv.requires_grad_(False)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, F, C, H, W]
        h = x.permute(0, 2, 1, 3, 4)  # [B, C, F, H, W], as SpatioTemporalResBlock hands it over
        h = self.conv2(self.norm2(self.conv1(self.norm1(h))))
        return x + RESIDUAL * h.permute(0, 2, 1, 3, 4)


class StandInFrameMix(torch.nn.Module):
    """Per pixel, every frame gets a share of the mean over all frames (attention over frames, simplified)."""

    def forward(self, hidden_states: torch.Tensor, num_frames: int, encoder_hidden_states=None) -> torch.Tensor:
        batch_frames, pixels, channels = hidden_states.shape
        x = hidden_states.view(batch_frames // num_frames, num_frames, pixels, channels)
        return (x + RESIDUAL * x.mean(dim=1, keepdim=True)).view(batch_frames, pixels, channels)


class StandInTemporalTransformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.temporal_transformer_blocks = torch.nn.ModuleList([StandInFrameMix()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, F, C, H, W]
        batch, frames, channels, height, width = x.shape
        tokens = x.permute(0, 1, 3, 4, 2).reshape(batch * frames, height * width, channels)
        for block in self.temporal_transformer_blocks:
            tokens = block(tokens, num_frames=frames)
        return tokens.view(batch, frames, height, width, channels).permute(0, 1, 4, 2, 3)


def stand_in_layout(layers: list[TemporalLayer]) -> list[TemporalLayer]:
    """The stand-ins' own layout: the real UNet's layers, all at the latent's resolution, on one channel."""
    return [TemporalLayer(layer.kind, STAND_IN_CHANNELS, 0) for layer in layers]


def stand_in_layers(layers: list[TemporalLayer], dtype, device) -> torch.nn.ModuleList:
    """One stand-in per frame-mixing layer of the real UNet."""
    return torch.nn.ModuleList(
        StandInTemporalResBlock(STAND_IN_CHANNELS, dtype, device) if layer.kind == "resnet"
        else StandInTemporalTransformer()
        for layer in layers
    )


def apply_stand_ins(layers: torch.nn.ModuleList, latents: torch.Tensor) -> torch.Tensor:
    """Run the stand-ins on the first channels of [B, F, C, H, W] latents; the other channels pass through."""
    if len(layers) == 0:
        return latents
    lead = latents[:, :, :STAND_IN_CHANNELS]
    for layer in layers:
        lead = layer(lead)
    return torch.cat([lead, latents[:, :, STAND_IN_CHANNELS:]], dim=2)
