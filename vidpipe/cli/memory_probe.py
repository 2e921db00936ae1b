"""`vidpipe memory-probe`: what fits where."""

from __future__ import annotations

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
    StallTimeout,
)
from vidpipe.config import MemoryProbeConfig, parse_int_list, parse_list, parse_sizes
from vidpipe.runtime.forkserver import start_worker_server


def memory_probe(
    model: Annotated[str, typer.Option(
        help="svd-xt-random (full-size architecture, random weights, no download), tiny, small, svd-xt, a hub id "
             "or a local diffusers folder.")] = "svd-xt-random",
    strategy: Annotated[str, typer.Option(
        help="Comma-separated plans, e.g. pp,fsdp,cfg2,sp2,cfg2.sp2.fsdp (see generate --help).")] = "pp,fsdp",
    gpus: Annotated[str, typer.Option("--gpus", "-g", help="Comma-separated rank counts, e.g. 1,2,4.")] = "1,2",
    frames: Annotated[str | None, typer.Option(
        help="Comma-separated frame counts, e.g. 14,25 (default: the model's).")] = None,
    size: Annotated[str | None, typer.Option(
        help="Comma-separated HEIGHTxWIDTH pixel sizes, e.g. 576x1024,320x576 (default: the model's).")] = None,
    budget_gb: Annotated[float | None, typer.Option(
        "--budget-gb", help="Judge fit against this many GB per rank (default on GPU: the device's memory).")] = None,
    search: Annotated[str | None, typer.Option(
        help="frames or size: bisect for the largest frame count (or resolution, same aspect) that fits, per "
             "strategy and GPU count.")] = None,
    search_limit: Annotated[int, typer.Option(
        help="Largest frame count (or height in size multiples) --search tries.")] = 256,
    decode_chunk_size: Annotated[int, typer.Option(help="Frames decoded at a time in the decode phase.")] = 4,
    device: Device = "auto",
    dtype: Dtype = "auto",
    backend: Backend = "auto",
    offline: Offline = False,
    cache_dir: CacheDir = None,
    json_path: Annotated[str | None, typer.Option("--json", help="Write the results here (- = stdout).")] = None,
    stall_timeout: StallTimeout = 300.0,
    load_timeout: LoadTimeout = 600.0,
    dist_timeout: DistTimeout = 1800.0,
) -> None:
    """What fits where: parameter bytes and peak memory per rank, per phase, per strategy and GPU count.

    Each configuration loads the model in fresh processes, encodes one sample, runs one denoising step and
    decodes, marking each rank's peak memory after each phase. An out-of-memory is reported and the probe goes on.

    On CPU each rank's peak RSS is measured instead (and says so). Examples:

        vidpipe memory-probe --model svd-xt-random --strategy pp,fsdp --gpus 1,2 --frames 14,25 --size 576x1024

        vidpipe memory-probe --model tiny --strategy pp,fsdp --gpus 1,2 --device cpu

        vidpipe memory-probe --strategy fsdp --gpus 2 --search frames
    """
    start_worker_server()  # imports for the ranks, on another core, while we check the input
    from vidpipe.jobs.memory_probe import memory_probe as run_probe

    run_probe(MemoryProbeConfig(
        model=model, strategies=parse_list("--strategy", strategy),
        gpus=parse_int_list("--gpus", gpus), frames=parse_int_list("--frames", frames) if frames else (None,),
        sizes=parse_sizes("--size", size) if size else (None,), budget_gb=budget_gb, search=search,
        search_limit=search_limit, decode_chunk_size=decode_chunk_size, device=device, dtype=dtype,
        backend=backend, stall_timeout_s=stall_timeout, load_timeout_s=load_timeout, offline=offline,
        dist_timeout_s=dist_timeout,
        cache_dir=str(cache_dir) if cache_dir else None, json_path=json_path,
    ))
