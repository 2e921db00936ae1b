"""`sp`'s generic mechanics: the split of a call's frames over an sp group (`FrameSplitState`) and the wrapper
that runs the UNet on this rank's frames and all-gathers the noise prediction (`FrameSplit`). Which layers of a
family's model are patched to see all frames is that family's `parallelize.py` (SVD: `models/svd/parallelize.py`,
design §6a).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidpipe.parallel.comm import Group, gather_along
from vidpipe.parallel.plan import frame_split
from vidpipe.parallel.wrapper import UNetWrapper


@dataclass
class FrameSplitState:
    """Shared by one UNet's patched layers: the split of the current call's frames (set by `FrameSplit`)."""

    group: Group
    sizes: list[int] = field(default_factory=list)  # frames per rank
    offset: int = 0  # this rank's first global frame

    _weights: dict = field(default_factory=dict)  # device -> [K, 1] shares of the frames

    def set_frames(self, frames: int) -> list[int]:
        if sum(self.sizes) != frames:
            self.sizes = frame_split(frames, self.group.size)
            self.offset = sum(self.sizes[: self.group.rank])
            self._weights.clear()
        return self.sizes

    def frame_weights(self, device: torch.device) -> torch.Tensor:
        """Each rank's share of the frames, [K, 1] on `device`: made once per split, so that no layer copies it
        to the device on every call (a host-to-device copy and sync per GroupNorm on GPU)."""
        weights = self._weights.get(device)
        if weights is None:
            sizes = torch.tensor(self.sizes, dtype=torch.float32)
            weights = self._weights[device] = (sizes / sizes.sum()).view(-1, 1).to(device)
        return weights

    @property
    def local_frames(self) -> int:
        return self.sizes[self.group.rank]


class FrameSplit(UNetWrapper):
    """The UNet on this rank's frames; returns the whole noise prediction (all frames), as the loop expects."""

    def __init__(self, unet: torch.nn.Module, state: FrameSplitState):
        super().__init__(unet)
        self.state = state

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False):
        sizes = self.state.set_frames(sample.shape[1])
        mine = slice(self.state.offset, self.state.offset + self.state.local_frames)
        out = self.inner(sample[:, mine], timestep, encoder_hidden_states=encoder_hidden_states,
                        added_time_ids=added_time_ids, return_dict=False)[0]
        return (gather_along(out, 1, sizes, self.state.group),)
