"""`memory-probe` results as rich tables."""

from __future__ import annotations

from rich import box
from rich.table import Table

MIB = 1024**2


def _gb(values) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def probe_table(summary: dict) -> Table:
    rows = summary["rows"]
    kind = next((r["peak_memory_kind"] for r in rows if r.get("peak_memory_kind")), None)
    what = "peak RSS of each rank's process, GB (CPU: cumulative, includes Python and torch)" \
        if kind == "cpu_peak_rss" else "peak allocated GPU memory per rank, GB"
    budget = (f"budget {summary['budget_gb']:.1f} GB ({summary['budget_source']})" if summary["budget_gb"]
              else "no budget: fits = ran without running out of memory")
    table = Table(box=box.SIMPLE_HEAD, title=f"memory-probe: {summary['model']} on {summary['device_type']}; {budget}",
                  caption=f"{what}; one value per rank. UNet MiB/rank = the denoiser's parameters each rank holds.")
    for column in ("strategy", "GPUs", "frames", "size", "UNet MiB/rank", "load", "encode", "denoise", "decode",
                   "fits"):
        table.add_column(column, justify="left" if column in ("strategy", "fits") else "right")
    for row in rows:
        size = f"{row['height']}x{row['width']}"
        if row["status"] != "ok":
            fits = "[red]no" if row["fits"] is False else "-"
            table.add_row(row["strategy"], str(row["world_size"]), str(row["frames"]), size,
                          f"[yellow]{row['status']}", "", "", "", "", fits)
            continue
        peaks = row["peak_memory_gb_per_rank_by_phase"]
        table.add_row(
            row["strategy"], str(row["world_size"]), str(row["frames"]), size,
            " ".join(f"{b / MIB:.1f}" for b in row["unet_param_bytes_per_rank"]),
            *(_gb(peaks[phase]) for phase in ("load", "encode", "denoise", "decode")),
            "yes" if row["fits"] else "[red]no",
        )
    return table


def search_table(summary: dict) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="Largest configuration that fits")
    for column in ("strategy", "GPUs", "axis", "largest fitting", "peak GB"):
        table.add_column(column)
    for found in summary["search"]:
        best = found["largest_fitting"]
        text = "nothing fits" if best is None else f"{best['frames']} frames at {best['height']}x{best['width']}"
        peak = "-" if found["peak_memory_gb"] is None else f"{found['peak_memory_gb']:.2f}"
        table.add_row(found["strategy"], str(found["world_size"]), found["axis"], text, peak)
    return table
