"""The base of the parallel axes' UNet wrappers."""

from __future__ import annotations

import torch


class UNetWrapper(torch.nn.Module):
    """Holds the wrapped denoiser as `inner`; its attributes (config, dtype, add_embedding, ...) show through,
    because the pipeline's own helpers read them from whatever sits in `pipeline.unet`."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)
