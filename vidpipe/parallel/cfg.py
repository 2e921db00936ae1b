"""`cfg`: the two halves of the classifier-free-guidance batch on the two ranks of a group.

The denoising loop builds the batch of 2 (unconditional first, then conditional, as the pipeline does) and calls
the UNet; `GuidanceSplit` runs only this rank's half and all-gathers the noise prediction, so every rank gets the
whole batch back and the loop (guidance ramp, scheduler) goes on unchanged and identical on both. One collective
per step, of one latent's size.
"""

from __future__ import annotations

import torch

from vidpipe.parallel.comm import Group, gather_along
from vidpipe.parallel.wrapper import UNetWrapper


class GuidanceSplit(UNetWrapper):
    """Wraps a denoiser with the UNet's call signature; rank r of the group computes batch row r."""

    def __init__(self, inner: torch.nn.Module, group: Group):
        super().__init__(inner)
        if group.size != 2:
            raise ValueError(f"cfg splits a batch of 2, not {group.size}")
        self.group = group

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False):
        if sample.shape[0] != 2:
            raise ValueError(f"cfg expects the guidance batch of 2 (unconditional, conditional), got {sample.shape[0]}")
        row = slice(self.group.rank, self.group.rank + 1)
        half = self.inner(sample[row], timestep, encoder_hidden_states=encoder_hidden_states[row],
                          added_time_ids=added_time_ids[row], return_dict=False)[0]
        return (gather_along(half, 0, [1, 1], self.group),)


def apply_cfg(denoiser: torch.nn.Module, group: Group) -> torch.nn.Module:
    return GuidanceSplit(denoiser, group)
