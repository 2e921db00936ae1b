"""The bytes each rank of a cfg/sp group sends per denoising step, worked out from the UNet's config alone.

`bench` prints this beside what the collectives really sent (`parallel/comm.py` counts every call), so a
difference shows padding, a layer sent twice, or a layer the formula forgot. Per step of SVD's UNet:

- cfg: one all-gather of the rank's half of the noise prediction, to the other rank: F x 4 x h x w values.
- sp, per temporal res block (one per spatial res block): two halo exchanges of one frame to each neighbour
  (C x h_l x w_l values per frame and batch row), two GroupNorm statistics gathers (mean and variance in fp32 for
  32 groups per batch row, to K - 1 ranks);
  per temporal transformer block: an all-to-all sending this rank's frames of every other rank's pixels and one
  back, sending its pixels of every other rank's frames (C values each);
  at the end, the all-gather of the noise prediction: this rank's frames (padded to the longest part) to K - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidpipe.parallel.plan import ParallelPlan, frame_split

GROUPNORM_GROUPS = 32  # TemporalResnetBlock's GroupNorm
STATS_BYTES = 4  # the statistics travel in fp32


@dataclass(frozen=True)
class TemporalLayer:
    kind: str  # "resnet" | "attention"
    channels: int
    level: int  # 0 = latent resolution; each level halves height and width


def temporal_layers(unet_config: dict) -> list[TemporalLayer]:
    """The frame-mixing layers of an SVD UNet, in call order, from its config."""
    channels = unet_config["block_out_channels"]
    per_block = unet_config["layers_per_block"]
    transformer_layers = unet_config.get("transformer_layers_per_block", 1)
    layers_of = (lambda i: transformer_layers[i]) if isinstance(transformer_layers, list) else (
        lambda i: transformer_layers)
    layers = []
    for level, block_type in enumerate(unet_config["down_block_types"]):
        for _ in range(per_block):
            layers.append(TemporalLayer("resnet", channels[level], level))
            if block_type.startswith("CrossAttn"):
                layers += [TemporalLayer("attention", channels[level], level)] * layers_of(level)
    deepest = len(channels) - 1
    layers += [TemporalLayer("resnet", channels[deepest], deepest)]
    layers += [TemporalLayer("attention", channels[deepest], deepest)] * layers_of(deepest)
    layers += [TemporalLayer("resnet", channels[deepest], deepest)]
    for up, block_type in enumerate(unet_config["up_block_types"]):
        level = deepest - up
        for _ in range(per_block + 1):
            layers.append(TemporalLayer("resnet", channels[level], level))
            if block_type.startswith("CrossAttn"):
                layers += [TemporalLayer("attention", channels[level], level)] * layers_of(level)
    return layers


def split_bytes_per_step(
    plan: ParallelPlan, unet_config: dict, batch: int, frames: int, latent_height: int, latent_width: int,
    dtype_bytes: int,
) -> list[int]:
    """Bytes each rank of a group sends per step for `plan`'s cfg and sp, in group-rank order.

    `batch` is the UNet's batch before cfg splits it (2 with guidance); latent sizes are the UNet input's.
    """
    sent = [0] * plan.group_size
    latent_channels = unet_config["out_channels"]
    local_batch = batch // plan.cfg
    sizes = frame_split(frames, plan.sp)
    for rank in range(plan.group_size):
        sp_rank = (rank // plan.shard) % plan.sp
        total = 0
        if plan.sp > 1:
            total += _sp_bytes(unet_config, plan.sp, sp_rank, sizes, local_batch, latent_height, latent_width,
                               dtype_bytes)
            # The sp wrapper's gather of the noise prediction: this rank's part, padded to the longest.
            total += (plan.sp - 1) * local_batch * max(sizes) * latent_channels * latent_height * latent_width * \
                dtype_bytes
        if plan.cfg > 1:
            total += local_batch * frames * latent_channels * latent_height * latent_width * dtype_bytes
        sent[rank] = total
    return sent


def _sp_bytes(unet_config, k: int, rank: int, sizes: list[int], batch: int, height: int, width: int,
              dtype_bytes: int) -> int:
    neighbours = (rank > 0) + (rank < k - 1)
    total = 0
    for layer in temporal_layers(unet_config):
        h, w = _level_size(height, layer.level), _level_size(width, layer.level)
        if layer.kind == "resnet":
            total += 2 * neighbours * batch * layer.channels * h * w * dtype_bytes  # conv1, conv2 halos
            total += 2 * (k - 1) * 2 * batch * GROUPNORM_GROUPS * STATS_BYTES  # norm1, norm2 statistics
        else:
            pixels = frame_split(h * w, k)
            others = h * w - pixels[rank]
            total += batch * sizes[rank] * others * layer.channels * dtype_bytes  # frames -> pixels
            total += batch * (sum(sizes) - sizes[rank]) * pixels[rank] * layer.channels * dtype_bytes  # and back
    return total


def _level_size(size: int, level: int) -> int:
    for _ in range(level):
        size = (size + 1) // 2  # a stride-2 conv with padding 1
    return size
