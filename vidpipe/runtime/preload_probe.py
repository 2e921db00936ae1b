"""Does the worker server's preload touch CUDA? Checked in a fresh interpreter, as the server itself starts.

Ranks are forked from the worker server; a process that has initialised CUDA cannot hand a working CUDA to its
forked children ("Cannot re-initialize CUDA in forked subprocess"). Even asking the CUDA runtime how many devices
there are (`cudaGetDeviceCount`, behind `torch.cuda.is_available()`) starts the driver. diffusers asks at import
time (`torch.accelerator.is_available()`, for its default device): the server sets
`PYTORCH_NVML_BASED_CUDA_CHECK=1` first (`server_init.py`), so torch answers from NVML instead.

`python -m vidpipe.runtime.preload_probe [--emulate-cuda] MODULE...` imports `server_init` then the modules, counts
the calls of torch's CUDA device-count entry point (`torch._C._cuda_getDeviceCount`), and prints one JSON line.
`--emulate-cuda` makes a CPU-only build of torch answer as a CUDA build whose NVML works (a GPU machine), so a
CPU machine can check that no import on the way asks the CUDA runtime.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PreloadProbe:
    device_count_calls: int  # calls of the CUDA runtime's device count during the preload (must be 0)
    cuda_initialized: bool  # torch.cuda.is_initialized() after the preload (must be False)
    emulated: bool  # True: a CPU build of torch answered as a CUDA build would (see the module docstring)
    seconds: float  # how long the preload took

    @property
    def clean(self) -> bool:
        return self.device_count_calls == 0 and not self.cuda_initialized


def probe_preload(modules: Sequence[str] | None = None, emulate_cuda: bool | None = None,
                  timeout_s: float = 300.0) -> PreloadProbe:
    """Run the worker server's preload of `modules` (default: what every command's ranks need) in a fresh
    interpreter and report what it did to CUDA. `emulate_cuda` None: emulate only where torch has no CUDA."""
    from vidpipe.runtime.forkserver import DEFAULT_PRELOAD, SERVER_INIT

    args = [sys.executable, "-m", __name__]
    if emulate_cuda or (emulate_cuda is None and not _torch_has_cuda()):
        args.append("--emulate-cuda")
    args += [SERVER_INIT, *(modules if modules is not None else DEFAULT_PRELOAD)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"the preload probe failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return PreloadProbe(**json.loads(out.stdout.strip().splitlines()[-1]))


def _torch_has_cuda() -> bool:
    import torch

    return torch.cuda._is_compiled()  # noqa: SLF001 - "built with CUDA", without asking the driver


def _emulate_cuda_build(torch) -> None:
    """A CPU build of torch answers as a CUDA build on a machine whose NVML sees one GPU."""
    # NOTE: dynamo and inductor pick their CUDA bindings at import time from the same flag: import them first,
    # as the CPU build they are, or they would reach for CUDA functions this build does not have.
    import torch._dynamo  # noqa: F401
    import torch._inductor.utils  # noqa: F401

    torch.cuda._is_compiled = lambda: True  # noqa: SLF001
    torch.cuda._device_count_nvml = lambda: 1  # noqa: SLF001
    torch._C._accelerator_getAccelerator = lambda: torch.device("cuda")  # noqa: SLF001
    torch._C._cuda_getDeviceCount = lambda: 1  # noqa: SLF001 - replaced by the counter below


def _main(argv: list[str]) -> None:
    emulate = "--emulate-cuda" in argv
    modules = [m for m in argv if m != "--emulate-cuda"]
    started = time.perf_counter()
    importlib.import_module(modules[0])  # server_init: the environment before torch is imported
    import torch

    if emulate:
        _emulate_cuda_build(torch)
    calls = []
    real_count = torch._C._cuda_getDeviceCount if hasattr(torch._C, "_cuda_getDeviceCount") else (lambda: 0)

    def counted_device_count():
        calls.append(1)
        return real_count()

    torch._C._cuda_getDeviceCount = counted_device_count  # noqa: SLF001
    for module in modules[1:]:
        importlib.import_module(module)
    print(json.dumps({"device_count_calls": len(calls), "cuda_initialized": bool(torch.cuda.is_initialized()),
                      "emulated": emulate, "seconds": round(time.perf_counter() - started, 3)}))


if __name__ == "__main__":
    _main(sys.argv[1:])
