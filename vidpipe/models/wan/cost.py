"""What Wan's cfg and sp send per denoising step, worked out from the transformer's config: the analytic figure
`bench` prints beside the measured one (they must be equal: both count the payload leaving a rank, padding
included).

Per transformer call under sp K (tokens L split as L_r, heads H as H_r, head size d, itemsize b):
- each self-attention: one all-to-all of q, k and v together, 3 x L_r x (H - H_r) x d x b sent, and one back,
  (L - L_r) x H_r x d x b;
- after `proj_out`: the all-gather of the output, padded to the longest part: (K - 1) x max(L_r) x C_out x p x b,
  with p the patch volume.
Per step there are two calls with guidance (conditional, unconditional) and one without; cfg2 gives each rank one,
plus one all-gather of its prediction (one latent of the output's size).
"""

from __future__ import annotations

import math

from vidpipe.parallel.plan import ParallelPlan, frame_split


def wan_bytes_per_step(plan: ParallelPlan, config: dict, latent_frames: int, latent_height: int, latent_width: int,
                       dtype_bytes: int, guidance: bool = True) -> list[int]:
    """Bytes each rank of a group sends per step for `plan`'s cfg and sp, in group-rank order."""
    patch = config["patch_size"]
    tokens = (latent_frames // patch[0]) * (latent_height // patch[1]) * (latent_width // patch[2])
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    out_per_token = config["out_channels"] * math.prod(patch)
    calls = 1 if plan.cfg > 1 or not guidance else 2
    token_sizes, head_sizes = frame_split(tokens, plan.sp), frame_split(heads, plan.sp)
    sent = []
    for rank in range(plan.group_size):
        sp_rank = (rank // plan.shard) % plan.sp
        total = 0
        if plan.sp > 1:
            mine, my_heads = token_sizes[sp_rank], head_sizes[sp_rank]
            per_block = 3 * mine * (heads - my_heads) * head_dim + (tokens - mine) * my_heads * head_dim
            gather = (plan.sp - 1) * max(token_sizes) * out_per_token
            total += calls * (config["num_layers"] * per_block + gather) * dtype_bytes
        if plan.cfg > 1:
            total += config["out_channels"] * latent_frames * latent_height * latent_width * dtype_bytes
        sent.append(total)
    return sent
