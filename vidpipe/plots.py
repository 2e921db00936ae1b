"""`bench --plot DIR`: four PNGs, one line per strategy over the rank counts (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from vidpipe.config import BASELINE
from vidpipe.media.atomic import atomic_output

#: (file name, y label, how to read the figure from a run)
FIGURES = (
    ("throughput_vs_gpus.png", "throughput (samples/s = N / makespan)", lambda r: r["throughput_samples_per_s"]),
    ("latency_vs_gpus.png", "per-sample latency, mean (s)", lambda r: r["latency_mean_s"]),
    ("scaling_efficiency.png", "scaling efficiency (speed-up / GPUs)", lambda r: r["scaling_efficiency"]),
    ("peak_memory_per_rank.png", "peak memory per rank, max over ranks (GB)",
     lambda r: max(r["peak_memory_gb_per_rank"])),
)


def _title(summary: dict, what: str) -> str:
    shape = (f"latent {'x'.join(map(str, summary['latent_shape']))}" if "latent_shape" in summary
             else f"{summary['frames']}x{summary['height']}x{summary['width']}")
    return f"{what}\n{summary['model']}, {shape}, {summary['total_steps']} steps, {summary['device_type']}"


def bench_plots(summary: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in summary["runs"] if r["status"] == "ok"]
    memory_kind = next((r["peak_memory_kind"] for r in runs), "cpu_peak_rss")
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu_counts = sorted({r["world_size"] for r in runs if r["strategy"] != BASELINE} | {1})
    written = []
    for name, label, value in FIGURES:
        if "memory" in name and memory_kind == "cpu_peak_rss":
            label = label.replace("peak memory", "peak RSS (CPU)")
        figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
        for strategy in dict.fromkeys(r["strategy"] for r in runs):
            points = sorted((r["world_size"], value(r)) for r in runs if r["strategy"] == strategy)
            points = [(x, y) for x, y in points if y is not None]
            if not points:
                continue
            if strategy == BASELINE:  # one device: a reference level across the plot
                axes.axhline(points[0][1], linestyle="--", color="gray", label="diffusers (1 GPU)")
                continue
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", label=strategy)
        if name == "scaling_efficiency.png":
            axes.axhline(1.0, linestyle=":", color="black", linewidth=0.8, label="ideal")
        axes.set_ylim(bottom=0)  # from zero: a few MB of difference must not look like a factor
        axes.set_xticks(gpu_counts)
        axes.set_xlabel("GPUs (ranks)")
        axes.set_ylabel(label)
        axes.set_title(_title(summary, label.split(" (")[0]), fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = out_dir / name
        with atomic_output(path) as temp:
            figure.savefig(temp, format="png")
        plt.close(figure)
        written.append(path)
    return written
