"""Imported first by the worker server (see `forkserver.py`), before torch, numpy or diffusers.

- numpy's bundled OpenBLAS starts a thread pool when it is imported; a process that forks while holding threads
  hands its children locks that nobody will release. Workers do their heavy maths in torch, which keeps its own
  thread pool (sized per rank after the fork), so numpy's BLAS gets the calling thread only.
- CUDA must stay uninitialised in a process that forks ranks: diffusers asks whether an accelerator exists at
  import time, which on CUDA calls `cudaGetDeviceCount` and starts the driver. With
  `PYTORCH_NVML_BASED_CUDA_CHECK=1` torch answers from NVML instead (`preload_probe.py` checks it).

A user's own setting wins.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
