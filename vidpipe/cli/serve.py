"""`vidpipe serve`: warm GPUs behind a job queue over HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from vidpipe.cli.options import (
    PLAN_HELP,
    Backend,
    CacheDir,
    Device,
    DistTimeout,
    Dtype,
    Gpus,
    LoadTimeout,
    MaxFrames,
    MaxPixels,
    MaxSamplesPerJob,
    MaxSteps,
    Offline,
    StallTimeout,
)
from vidpipe.config import RunOptions, ServeConfig
from vidpipe.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SAMPLES_PER_JOB, DEFAULT_MAX_STEPS, Limits
from vidpipe.runtime.forkserver import start_worker_server


def serve(
    model: Annotated[str, typer.Option(
        help="Hub id, local diffusers directory (SVD or Wan image-to-video), or a built-in name: svd-xt, tiny, "
             "small, svd-xt-random, wan2.1-i2v-480p, wan2.2-i2v-a14b, wan-tiny, ... (see generate --help). Jobs take "
             "the model family's options (SVD: fps, motion, ...; Wan: prompt, guidance scale).")
    ] = "stabilityai/stable-video-diffusion-img2vid-xt",
    gpus: Gpus = None,
    strategy: Annotated[str, typer.Option(
        help="The plan the warm ranks run every job with (dp: throughput; cfg2, sp2: each video faster). "
             + PLAN_HELP)] = "dp",
    device: Device = "auto",
    dtype: Dtype = "auto",
    backend: Backend = "auto",
    out: Annotated[Path, typer.Option(
        help="Uploads and results go here (and the jobs, in SQLite, without --store). A fleet's nodes share one "
             "folder, mounted at the same path on each (NFS, say).")] = Path("outputs/serve"),
    store: Annotated[str | None, typer.Option(
        envvar="VIDPIPE_STORE", metavar="DSN", show_default=False,
        help="postgresql://USER:PASSWORD@HOST:PORT/DATABASE: keep the jobs, and the queue, in Postgres, shared by "
             "every node started with the same DSN (a fleet, docs/fleet.md). Default: SQLite in --out, one node. "
             "Also $VIDPIPE_STORE.")] = None,
    node_name: Annotated[str | None, typer.Option(
        "--node-name", show_default=False,
        help="This node's name in the fleet (jobs, health and the page show it). Default: HOST:PORT.")] = None,
    lease_timeout: Annotated[float, typer.Option(
        "--lease-timeout", help="Seconds a node may go without a heartbeat before another node takes its jobs "
                                "over and runs them again.")] = 30.0,
    max_attempts: Annotated[int, typer.Option(
        "--max-attempts", help="Times a job is started before it fails for good, when its node keeps dying.")] = 3,
    host: Annotated[str, typer.Option(
        help="Address to listen on. Anything but this machine (127.0.0.1) needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 = any free port (printed).")] = 8000,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", help="Jobs waiting at most; a full queue answers 429 at once.")] = 100,
    max_queued_per_client: Annotated[int | None, typer.Option(
        "--max-queued-per-client", help="Jobs one client may have waiting (a client: its token, or its address "
                                        "when the server has none); more answer 429 with Retry-After.")] = None,
    max_samples_per_job: MaxSamplesPerJob = DEFAULT_MAX_SAMPLES_PER_JOB,
    max_frames: MaxFrames = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    max_steps: MaxSteps = DEFAULT_MAX_STEPS,
    token: Annotated[list[str] | None, typer.Option(
        metavar="TOKEN", help="Bearer token every route but /v1/health requires; repeat it to give each client its "
                              "own (default: $VIDPIPE_TOKEN, comma-separated, else none).")] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest image upload.")] = 20.0,
    vae_device: Annotated[str, typer.Option(
        "--vae-device", help="gpu | cpu: where the warm ranks decode (the UNet stays loaded).")] = "gpu",
    text_encoder_device: Annotated[str | None, typer.Option(
        "--text-encoder-device", help="Wan: gpu | cpu, where UMT5 encodes the jobs' prompts (default gpu).")] = None,
    compile_unet: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the denoiser's repeated blocks once, at start.")] = False,
    offline: Offline = False,
    cache_dir: CacheDir = None,
    stall_timeout: StallTimeout = 300.0,
    load_timeout: LoadTimeout = 600.0,
    dist_timeout: DistTimeout = 1800.0,
) -> None:
    """Keep the model warm on the GPUs and run jobs as they come over HTTP (see docs/serve.md).

    Example: vidpipe serve --gpus 4 --strategy dp   then   vidpipe submit photo.png --server http://127.0.0.1:8000

    POST /v1/jobs (multipart: image + generate's options, or a JSON sweep), GET /v1/jobs/{id}, its /events
    (Server-Sent Events), DELETE to cancel, GET /v1/files/{id}/{name}, GET /v1/health; the page is at /.
    """
    start_worker_server()  # imports for the ranks, on another core, while we check the input
    from vidpipe.serve.server import serve as run_server

    run = RunOptions(gpus, strategy, device, dtype, backend, stall_timeout, False, load_timeout, compile_unet,
                     dist_timeout_s=dist_timeout)
    tokens = tuple(token or [t for t in os.environ.get("VIDPIPE_TOKEN", "").split(",") if t])
    run_server(ServeConfig(
        run, model, str(out), host, port, max_queue, tokens, max_upload_mb, offline,
        str(cache_dir) if cache_dir else None, vae_device, text_encoder_device,
        Limits(max_samples_per_job, max_frames, max_pixels, max_steps), max_queued_per_client,
        store, node_name, lease_timeout, max_attempts,
    ))
