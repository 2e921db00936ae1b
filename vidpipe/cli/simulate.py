"""`vidpipe simulate`: the whole pipeline logic with a stand-in UNet, on any machine."""

from __future__ import annotations

from typing import Annotated

import typer

from vidpipe.cli.options import (
    Backend,
    Device,
    DistTimeout,
    Dtype,
    Gpus,
    JsonPath,
    LoadTimeout,
    Seed,
    StallTimeout,
    Steps,
    Strategy,
    Verbose,
    WarmupSamples,
)
from vidpipe.config import RunOptions, SimulateConfig
from vidpipe.runtime.forkserver import SIMULATE_PRELOAD, start_worker_server

#: The worker server's extra preload for a Wan stand-in (jobs/simulate.py `WAN_SIMULATOR`).
WAN_PRELOAD = ("vidpipe.models.wan.simulator",)


def simulate(
    model: Annotated[
        str, typer.Option("--model", help="The stand-in: dummy (SVD-XT's shapes) or a full-size Wan transformer: "
                                          "wan2.1-i2v-14b-480p-random, wan2.1-i2v-14b-720p-random, "
                                          "wan2.2-i2v-a14b-random.")
    ] = "dummy",
    gpus: Gpus = None,
    strategy: Strategy = "pp",
    steps: Steps = 28,
    samples: Annotated[int, typer.Option(help="Samples to diffuse (after warm-up).")] = 8,
    warmup_samples: WarmupSamples = 1,
    latent_shape: Annotated[
        tuple[int, int, int, int, int] | None,
        typer.Option("--latent-shape", help="Latent size B C F H W. dummy: default 1 4 14 40 72 (SVD-XT at 14 x "
                                            "320 x 576); Wan: the model's video by default (1 16 21 90 160 at 81 x "
                                            "720 x 1280: 75,600 tokens)."),
    ] = None,
    step_ms: Annotated[
        float, typer.Option("--step-ms", help="Each UNet call also waits this long without using the CPU, "
                                              "like a GPU kernel: study many ranks on few cores.")
    ] = 0.0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    backend: Backend = "auto",
    seed: Seed = 0,
    json_path: JsonPath = None,
    stall_timeout: StallTimeout = 300.0,
    load_timeout: LoadTimeout = 600.0,
    dist_timeout: DistTimeout = 1800.0,
    verbose: Verbose = False,
) -> None:
    """Run a plan (pp, dp, fsdp, cfg2, sp2, ...) with a stand-in denoiser and measure it.

    Every sample's final latents are checked against a 1-rank computation of the same seed. Examples:

        vidpipe simulate --gpus 7 --strategy pp --steps 28 --samples 28 --step-ms 20 --json r7.json

        vidpipe simulate --model wan2.1-i2v-14b-720p-random --gpus 8 --strategy cfg2.sp4 --steps 4 --step-ms 200
    """
    # Imports for the ranks, on another core, while we go on.
    start_worker_server(SIMULATE_PRELOAD + (() if model == "dummy" else WAN_PRELOAD))
    from vidpipe.jobs.simulate import default_latent_shape
    from vidpipe.jobs.simulate import simulate as run_simulate

    run = RunOptions(gpus, strategy, device, dtype, backend, stall_timeout, verbose, load_timeout,
                     dist_timeout_s=dist_timeout)
    run_simulate(SimulateConfig(run, steps, samples, warmup_samples, latent_shape or default_latent_shape(model),
                                step_ms, seed, json_path, model))
