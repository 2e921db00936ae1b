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

from vidpipe.models.svd.architecture import TemporalLayer, temporal_layers
from vidpipe.parallel.plan import ParallelPlan, frame_split

GROUPNORM_GROUPS = 32  # TemporalResnetBlock's GroupNorm
STATS_BYTES = 4  # the statistics travel in fp32


def svd_bytes_per_step(plan: ParallelPlan, unet_config: dict, batch: int, frames: int, latent_height: int,
                       latent_width: int, dtype_bytes: int) -> list[int]:
    """`split_bytes_per_step` for an SVD UNet given by its config."""
    return split_bytes_per_step(plan, temporal_layers(unet_config), GROUPNORM_GROUPS, unet_config["out_channels"],
                                batch, frames, latent_height, latent_width, dtype_bytes)


def split_bytes_per_step(
    plan: ParallelPlan, layers: list[TemporalLayer], norm_groups: int, latent_channels: int, batch: int,
    frames: int, latent_height: int, latent_width: int, dtype_bytes: int,
) -> list[int]:
    """Bytes each rank of a group sends per step for `plan`'s cfg and sp, in group-rank order.

    `layers` are the UNet's frame-mixing layers, `batch` its batch before cfg splits it (2 with guidance); latent
    sizes are the UNet input's.
    """
    sent = [0] * plan.group_size
    local_batch = batch // plan.cfg
    sizes = frame_split(frames, plan.sp)
    for rank in range(plan.group_size):
        sp_rank = (rank // plan.shard) % plan.sp
        total = 0
        if plan.sp > 1:
            total += _sp_bytes(layers, norm_groups, plan.sp, sp_rank, sizes, local_batch, latent_height,
                               latent_width, dtype_bytes)
            # The sp wrapper's gather of the noise prediction: this rank's part, padded to the longest.
            total += (plan.sp - 1) * local_batch * max(sizes) * latent_channels * latent_height * latent_width * \
                dtype_bytes
        if plan.cfg > 1:
            total += local_batch * frames * latent_channels * latent_height * latent_width * dtype_bytes
        sent[rank] = total
    return sent


def _sp_bytes(layers: list[TemporalLayer], norm_groups: int, k: int, rank: int, sizes: list[int], batch: int,
              height: int, width: int, dtype_bytes: int) -> int:
    neighbours = (rank > 0) + (rank < k - 1)
    total = 0
    for layer in layers:
        h, w = _level_size(height, layer.level), _level_size(width, layer.level)
        if layer.kind == "resnet":
            total += 2 * neighbours * batch * layer.channels * h * w * dtype_bytes  # conv1, conv2 halos
            total += 2 * (k - 1) * 2 * batch * norm_groups * STATS_BYTES  # norm1, norm2 statistics
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

