"""The figures worth a summary, from a step's JSON report and its log."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .context import REPO, Step

MEMORY_KEYS = ("peak_memory_gb_per_rank", "peak_reserved_gb_per_rank", "driver_memory_gb_per_rank")
RUN_KEYS = (
    "plan", "strategy", "world_size", "status", "reason", "device", "backend", "dtype", "verified",
    "verify_max_abs_diff", "first_sample_time_s", "latency_mean_s", "step_time_s", "step_time_vs_baseline",
    "throughput_samples_per_s", "speedup", "latency_speedup", "compiled", "compile_s_per_rank", "repeats",
    "throughput_per_repeat", "launch_to_first_step_s", "peak_memory_kind", *MEMORY_KEYS,
)


def pick(source: dict, keys: tuple[str, ...]) -> dict:
    return {key: source[key] for key in keys if key in source}


def figures_from_report(report: dict) -> dict:
    """The figures worth a summary from a vidpipe JSON report (generate, simulate, bench, memory-probe); any other
    report (gpu-check's own checks, doctor) is kept whole."""
    command = report.get("command")
    if command == "bench":
        return {"runs": [pick(run, RUN_KEYS) for run in report.get("runs", [])]}
    if command == "memory-probe":
        keys = ("strategy", "world_size", "frames", "height", "width", "status", "fits", "peak_memory_gb",
                "peak_memory_kind", "reason", *MEMORY_KEYS)
        return {"rows": [pick(row, keys) for row in report.get("rows", [])], "search": report.get("search", [])}
    if command in ("generate", "simulate"):
        return pick(report, RUN_KEYS)
    return report


def nccl_lines(log_text: str, limit: int = 24) -> dict:
    """NCCL's version and how its ranks connect (transport lines), from an NCCL_DEBUG=INFO log."""
    version = re.search(r"NCCL version (\S+)", log_text)
    transport = []
    for line in log_text.splitlines():
        if "NCCL INFO" not in line:
            continue
        text = line.split("NCCL INFO", 1)[1].strip()
        if re.search(r" via |NET/|Using network|NVLS|CollNet|P2P plugin|Connected all", text) and \
                text not in transport:
            transport.append(text)
    return {"nccl_version_line": version.group(0) if version else None, "nccl_transport_lines": transport[:limit],
            "nccl_info_lines": sum("NCCL INFO" in line for line in log_text.splitlines())}


def step_figures(step: Step, log: Path) -> dict:
    figures: dict = {}
    if step.report and (REPO / step.report).is_file():
        try:
            figures = figures_from_report(json.loads((REPO / step.report).read_text()))
        except (OSError, ValueError) as error:
            figures = {"report_error": f"cannot read {step.report}: {error}"}
    if step.stdout_to and not step.report:
        figures["output"] = (REPO / step.stdout_to).read_text(errors="replace")[-4000:]
    if step.env.get("NCCL_DEBUG"):
        figures.update(nccl_lines(log.read_text(errors="replace")))
    return figures
