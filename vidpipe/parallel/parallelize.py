"""Apply a plan's model-level axes to one rank's model: sp (frames), fsdp (parameters), cfg (guidance batch).

The order matters: sp patches layers inside the UNet and fsdp shards the patched blocks; the cfg and sp
wrappers then go around the UNet, outermost last, so a call splits the guidance batch first, then the frames.
"""

from __future__ import annotations

from vidpipe.parallel.cfg import apply_cfg
from vidpipe.parallel.comm import Group
from vidpipe.parallel.fsdp import apply_fsdp
from vidpipe.parallel.layout import Layout
from vidpipe.parallel.sp import apply_sp


def parallelize(model, layout: Layout) -> None:
    """Replace `model.unet` with this rank's part of it, as `layout.plan` says (nothing to do for pp/dp alone)."""
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
