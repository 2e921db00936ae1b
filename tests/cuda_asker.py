"""Test-only: a module that asks for CUDA devices at import time, as diffusers does (`tests/test_gpu_readiness.py`
checks that the preload probe counts such a call)."""

import torch

torch.cuda.is_available()
