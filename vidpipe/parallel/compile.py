"""`--compile`: the UNet compiled with `torch.compile` region by region, as diffusers' `compile_repeated_blocks`
does for the models that declare their repeated blocks (SVD's UNet does not).

Compiling the whole UNet takes minutes and breaks at every collective of cfg/sp; compiling each repeated block
on its own compiles each distinct block shape once (a few dozen graphs, shared by the blocks of that shape) and
leaves the collectives of cfg/sp between compiled regions. A block that itself holds a collective (a temporal
res block patched by sp) stays eager; its inner parts are small.
"""

from __future__ import annotations

import torch

from vidpipe.models.svd.parallelize import FrameSplitGroupNorm, HaloConv3d

#: SVD's repeated blocks, by class name (diffusers' `_repeated_blocks` convention).
REPEATED_BLOCKS = ("ResnetBlock2D", "BasicTransformerBlock", "TemporalBasicTransformerBlock", "TemporalResnetBlock")
#: Distinct block shapes (channels x resolution) to compile before dynamo falls back to eager: SVD-XT has about 30.
RECOMPILE_LIMIT = 64


def _holds_collectives(module: torch.nn.Module) -> bool:
    return any(isinstance(m, (HaloConv3d, FrameSplitGroupNorm)) for m in module.modules())


def to_channels_last(module: torch.nn.Module) -> int:
    """Store every Conv2d's weight channels-last (NHWC); returns how many. NOTE: only Conv2d: SVD's temporal
    Conv3d weights are 5-D, and `Module.to(memory_format=torch.channels_last)` on the whole UNet fails on them
    ("required rank 4 tensor to use channels_last format")."""
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        conv.to(memory_format=torch.channels_last)
    return len(convs)


def apply_compile(denoiser: torch.nn.Module, channels_last: bool = False, backend: str = "inductor") -> int:
    """Compile every repeated block of `denoiser` in place; returns how many were compiled (0: nothing to compile,
    e.g. the simulator's stand-in). `backend` is torch.compile's (the tests trace with "eager", which skips
    inductor's C++ code generation: minutes on a small CPU)."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    if channels_last:  # convolutions on CUDA prefer NHWC; on CPU it does not pay here
        to_channels_last(denoiser)
    compiled = 0
    for module in denoiser.modules():
        if type(module).__name__ in REPEATED_BLOCKS and not _holds_collectives(module):
            module.compile(backend=backend)
            compiled += 1
    return compiled
