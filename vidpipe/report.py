"""Reports: the JSON every run writes, the rich tables it prints (to stderr), and the run conditions."""

from __future__ import annotations

import json
import platform
import socket
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vidpipe import __version__, media
from vidpipe.config import BASELINE
from vidpipe.metrics import RankRecord, summarize
from vidpipe.parallel.plan import ParallelPlan
from vidpipe.strategies.registry import scheduler_for
from vidpipe.strategies.schedule import describe_blocks

#: Logs, progress and tables go to stderr; stdout is kept for results (`--json -`).
stderr_console = Console(stderr=True)


def versions() -> dict:
    from importlib.metadata import version

    import torch

    return {
        "vidpipe": __version__,
        "torch": torch.__version__,
        "diffusers": version("diffusers"),  # NOTE: not `import diffusers`: seconds the parent process never needs
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
    }


def step_assignment(strategy: str, plan: ParallelPlan, total_steps: int, switch: int | None = None) -> dict:
    """Steps each rank runs, and one sentence on how the plan maps work onto ranks (`switch`: the step where a
    two-expert model changes experts)."""
    if strategy == BASELINE:
        return {"steps_per_rank": [total_steps], "step_assignment": "the stock diffusers pipeline, one device"}
    scheduler = scheduler_for(plan)
    per_rank = [len(scheduler.steps_of_group(total_steps, plan.groups, rank // plan.group_size, switch))
                for rank in range(plan.world_size)]
    unit = "rank" if plan.group_size == 1 else "stage"
    if plan.sample_axis == "pp":
        how = describe_blocks(total_steps, plan.groups, unit, switch)
    elif plan.group_size == 1:
        how = f"every rank runs all {total_steps} steps of its own samples"
    else:
        how = f"each of {plan.groups} group(s) runs all {total_steps} steps of its own samples"
    return {"steps_per_rank": per_rank, "step_assignment": how + group_description(plan)}


def group_description(plan: ParallelPlan) -> str:
    """How the ranks of one group share a sample ('' for groups of one rank)."""
    if plan.group_size == 1:
        return ""
    if not plan.splits_sample:
        return f"; each group of {plan.group_size} ranks runs every sample in lockstep with 1/{plan.shard} of the UNet"
    splits = []
    if plan.cfg > 1:
        splits.append("the guidance batch (cfg2)")
    if plan.sp > 1:
        splits.append(f"the frames (sp{plan.sp})")
    sharded = ", the UNet sharded over the group (fsdp)" if plan.fsdp else ""
    return f"; each group of {plan.group_size} ranks splits every step of a sample: {' x '.join(splits)}{sharded}"


def gpu_description(world_size: int) -> str:
    """The GPUs a run of `world_size` ranks on this machine uses, as the driver names them ("NVIDIA H200", "2 x
    ..." when they differ). NOTE: read with nvidia-smi: asking torch would create a CUDA context in the launcher."""
    from vidpipe.runtime.gpus import visible_gpus

    names = [gpu.name for gpu in visible_gpus()[:max(1, world_size)]]
    if not names:
        return "cuda (nvidia-smi unavailable: GPU name unknown)"
    counts = {name: names.count(name) for name in dict.fromkeys(names)}
    if len(counts) == 1:
        return names[0]
    return " + ".join(f"{count} x {name}" for name, count in counts.items())


def conditions(device_type: str, backend: str, dtype: str, world_size: int) -> dict:
    device = gpu_description(world_size) if device_type == "cuda" else f"cpu ({platform.processor() or 'x86'})"
    return {
        "device": device,
        "device_type": device_type,
        "backend": backend,
        "dtype": dtype,
        "world_size": world_size,
        "host": socket.gethostname(),
        "versions": versions(),
    }


def run_report(
    command: str, model: str, strategy_name: str, plan: ParallelPlan, spec, dtype: str, total_steps: int,
    seeds: list[int], warmup_samples: int, records: list[RankRecord], expert_switch: int | None = None, **details,
) -> dict:
    """What every command's report starts with: the run's conditions, its schedule and the design-§7 figures.

    `strategy_name` is the plan as the user wrote it (bench groups runs by it), `plan` the plan in full;
    `spec` is the run's `LaunchSpec`; `expert_switch` the step where a two-expert model changes experts (the
    step pipeline's blocks break there); `details` (shapes, model source, ...) go between the schedule and figures.
    """
    scheduler = scheduler_for(plan)
    world_size = spec.world_size
    return {
        "command": command,
        "model": model,
        "strategy": strategy_name,
        "plan": plan.name,
        "plan_degrees": {"sample_axis": plan.sample_axis, "groups": plan.groups, "cfg": plan.cfg, "sp": plan.sp,
                         "fsdp": plan.fsdp, "group_size": plan.group_size},
        **conditions(spec.device_type, spec.backend, dtype, world_size),
        "total_steps": total_steps,
        **step_assignment(strategy_name, plan, total_steps, expert_switch),
        "num_samples": len(seeds),
        "warmup_samples": warmup_samples,
        "seeds": list(seeds),
        **details,
        **summarize(records,
                    lambda step_s, n: scheduler.ideal_makespan(step_s, n, total_steps, plan.groups, expert_switch)),
    }


def write_json(report: dict, path: str | None) -> None:
    """`-` = stdout; otherwise written atomically beside its final name."""
    if path is None:
        return
    text = json.dumps(report, indent=2, default=str)
    if path == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    media.write_json(target, json.loads(text))  # atomic; `text` already turned odd values into strings


def print_wide(console: Console, table: Table) -> None:
    """Print `table` at its natural width: a narrow terminal then wraps lines instead of rich cutting figures
    short ("23.2…") to fit."""
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum
    width = console.width
    console.width = max(width, natural)  # print(width=) is capped at the console's width
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def assignment_table(report: dict) -> Table:
    table = Table(title=f"Step assignment ({report.get('plan', report['strategy'])}): {report['step_assignment']}")
    table.add_column("rank", justify="right")
    table.add_column("group", justify="right")
    table.add_column("steps", justify="right")
    table.add_column("block")
    degrees = report.get("plan_degrees") or {"sample_axis": "dp", "group_size": 1}
    group_size, pipelined = degrees["group_size"], degrees["sample_axis"] == "pp"
    start = 0
    for rank, count in enumerate(report["steps_per_rank"]):
        block = f"{start}..{start + count - 1}" if pipelined else "all"
        table.add_row(str(rank), str(rank // group_size), str(count), block)
        if pipelined and rank % group_size == group_size - 1:
            start += count
    return table


def samples_table(report: dict) -> Table:
    table = Table(title="Samples (latency = first step started -> last step finished)")
    for column in ("sample", "seed", "latency s", "finished at s"):
        table.add_column(column, justify="right")
    for row in report["samples"]:
        table.add_row(str(row["index"]), str(row["seed"]), _fmt(row["latency_s"]), _fmt(row["finished_at_s"]))
    return table


def summary_table(report: dict) -> Table:
    table = Table(title=f"Summary: {report.get('plan', report['strategy'])} on {report['world_size']} rank(s), "
                        f"{report['device']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    memory_label = ("peak RSS GB/rank" if report["peak_memory_kind"] == "cpu_peak_rss"
                    else "peak GPU GB/rank (allocated)")
    rows = [
        ("first sample time s (pipeline fill)", _fmt(report["first_sample_time_s"])),
        ("latency mean / p50 / max s", " / ".join(
            _fmt(report[k]) for k in ("latency_mean_s", "latency_p50_s", "latency_max_s"))),
        ("steady interval s (between completions)", _fmt(report["steady_interval_s"])),
        ("steady throughput samples/s", _fmt(1 / report["steady_interval_s"] if report["steady_interval_s"] else None)),
        ("makespan s", _fmt(report["makespan_s"])),
        ("throughput samples/s (N / makespan)", _fmt(report["throughput_samples_per_s"])),
        ("step time s (median)", _fmt(report["step_time_s"], 4)),
        ("ideal makespan s", _fmt(report["ideal_makespan_s"])),
        ("efficiency (ideal / measured)", _fmt(report["efficiency"])),
        ("busy fraction per rank", " ".join(_fmt(v, 2) for v in report["rank_busy_fraction"])),
        ("comm s per rank (hand-offs)", " ".join(_fmt(v, 3) for v in report["comm_s_per_rank"])),
        ("encode s per rank", " ".join(_fmt(v, 3) for v in report["encode_s_per_rank"])),
        (memory_label, " ".join(_fmt(v, 2) for v in report["peak_memory_gb_per_rank"])),
        *device_memory_rows(report),
        ("backend / dtype", f"{report['backend']} / {report['dtype']}"),
    ]
    if any(report.get("split_comm_bytes_per_step_per_rank") or []):
        after_encode = [name for name, _ in rows].index("encode s per rank") + 1  # beside the other comm figures
        rows.insert(after_encode, ("cfg/sp bytes sent per step per rank", " ".join(
            _fmt_bytes(v) for v in report["split_comm_bytes_per_step_per_rank"])))
    if report.get("launch_to_first_step_s"):
        rows.append(("launch -> every rank's first step s", _fmt(report["launch_to_first_step_s"], 2)))
    if "verified" in report:
        rows.append(("verified vs 1 rank", f"{report['verified']} ({report['verify_mode']})"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def device_memory_rows(report: dict) -> list[tuple[str, str]]:
    """The CUDA-only memory figures, where the run has them (none on CPU, so its table stays as it was)."""
    rows = []
    for label, key in (("peak reserved GB/rank (allocator pool)", "peak_reserved_gb_per_rank"),
                       ("driver GB/rank (nvidia-smi, per process)", "driver_memory_gb_per_rank")):
        values = report.get(key) or []
        if any(v is not None for v in values):
            rows.append((label, " ".join(_fmt(v, 2) for v in values)))
    return rows


def sample_rows(latency_by_sample: dict, completion_by_sample: dict, seeds: dict) -> list[dict]:
    return [
        {"index": i, "seed": seeds[i], "latency_s": latency_by_sample[i], "finished_at_s": completion_by_sample[i]}
        for i in sorted(latency_by_sample)
    ]
