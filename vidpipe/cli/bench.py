"""`vidpipe bench`: compare strategies and rank counts on the same job, each run in fresh processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vidpipe.cli.options import (
    Backend,
    CacheDir,
    Device,
    DistTimeout,
    Dtype,
    LoadTimeout,
    Offline,
    Seed,
    StallTimeout,
    Verbose,
    WarmupSamples,
)
from vidpipe.config import BenchConfig, parse_int_list, parse_list
from vidpipe.runtime.forkserver import start_worker_server


def bench(
    model: Annotated[str, typer.Option(
        help="dummy (stand-in UNet, any machine), tiny (tiny random SVD), small (62M-parameter random SVD UNet: "
             "honest CPU timings), svd-xt-random (full-size architecture, random weights, no download), svd-xt; "
             "wan-tiny, wan-small (random Wan 2.1 transformer sized for honest CPU timings), wan2.1-i2v-480p, ... "
             "(see generate --help); a hub id or a local diffusers folder.")] = "dummy",
    compare: Annotated[str, typer.Option(
        help="Comma-separated plans (pp, dp, fsdp, cfg2, sp2, dp2.cfg2, ...; see generate --help), and diffusers: "
             "the stock pipeline (StableVideoDiffusionPipeline or WanImageToVideoPipeline) on one device, the "
             "baseline. A plan that "
             "does not fit a GPU count (cfg2 on 1) is skipped with the reason.")] = "pp,dp,fsdp",
    gpus: Annotated[str, typer.Option("--gpus", "-g", help="Comma-separated rank counts, e.g. 1,2,4,7.")] = "1,2",
    samples: Annotated[int, typer.Option(help="Measured samples per run (after warm-up).")] = 8,
    warmup_samples: WarmupSamples = 1,
    repeats: Annotated[int, typer.Option(
        help="Runs per (strategy, GPUs), each in fresh processes; the median-throughput one is reported.")] = 1,
    steps: Annotated[int | None, typer.Option(
        help="Denoising steps per sample (default: 28 for dummy, 25 for SVD and Wan models).")] = None,
    latent_shape: Annotated[tuple[int, int, int, int, int] | None, typer.Option(
        "--latent-shape", help="dummy: latent size B C F H W (default 1 4 14 40 72).")] = None,
    frames: Annotated[int | None, typer.Option(help="Real models: frames (default: the model's).")] = None,
    height: Annotated[int | None, typer.Option(help="Real models: height in pixels (default: the model's).")] = None,
    width: Annotated[int | None, typer.Option(help="Real models: width in pixels (default: the model's).")] = None,
    step_ms: Annotated[float, typer.Option(
        "--step-ms", help="dummy: each UNet call takes this long without using the CPU, like a GPU kernel.")] = 0.0,
    image: Annotated[Path | None, typer.Option(
        help="Real models: input image (default: a built-in test card).")] = None,
    compile_unet: Annotated[str, typer.Option(
        "--compile", help="off | on | both: torch.compile the denoiser's repeated blocks (real models); both = "
                          "every plan eager and compiled ('dp+compile'), compile time apart from step time.")] = "off",
    seed: Seed = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    backend: Backend = "auto",
    offline: Offline = False,
    cache_dir: CacheDir = None,
    json_path: Annotated[str | None, typer.Option("--json", help="Write all runs' figures here (- = stdout).")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write one CSV row per run here.")] = None,
    plot_dir: Annotated[Path | None, typer.Option(
        "--plot", help="Write PNG plots here: throughput, latency, scaling efficiency, peak memory vs GPUs.")] = None,
    stall_timeout: StallTimeout = 300.0,
    load_timeout: LoadTimeout = 600.0,
    dist_timeout: DistTimeout = 1800.0,
    verbose: Verbose = False,
) -> None:
    """Measure strategies side by side: latency, throughput, speed-up, scaling efficiency, peak memory.

    Every (strategy, GPU count) runs in fresh processes with warm-up, device sync and the same samples; ratios
    come from this one bench. Examples:

        vidpipe bench --model dummy --compare pp,dp,fsdp --gpus 1,2,4 --samples 12 --steps 28 --step-ms 20 --plot plots

        vidpipe bench --model tiny --compare diffusers,pp,dp,fsdp --gpus 1,2 --samples 4 --device cpu

        vidpipe bench --model small --compare dp,cfg2,sp2 --gpus 1,2 --samples 1 --device cpu   (latency)

        VIDPIPE_THREADS_PER_RANK=1 vidpipe bench --model wan-small --compare dp,cfg2,sp2 --samples 1 --device cpu
    """
    start_worker_server()  # imports for the ranks, on another core, while we check the input
    from vidpipe.jobs.bench import bench as run_bench

    config = BenchConfig(
        model=model, compare=parse_list("--compare", compare), gpus=parse_int_list("--gpus", gpus),
        samples=samples, warmup_samples=warmup_samples, repeats=repeats, steps=steps,
        latent_shape=latent_shape or BenchConfig.latent_shape, frames=frames, height=height, width=width,
        step_ms=step_ms, image=str(image) if image else None, seed=seed, device=device, dtype=dtype,
        backend=backend, stall_timeout_s=stall_timeout, load_timeout_s=load_timeout, offline=offline,
        dist_timeout_s=dist_timeout,
        cache_dir=str(cache_dir) if cache_dir else None, json_path=json_path,
        csv_path=str(csv_path) if csv_path else None, compile=compile_unet,
        plot_dir=str(plot_dir) if plot_dir else None, verbose=verbose,
    )
    if latent_shape is not None and not config.is_dummy:
        from vidpipe.errors import UsageError

        raise UsageError("--latent-shape is for the dummy model; SVD models take --frames/--height/--width")
    run_bench(config)
