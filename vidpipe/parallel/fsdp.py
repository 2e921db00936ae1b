"""`fsdp`: the UNet's parameters sharded over the ranks of each group (FSDP2 `fully_shard`), for jobs one GPU
cannot hold.

Before each UNet block runs, FSDP all-gathers that block's parameters and frees them again after it, so only one
block is ever whole. Every rank of the group must therefore make exactly the same forward calls in the same
order, or the all-gathers would wait forever. Alone (`fsdp`, `dp2.fsdp4`) the ranks of a group compute the same
sample in lockstep: memory, not speed. Beside `cfg`/`sp` the group's ranks already run the same UNet calls on
their own halves or frames, so the same all-gathers serve them: memory and latency at once.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

#: The UNet's children sharded one by one (SVD's UNet, or the simulator's stand-in), so that only one block's
#: full parameters exist at a time; whatever remains (embeddings, conv_in/out) goes with the root.
SHARD_UNITS = ("down_blocks", "mid_block", "up_blocks", "blocks")


def apply_fsdp(unet: torch.nn.Module, mesh: DeviceMesh, dtype: torch.dtype) -> None:
    """Shard `unet` over `mesh`, block by block, then the whole UNet (in place)."""
    options = {"mesh": mesh, "reshard_after_forward": True}
    if mesh.device_type == "cuda":
        # NOTE: on GPU the shards are kept in the run's dtype (fp16/bf16), so the all-gathers move half the
        # bytes; the policy names it explicitly. On CPU everything stays fp32, the verified reference precision.
        # NOTE: inputs are not cast: the pipeline gives the UNet an fp32 timestep (its sinusoidal embedding is
        # computed in fp32 and cast by the UNet itself); casting it to fp16 first rounds it (t = 700 -> 700.0
        # is exact, but SVD's continuous timesteps are not) and differs from every other plan.
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32,
                                                    output_dtype=dtype, cast_forward_inputs=False)
    for name in SHARD_UNITS:
        unit = getattr(unet, name, None)
        if unit is None:
            continue
        for block in unit if isinstance(unit, torch.nn.ModuleList) else [unit]:
            fully_shard(block, **options)
    fully_shard(unet, **options)
