"""Doctor checks of the software: python, torch, diffusers and transformers, torch's CUDA build against the
driver, NCCL, ffmpeg, and the worker server's CUDA-clean preload. torch is imported inside the checks, so that a
broken torch is reported rather than crashing the doctor."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

from vidpipe.doctor.check import FAIL, INFO, OK, SKIPPED, WARN, Check
from vidpipe.runtime.gpus import GpuInfo

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"

#: The oldest driver branch that runs each CUDA major version (CUDA's minor-version compatibility: any 12.x
#: toolkit runs on a 525.60 driver or newer). Older drivers make torch see no GPU at all.
MIN_DRIVER_FOR_CUDA = {11: (450, 80), 12: (525, 60), 13: (580, 65)}


def check_python() -> Check:
    return Check("python", OK, f"{platform.python_version()} ({sys.executable})")


def check_torch() -> Check:
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - ImportError, or OSError for a missing shared library
        return Check("torch", FAIL, f"cannot import torch: {type(error).__name__}: {error}",
                     "reinstall it: pip install torch (on a CPU-only machine: --index-url "
                     "https://download.pytorch.org/whl/cpu)")
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    return Check("torch", OK, f"{torch.__version__} ({build})", details={"version": torch.__version__})


def check_library(module: str) -> Check:
    """A required library imports; its version."""
    import importlib

    try:
        version = importlib.import_module(module).__version__
    except Exception as error:  # noqa: BLE001 - a broken install shows in many ways
        return Check(module, FAIL, f"cannot import {module}: {type(error).__name__}: {error}",
                     f"reinstall it: pip install --force-reinstall {module}")
    return Check(module, OK, version, details={"version": version})


def version_tuple(text: str) -> tuple[int, ...]:
    """'550.54.15' -> (550, 54, 15); non-numeric parts end it ('12.4' -> (12, 4), '2.1a' -> (2,))."""
    numbers = []
    for part in text.strip().split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def driver_runs_cuda(driver: str, cuda: str) -> bool | None:
    """Whether NVIDIA driver `driver` runs CUDA `cuda` (torch's build); None when the table does not know."""
    minimum = MIN_DRIVER_FOR_CUDA.get(version_tuple(cuda)[:1][0] if version_tuple(cuda) else -1)
    if minimum is None or not version_tuple(driver):
        return None
    return version_tuple(driver)[:2] >= minimum


def check_cuda(cuda: str | None, driver: str | None, gpus: list[GpuInfo]) -> Check:
    """torch's CUDA build against the driver and the GPUs: no device query, versions only."""
    details = {"torch_cuda": cuda, "driver": driver}
    found = f"torch built for CUDA {cuda}" if cuda else "torch is a CPU build (no CUDA)"
    found += f"; NVIDIA driver {driver}" if driver else "; no NVIDIA driver (nvidia-smi not found)"
    if cuda is None:
        if gpus:
            return Check("cuda", FAIL, found, "the GPUs go unused: install a CUDA build of torch (pip install torch)",
                         details)
        return Check("cuda", INFO, found, details=details)
    if driver is None:
        return Check("cuda", INFO, found, "GPU runs need the NVIDIA driver (and its nvidia-smi)", details)
    if driver_runs_cuda(driver, cuda) is False:
        major = version_tuple(cuda)[0]
        needed = ".".join(map(str, MIN_DRIVER_FOR_CUDA[major]))
        return Check("cuda", FAIL if gpus else WARN, found + f": CUDA {major}.x needs driver {needed} or newer",
                     f"update the NVIDIA driver to {needed}+, or install a torch built for an older CUDA", details)
    return Check("cuda", OK, found, details=details)


def check_nccl() -> Check:
    """NCCL's version, read from torch's build (no GPU is touched); only CUDA builds have it."""
    import torch

    if torch.version.cuda is None:
        return Check("nccl", SKIPPED, "torch is a CPU build: ranks talk over gloo")
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_nccl_available()):
        return Check("nccl", WARN, "this torch build has no NCCL: GPU ranks cannot talk to each other",
                     "install a CUDA build of torch from pytorch.org (Linux)")
    version = ".".join(map(str, torch.cuda.nccl.version()))
    return Check("nccl", OK, version, details={"version": version})


def check_worker_server(emulate_cuda: bool, user_nvml_check: str | None = None) -> Check:
    """Whether the worker server's preload stays CUDA-clean: ranks forked from it could not use CUDA otherwise.

    The probe runs with this process's `PYTORCH_NVML_BASED_CUDA_CHECK=1`; the server itself keeps a user's own
    setting (`server_init.py`), so `user_nvml_check` other than unset or "1" is reported on its own.
    """
    from vidpipe.runtime.preload_probe import probe_preload

    try:
        probe = probe_preload(emulate_cuda=emulate_cuda)
    except Exception as error:  # noqa: BLE001 - a preload that crashes stops every run
        return Check("worker server", FAIL, f"its preload failed: {error}",
                     "every run forks its ranks from it: rerun with --debug, or reinstall vidpipe")
    how = "emulated: a CPU build of torch answering as a CUDA build" if probe.emulated else "real CUDA build"
    details = {"clean": probe.clean, "device_count_calls": probe.device_count_calls,
               "cuda_initialized": probe.cuda_initialized, "emulated": probe.emulated, "seconds": probe.seconds}
    # On a CPU machine a dirty preload predicts a GPU machine's failure; CPU runs themselves still work.
    broken = WARN if probe.emulated else FAIL
    if not probe.clean:
        return Check("worker server", broken, f"its preload asked the CUDA runtime {probe.device_count_calls} "
                     f"time(s), CUDA initialised: {probe.cuda_initialized} ({how})",
                     "forked ranks could not use CUDA: a vidpipe bug, please report it", details)
    found = f"CUDA-clean preload ({how}) in {probe.seconds:.1f} s"
    if user_nvml_check not in (None, "1"):
        return Check("worker server", broken, found + f", but {NVML_CHECK}={user_nvml_check} in this environment "
                     "makes the server ask the CUDA runtime", f"unset {NVML_CHECK} (vidpipe sets it to 1)", details)
    return Check("worker server", OK, found, details=details)


def check_ffmpeg() -> Check:
    """imageio-ffmpeg's ffmpeg runs and can write H.264 (what MP4 output uses)."""
    import imageio_ffmpeg

    from vidpipe.errors import UsageError
    from vidpipe.media import check_ffmpeg_h264

    no_mp4 = "MP4 output needs it: pip install --force-reinstall imageio-ffmpeg, or use --format gif,png"
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
        banner = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        return Check("ffmpeg", WARN, f"no ffmpeg that runs: {' '.join(str(error).split())}", no_mp4)
    words = (banner.splitlines() or [""])[0].split()  # "ffmpeg version 7.0.2-static https://..."
    version = words[2] if len(words) > 2 else "unknown version"
    details = {"path": exe, "version": version}
    try:
        check_ffmpeg_h264()
    except UsageError as error:
        return Check("ffmpeg", WARN, f"{version} ({exe}) without H.264", str(error), details)
    source = exe if os.environ.get("IMAGEIO_FFMPEG_EXE") else "imageio-ffmpeg's own build"
    return Check("ffmpeg", OK, f"{version} with libx264 ({source})", details=details)
