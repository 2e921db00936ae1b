"""What the driver sees of the GPUs, read with `nvidia-smi`: no CUDA context, no device memory, no fork poisoning.

The launcher, `auto`, `doctor` and the reports need GPU names, total and free memory, and what each process holds.
Asking torch (`torch.cuda.get_device_properties`, `mem_get_info`) would create a CUDA context in the asking process:
0.3-0.5 GB on GPU 0 that no figure counts, held for the whole run. nvidia-smi answers from the driver instead.

`nvidia-smi` lists every GPU of the machine, numbered as the driver numbers them; a run sees only those that
`CUDA_VISIBLE_DEVICES` names (by index or UUID), in that order. `visible_gpus` applies it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass

#: Seconds before a hung nvidia-smi (a wedged driver) is given up on.
NVIDIA_SMI_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as the driver reports it; `index` is the driver's (nvidia-smi's) number, not the CUDA ordinal."""

    index: int
    uuid: str
    name: str
    memory_total_mib: float
    memory_free_mib: float
    memory_used_mib: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ProcessMemory:
    """Memory the driver charges one process on one GPU: the CUDA context, the allocator's reserved pool and any
    library workspace (NCCL buffers, cuBLAS) together: what `max_memory_allocated` does not show."""

    pid: int
    gpu_uuid: str
    used_mib: float


def nvidia_smi(*args: str) -> str | None:
    """nvidia-smi's output for `args`, or None when it is missing, fails or hangs."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S,
                              check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _csv_rows(out: str | None) -> list[list[str]]:
    if not out:
        return []
    return [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return float("nan")


def all_gpus() -> list[GpuInfo]:
    """Every GPU of the machine, in the driver's order; [] without nvidia-smi."""
    out = nvidia_smi("--query-gpu=index,uuid,name,memory.total,memory.free,memory.used",
                     "--format=csv,noheader,nounits")
    gpus = []
    for row in _csv_rows(out):
        if len(row) != 6:
            continue
        index, uuid, name, total, free, used = row
        gpus.append(GpuInfo(int(index), uuid, name, _number(total), _number(free), _number(used)))
    return gpus


def select_visible(gpus: list[GpuInfo], visible: str | None) -> list[GpuInfo]:
    """The GPUs a CUDA program sees under `CUDA_VISIBLE_DEVICES=visible`, in CUDA's order (None: all of them).

    CUDA reads the list up to the first entry it cannot match and ignores the rest; entries are indices or UUIDs
    (also a unique UUID prefix, with or without "GPU-").
    """
    if visible is None:
        return list(gpus)
    chosen: list[GpuInfo] = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            break
        match = None
        if entry.lstrip("-").isdigit():
            match = next((g for g in gpus if g.index == int(entry)), None)
        else:
            prefix = entry if entry.startswith(("GPU-", "MIG-")) else f"GPU-{entry}"
            candidates = [g for g in gpus if g.uuid.startswith(prefix)]
            match = candidates[0] if len(candidates) == 1 else None
        if match is None or match in chosen:
            break
        chosen.append(match)
    return chosen


def visible_gpus() -> list[GpuInfo]:
    """The GPUs this process's CUDA programs would see, in CUDA ordinal order; [] without nvidia-smi."""
    return select_visible(all_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def driver_version() -> str | None:
    rows = _csv_rows(nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader"))
    return rows[0][0] if rows else None


def topology() -> str | None:
    """`nvidia-smi topo -m`: how the GPUs connect (NVLink, PCIe switch, host bridge), as printed."""
    return nvidia_smi("topo", "-m")


def process_memory() -> list[ProcessMemory]:
    """Device memory of every compute process, as the driver counts it (0 processes: an empty list)."""
    out = nvidia_smi("--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader,nounits")
    rows = []
    for row in _csv_rows(out):
        if len(row) == 3 and row[0].isdigit():
            rows.append(ProcessMemory(int(row[0]), row[1], _number(row[2])))
    return rows


def driver_memory_mib(pid: int) -> float | None:
    """What the driver charges process `pid` over all GPUs, in MiB; None when nvidia-smi cannot tell (a
    container without access to the host's process table reports no processes)."""
    used = [p.used_mib for p in process_memory() if p.pid == pid]
    return sum(used) if used else None
