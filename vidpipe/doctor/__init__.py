"""`vidpipe doctor`: what this machine can run, and what to fix. Each check is a small function returning a `Check`.

Two rules shape every check:
- No CUDA context in this process (design section 12): GPUs are read with nvidia-smi (`vidpipe/runtime/gpus.py`),
  torch's CUDA build is read from `torch.version.cuda`, and torch answers device questions from NVML
  (`PYTORCH_NVML_BASED_CUDA_CHECK=1`, set before torch is imported, as the worker server does).
- No request leaves the machine: `HF_HUB_OFFLINE=1` before huggingface_hub is imported, and models are resolved
  with `offline=True` (cache only).

Status "fail" (exit status 1) is kept for what stops every run, or on a machine with GPUs every GPU run: torch,
diffusers or transformers that cannot be imported, a worker server that cannot preload or initialises CUDA, a torch
that cannot use the GPUs (a CPU build, a driver too old for its CUDA). A missing GPU, ffmpeg or cached model limits
some runs only: "warn" or "info".
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vidpipe.doctor.check import FAIL, SKIPPED, STATUS_STYLES, WARN, Check
from vidpipe.doctor.gpus import check_gpus, check_topology
from vidpipe.doctor.hub import check_hub_cache, check_hub_login
from vidpipe.doctor.machine import check_auto_plan, check_cpu, check_disk, check_memory
from vidpipe.doctor.software import (
    NVML_CHECK,
    check_cuda,
    check_ffmpeg,
    check_library,
    check_nccl,
    check_python,
    check_torch,
    check_worker_server,
)
from vidpipe.runtime.gpus import driver_version, topology, visible_gpus

__all__ = ["Check", "STATUS_STYLES", "doctor_report", "doctor_table", "exit_code", "run_checks", "write_report"]


def run_checks(cache_dir: Path | None = None) -> list[Check]:
    """Every check, in report order. `cache_dir` replaces the Hugging Face cache, as generate's --cache-dir does.

    Sets this process's environment first (see the module docstring): call it in a process of its own (the CLI).
    """
    user_env = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", NVML_CHECK)}
    os.environ[NVML_CHECK] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    checks = [check_python(), check_torch()]
    if checks[-1].status == FAIL:
        return checks + [Check("other checks", SKIPPED, "they import torch", "fix torch first, then run doctor again")]
    import torch

    gpus = visible_gpus()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The preload runs in an interpreter of its own for seconds: let it overlap the checks below.
        probe = pool.submit(check_worker_server, torch.version.cuda is None, user_env[NVML_CHECK])
        checks += [_guarded(name, check) for name, check in (
            ("cuda", lambda: check_cuda(torch.version.cuda, driver_version(), gpus)),
            ("nccl", check_nccl),
            ("diffusers", lambda: check_library("diffusers")),
            ("transformers", lambda: check_library("transformers")),
            ("gpus", lambda: check_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))),
            ("topology", lambda: check_topology(gpus, topology() if len(gpus) > 1 else None)),
        )]
        checks.append(probe.result())
        checks += [_guarded(name, check) for name, check in (
            ("ffmpeg", check_ffmpeg),
            ("hub login", lambda: check_hub_login(user_env["HF_HUB_OFFLINE"])),
            ("hub cache", lambda: check_hub_cache(cache_dir)),
            ("auto plan", lambda: check_auto_plan(gpus, cache_dir)),
            ("cpu", check_cpu),
            ("memory", check_memory),
            ("disk", lambda: check_disk(cache_dir)),
        )]
    return checks


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    """`check()`, or a warning row when the check itself broke: the doctor reports, it never crashes."""
    try:
        return check()
    except Exception as error:  # noqa: BLE001 - any failure of a check is a finding
        return Check(name, WARN, f"the check itself failed: {type(error).__name__}: {error}",
                     "report it with the traceback from --json", {"traceback": traceback.format_exc()})


def exit_code(checks: list[Check]) -> int:
    """1 when any check failed (see the module docstring for what fails), else 0."""
    return 1 if any(check.status == FAIL for check in checks) else 0


def doctor_report(checks: list[Check]) -> dict:
    """The JSON report: the checks in order, with a count per status and the exit status."""
    from vidpipe import __version__

    counts = {status: sum(check.status == status for check in checks) for status in STATUS_STYLES}
    return {"command": "doctor", "vidpipe": __version__, "exit_code": exit_code(checks), "counts": counts,
            "checks": [check.as_dict() for check in checks]}


def write_report(report: dict, path: str | None) -> None:
    """The JSON report to `path` (atomically), to stdout for "-", nowhere for None (as every command's --json)."""
    if path == "-":
        print(json.dumps(report, indent=2, default=str), flush=True)
    elif path is not None:
        from vidpipe.media import write_json  # not vidpipe.report's: that imports torch, which may be broken

        write_json(Path(path), json.loads(json.dumps(report, default=str)))


def doctor_table(checks: list[Check]):
    """The checks as a rich table (printed to stderr by the CLI)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="vidpipe doctor")
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("found", overflow="fold")
    table.add_column("what to do", overflow="fold")
    for check in checks:
        table.add_row(check.name, Text(check.status, style=STATUS_STYLES[check.status]), Text(check.found),
                      Text(check.fix))
    return table
