"""`memory-probe` results as rich tables."""

from __future__ import annotations

from rich import box
from rich.table import Table

MIB = 1024**2
#: Per-rank figures known only on CUDA (None entries on CPU): shown as columns where any row has one.
DEVICE_COLUMNS = {"reserved": "peak_reserved_gb_per_rank", "driver": "driver_memory_gb_per_rank"}


def _gb(values) -> str:
    return " ".join("-" if v is None else f"{v:.2f}" for v in values)


def _device_columns(rows: list[dict]) -> dict[str, str]:
    """The CUDA-only columns that have a figure in some row (none on CPU, so its table stays as it was)."""
    return {column: key for column, key in DEVICE_COLUMNS.items()
            if any(v is not None for row in rows for v in row.get(key) or [])}


def probe_table(summary: dict) -> Table:
    rows = summary["rows"]
    kind = next((r["peak_memory_kind"] for r in rows if r.get("peak_memory_kind")), None)
    extra = _device_columns(rows)
    if kind == "cpu_peak_rss":
        what = "peak RSS of each rank's process, GB (CPU: cumulative, includes Python and torch)"
    else:
        what = "peak allocated GPU memory per rank, GB"
        if extra:
            what += ("; reserved = the allocator's peak pool, driver = what nvidia-smi charged the process (context "
                     "and NCCL buffers included); fits = the largest of them within the budget")
    budget = (f"budget {summary['budget_gb']:.1f} GB ({summary['budget_source']})" if summary["budget_gb"]
              else "no budget: fits = ran without running out of memory")
    table = Table(box=box.SIMPLE_HEAD, title=f"memory-probe: {summary['model']} on {summary['device_type']}; {budget}",
                  caption=f"{what}; one value per rank. UNet MiB/rank = the denoiser's parameters each rank holds.")
    columns = ("strategy", "GPUs", "frames", "size", "UNet MiB/rank", "load", "encode", "denoise", "decode",
               *extra, "fits")
    for column in columns:
        table.add_column(column, justify="left" if column in ("strategy", "fits") else "right")
    for row in rows:
        size = f"{row['height']}x{row['width']}"
        if row["status"] != "ok":
            fits = "[red]no" if row["fits"] is False else "-"
            table.add_row(row["strategy"], str(row["world_size"]), str(row["frames"]), size,
                          f"[yellow]{row['status']}", *[""] * (len(columns) - 6), fits)
            continue
        peaks = row["peak_memory_gb_per_rank_by_phase"]
        table.add_row(
            row["strategy"], str(row["world_size"]), str(row["frames"]), size,
            " ".join(f"{b / MIB:.1f}" for b in row["unet_param_bytes_per_rank"]),
            *(_gb(peaks[phase]) for phase in ("load", "encode", "denoise", "decode")),
            *(_gb(row.get(key) or []) for key in extra.values()),
            "yes" if row["fits"] else "[red]no",
        )
    return table


def search_table(summary: dict) -> Table:
    # On CUDA the figure that decided "fits" (reserved or the driver's) is shown, not the allocated bytes.
    needs = any(found.get("needed_gb") not in (None, found["peak_memory_gb"]) for found in summary["search"])
    table = Table(box=box.SIMPLE_HEAD, title="Largest configuration that fits")
    for column in ("strategy", "GPUs", "axis", "largest fitting", "needs GB" if needs else "peak GB"):
        table.add_column(column)
    for found in summary["search"]:
        best = found["largest_fitting"]
        text = "nothing fits" if best is None else f"{best['frames']} frames at {best['height']}x{best['width']}"
        figure = found.get("needed_gb") if needs else found["peak_memory_gb"]
        table.add_row(found["strategy"], str(found["world_size"]), found["axis"], text,
                      "-" if figure is None else f"{figure:.2f}")
    return table
