"""`--compile`: the denoiser compiled with `torch.compile` region by region, as diffusers' `compile_repeated_blocks`
does: each model names its repeated blocks (Wan's transformer declares them as `_repeated_blocks`; SVD's UNet
does not, so its family names them).

Compiling the whole denoiser takes minutes and breaks at every collective of cfg/sp; compiling each repeated block
on its own compiles each distinct block shape once (a few dozen graphs, shared by the blocks of that shape) and
leaves the collectives of cfg/sp between compiled regions. A block that itself holds a collective (an SVD temporal
res block or a Wan self-attention patched by sp: their modules or processors say `holds_collectives`) stays
eager.
"""

from __future__ import annotations

import torch

#: Distinct block shapes (channels x resolution) to compile before dynamo falls back to eager: SVD-XT has about 30.
RECOMPILE_LIMIT = 64


def _holds_collectives(module: torch.nn.Module) -> bool:
    return any(getattr(m, "holds_collectives", False)
               or getattr(getattr(m, "processor", None), "holds_collectives", False)  # an attention's processor
               for m in module.modules())


def to_channels_last(module: torch.nn.Module) -> int:
    """Store every Conv2d's weight channels-last (NHWC); returns how many. NOTE: only Conv2d: SVD's temporal
    Conv3d weights are 5-D, and `Module.to(memory_format=torch.channels_last)` on the whole UNet fails on them
    ("required rank 4 tensor to use channels_last format")."""
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        conv.to(memory_format=torch.channels_last)
    return len(convs)


def compile_model(model, channels_last: bool = False, backend: str = "inductor") -> int:
    """Compile the repeated blocks of every denoiser `model` has loaded (both experts of Wan 2.2 A14B); returns
    how many blocks were compiled."""
    return sum(apply_compile(denoiser, model.repeated_blocks, channels_last, backend)
               for denoiser in model.denoisers())


def apply_compile(denoiser: torch.nn.Module, blocks: tuple[str, ...], channels_last: bool = False,
                  backend: str = "inductor") -> int:
    """Compile every block of `denoiser` whose class is named in `blocks` in place; returns how many were compiled
    (0: nothing to compile, e.g. the simulator's stand-in). `backend` is torch.compile's (the tests trace with
    "eager", which skips inductor's C++ code generation: minutes on a small CPU)."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    if channels_last:  # convolutions on CUDA prefer NHWC; on CPU it does not pay here
        to_channels_last(denoiser)
    compiled = 0
    for module in denoiser.modules():
        if type(module).__name__ in blocks and not _holds_collectives(module):
            module.compile(backend=backend)
            compiled += 1
    return compiled
