"""`bench` results as a rich table and a CSV file (one row per run). Figures as defined in design §7."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from rich import box
from rich.table import Table

from vidpipe.media.atomic import atomic_output
from vidpipe.report import print_wide

#: CSV columns, in order; lists (per-rank figures) are written space-separated.
CSV_COLUMNS = (
    "strategy", "plan", "world_size", "status", "reason", "verified", "verify_max_abs_diff", "first_sample_time_s",
    "latency_mean_s", "latency_p50_s", "latency_max_s", "latency_speedup", "latency_reference",
    "steady_interval_s", "throughput_samples_per_s",
    "time_per_sample_s", "makespan_s", "speedup", "scaling_efficiency", "speedup_vs_baseline", "efficiency",
    "split_comm_bytes_per_step_per_rank", "split_comm_bytes_per_step_analytic", "split_comm_calls_per_step_per_rank",
    "launch_to_first_step_s", "compiled", "compile_s_per_rank", "step_time_s", "step_time_vs_baseline",
    "peak_memory_gb_per_rank", "peak_memory_kind", "peak_reserved_gb_per_rank", "driver_memory_gb_per_rank",
    "comm_s_per_rank", "unet_param_bytes_per_rank", "device",
    "backend", "dtype", "model", "total_steps", "num_samples", "warmup_samples", "repeats", "throughput_per_repeat",
)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        if all(v is None for v in value):  # a figure this device does not have (CUDA memory on CPU)
            return ""
        return " ".join("-" if v is None else _cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(runs: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for run in runs:
        writer.writerow([_cell(run.get(column)) for column in CSV_COLUMNS])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temp:
        temp.write_text(buffer.getvalue(), encoding="utf-8")


def _num(value, digits: int = 3, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _max(values) -> float | None:
    present = [v for v in values or [] if v is not None]
    return max(present) if present else None


def _compile_cell(run: dict) -> str:
    """The first step's extra time, or "none" where --compile found no block to compile (Wan under sp)."""
    if run.get("compiled") and _max(run.get("compiled_blocks_per_rank")) == 0:
        return "none"
    return _num(_max(run.get("compile_s_per_rank")), 1)


def _kb(values) -> str:
    """Bytes per step, max over ranks, in KB ('-' when nothing was sent: no cfg/sp)."""
    top = _max(values)
    return "-" if not top else f"{top / 1024:.0f}"


def _device_memory_columns(runs: list[dict]) -> dict[str, str]:
    """CUDA-only memory columns (header -> per-rank key) that some run has a figure for; none on CPU."""
    columns = {"rsv GB": "peak_reserved_gb_per_rank", "drv GB": "driver_memory_gb_per_rank"}
    return {header: key for header, key in columns.items()
            if any(_max(run.get(key)) is not None for run in runs if run["status"] == "ok")}


def bench_table(summary: dict) -> Table:
    runs = summary["runs"]
    memory_kind = next((r["peak_memory_kind"] for r in runs if r.get("peak_memory_kind")), "cpu_peak_rss")
    memory = "RSS GB" if memory_kind == "cpu_peak_rss" else "GPU GB"
    device_memory = _device_memory_columns(runs)
    allocated = "" if memory_kind == "cpu_peak_rss" else "allocated "
    memory_caption = f"{memory} = peak {allocated}per rank (max over ranks); "
    if device_memory:
        memory_caption += ("rsv GB = the allocator's peak reserved pool, drv GB = what nvidia-smi charged the "
                           "process (context and NCCL buffers included), max over ranks; ")
    shape = (f"latent {'x'.join(map(str, summary['latent_shape']))}" if "latent_shape" in summary
             else f"{summary['frames']} x {summary['height']} x {summary['width']}")
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"bench: {summary['model']}, {shape}, {summary['total_steps']} steps, "
              f"{summary['num_samples']} samples, {summary['device_type']}",
        caption="first = pipeline fill; latency = one sample's first step -> last step (mean p50 max); "
                "interval = between completions; samples/s = N / makespan (s/sample, its inverse, is in the "
                "JSON/CSV); lat x1 = one sample's latency on the 1-GPU reference over this plan's; x1 = throughput "
                "speed-up over the same strategy on 1 GPU, xbase = over diffusers; scal = x1 / GPUs; "
                "eff = ideal / measured makespan; "
                f"{memory_caption}comm = hand-off wait, max over ranks; KB/step = "
                "what cfg/sp collectives sent per step from the busiest rank, measured / analytic; step s = median "
                "step, step/base = over the stock pipeline's; compile s = the first step's extra time (--compile; "
                "none: no block to compile)",
    )
    columns = ("strategy", "plan", "GPUs", "first s", "latency s", "lat x1", "interval s", "samples/s", "x1",
               "xbase", "scal", "eff", "step s", "step/base", "compile s", memory, *device_memory, "comm s",
               "KB/step", "ok")
    rows = []
    for run in runs:
        if run["status"] != "ok":
            rows.append((run["strategy"], "", str(run["world_size"]), run["status"]))
            continue
        latency = " ".join(_num(run[k], 2) for k in ("latency_mean_s", "latency_p50_s", "latency_max_s"))
        sent = _kb(run.get("split_comm_bytes_per_step_per_rank"))
        if sent != "-" and run.get("split_comm_bytes_per_step_analytic"):
            sent += f" / {_kb(run['split_comm_bytes_per_step_analytic'])}"
        rows.append((
            run["strategy"], run.get("plan", ""), str(run["world_size"]), _num(run["first_sample_time_s"], 2),
            latency, _num(run.get("latency_speedup"), 2, "x"),
            _num(run["steady_interval_s"]), _num(run["throughput_samples_per_s"]),
            _num(run["speedup"], 2, "x"), _num(run["speedup_vs_baseline"], 2, "x"),
            _num(run["scaling_efficiency"], 2), _num(run["efficiency"], 2), _num(run["step_time_s"], 3),
            _num(run.get("step_time_vs_baseline"), 2), _compile_cell(run),
            _num(_max(run["peak_memory_gb_per_rank"]), 2),
            *(_num(_max(run.get(key)), 2) for key in device_memory.values()),
            _num(_max(run["comm_s_per_rank"]), 2), sent,
            "yes" if run["verified"] else "NO",
        ))
    # NOTE: each column is as wide as its header and widest figure, so the natural width shows every figure.
    for i, column in enumerate(columns):
        widest = max([len(column), *(len(row[i]) for row in rows if len(row) == len(columns))])
        table.add_column(column, justify="left" if column in ("strategy", "ok") else "right", min_width=widest)
    for row in rows:
        if len(row) == len(columns):
            table.add_row(*row, style=None if row[-1] == "yes" else "red")
        else:  # skipped or failed: the reason is listed under the table
            table.add_row(*row[:3], f"[yellow]{row[3]}", *[""] * (len(columns) - 4))
    return table


def not_run_lines(summary: dict) -> list[str]:
    return [f"{r['strategy']} on {r['world_size']}: {r['status']}: {r['reason']}"
            for r in summary["runs"] if r["status"] != "ok"]


def print_bench(console, summary: dict) -> None:
    """The table, then why any run did not happen."""
    print_wide(console, bench_table(summary))
    for line in not_run_lines(summary):
        console.print(line, highlight=False)
