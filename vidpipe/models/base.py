"""The model adapter protocol: single-device code every strategy drives.

A model turns a `Sample` into a `SampleState` (starting latents + conditioning, plain tensors so a strategy can
send them to another rank), runs any contiguous block of denoising steps on it, and decodes final latents.
Nothing here knows about ranks or `torch.distributed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

#: Called after every denoising step with the step's index in the schedule (0 = noisiest).
StepCallback = Callable[[int], None]

#: The tensors of one sample in flight: "latents" plus the conditioning the denoiser needs.
SampleState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Sample:
    """One video to generate. Sample `index` of a run uses seed `seed`."""

    index: int
    seed: int
    image: Any = None  # a PIL image for image-to-video models; None for the simulator
    image_name: str = ""
    params: Any = None  # this sample's own sampling parameters (a server's jobs differ); None: the model's


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one tensor of a `SampleState`, so a receiving rank can allocate it in advance.

    `on_host`: the tensor lives on the CPU whatever the device (small control values a rank reads on the host,
    such as a sample's step count). On GPUs it then travels over gloo, the rest over NCCL.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    on_host: bool = False

    def device_for(self, device: torch.device) -> torch.device:
        return torch.device("cpu") if self.on_host else torch.device(device)

    def empty(self, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of this spec, on `device` (or the CPU, when `on_host`)."""
        return torch.empty(self.shape, dtype=self.dtype, device=self.device_for(device))


class DiffusionModel(Protocol):
    """What a strategy needs from a model, on one device."""

    device: torch.device
    dtype: torch.dtype
    num_steps: int
    unet: torch.nn.Module | None  # the denoiser, for strategies that wrap it (fsdp shards it); None once released
    repeated_blocks: tuple[str, ...]  # the denoiser's blocks, by class name, that `--compile` compiles one by one

    def denoisers(self) -> list[torch.nn.Module]:
        """Every loaded denoiser (Wan 2.2 A14B's two experts; else the one), for the axes that patch each."""
        ...

    def state_spec(self) -> dict[str, TensorSpec]:
        """Shapes and dtypes of the tensors `encode` returns for the model's own parameters, in a fixed order."""
        ...

    def sample_spec(self, sample: Sample) -> dict[str, TensorSpec]:
        """The same for `sample`, which may carry its own parameters (sizes) in a job file or a server."""
        ...

    def encode(self, sample: Sample) -> SampleState:
        """Conditioning and seeded starting noise for `sample` (same draws, same order as the reference)."""
        ...

    def denoise(self, state: SampleState, steps: range, on_step: StepCallback | None = None) -> torch.Tensor:
        """Run the contiguous block `steps` of the schedule on `state`; return the new latents."""
        ...

    def release_denoiser(self) -> None:
        """Free the denoiser (and image encoder) before phase 2."""
        ...

    def decode_units(self, sample: Sample) -> tuple[int, int]:
        """(units, units per chunk) of `sample` that phase 2 may decode on different ranks: SVD's frames in decode
        chunks; (1, 1) for a model whose video decodes whole (Wan's causal VAE)."""
        ...

    def decode(self, latents: torch.Tensor) -> Any:
        """Final latents [1, F, C, h, w] -> frames as uint8 numpy [F, H, W, 3]."""
        ...
