"""The `versions` check: nvidia-smi, driver, torch, CUDA, cuDNN, NCCL, diffusers and the GPUs."""

from __future__ import annotations

import re
import socket
import subprocess

from .common import write_check


def command_versions(args) -> int:
    """nvidia-smi, driver, torch, CUDA, cuDNN, NCCL, diffusers and the GPUs, as JSON."""
    import platform

    info: dict = {"host": socket.gethostname(), "python": platform.python_version(), "gpus": []}
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version,pci.bus_id",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
        for line in query.stdout.strip().splitlines():
            index, name, memory, driver, bus = (part.strip() for part in line.split(","))
            info["gpus"].append({"index": int(index), "name": name, "memory_total_mib": float(memory), "bus": bus})
            info["driver"] = driver
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        smi = re.search(r"NVIDIA-SMI ([\d.]+)", header)
        cuda = re.search(r"CUDA Version: ([\d.]+)", header)
        info["nvidia_smi"], info["driver_cuda"] = smi and smi.group(1), cuda and cuda.group(1)
    except (OSError, subprocess.TimeoutExpired) as error:
        info["nvidia_smi_error"] = str(error)
    problems = []
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                    cuda_devices=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                    cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None)
        try:
            nccl = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except Exception as error:  # noqa: BLE001 - a CPU build has no NCCL
            info["nccl"], info["nccl_error"] = None, str(error)
        if args.device == "cuda" and not info["cuda_available"]:
            problems.append("torch sees no CUDA device")
    except ImportError as error:
        problems.append(f"torch: {error}")
    for package in ("diffusers", "transformers", "vidpipe"):
        try:
            info[package] = __import__(package).__version__
        except Exception as error:  # noqa: BLE001
            problems.append(f"{package}: {error}")
    info["problems"] = problems
    return write_check(info, args.json)
