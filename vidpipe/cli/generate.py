"""`vidpipe generate`: still image(s) -> short videos with Stable Video Diffusion, spread over ranks."""

from __future__ import annotations

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
    JsonPath,
    LoadTimeout,
    Offline,
    Seed,
    StallTimeout,
    Verbose,
    WarmupSamples,
)
from vidpipe.config import GenerateConfig, RunOptions
from vidpipe.runtime.forkserver import start_worker_server


def generate(
    images: Annotated[list[Path] | None, typer.Argument(
        help="Input image file(s): PNG, JPEG, WebP, ... (or --jobs FILE.jsonl)")] = None,
    model: Annotated[str, typer.Option(
        help="Hub id, local diffusers directory, svd-xt, tiny (built-in tiny random model, CPU demos), small "
             "(62M-parameter random SVD, CPU measurements) or svd-xt-random (full-size architecture, random "
             "weights, no download).")
    ] = "stabilityai/stable-video-diffusion-img2vid-xt",
    gpus: Annotated[int | None, typer.Option(
        "--gpus", "-g", help="Ranks, one per GPU (default: every visible GPU; on CPU one process). Under "
                             "torchrun: its ranks.")] = None,
    strategy: Annotated[str, typer.Option(
        help="auto (chooses from the job and the GPUs' memory, and says why) or a p" + PLAN_HELP[1:])] = "auto",
    samples: Annotated[int, typer.Option(help="Videos per image; sample i of the run uses seed + i.")] = 1,
    seed: Seed = 0,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 25,
    frames: Annotated[int | None, typer.Option(help="Frames per video (default: the model's, 25 for SVD-XT).")] = None,
    height: Annotated[int | None, typer.Option(help="Video height in pixels (default 576; tiny: 64).")] = None,
    width: Annotated[int | None, typer.Option(help="Video width in pixels (default 1024; tiny: 64).")] = None,
    fps: Annotated[int, typer.Option(help="Frame rate: conditions the model and sets the video's rate.")] = 7,
    motion_bucket_id: Annotated[int, typer.Option("--motion-bucket-id", help="More motion when higher.")] = 127,
    noise_aug_strength: Annotated[float, typer.Option("--noise-aug-strength",
                                                      help="Noise added to the input image.")] = 0.02,
    min_guidance: Annotated[float, typer.Option("--min-guidance", help="Guidance on the first frame.")] = 1.0,
    max_guidance: Annotated[float, typer.Option("--max-guidance", help="Guidance on the last frame.")] = 3.0,
    decode_chunk_size: Annotated[int, typer.Option("--decode-chunk-size",
                                                   help="Frames the VAE decodes at once (less = less memory).")] = 4,
    vae_device: Annotated[str, typer.Option("--vae-device", help="gpu | cpu: where phase 2 decodes.")] = "gpu",
    device: Device = "auto",
    dtype: Dtype = "auto",
    backend: Backend = "auto",
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("outputs"),
    formats: Annotated[str, typer.Option("--format", help="Comma list of mp4, gif, png (png = a folder of "
                                                          "lossless frames).")] = "mp4",
    save_latents: Annotated[bool, typer.Option("--save-latents", help="Also save final latents "
                                                                      "(.latents.safetensors).")] = False,
    offline: Offline = False,
    cache_dir: CacheDir = None,
    json_path: JsonPath = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    resume: Annotated[bool, typer.Option(help="Skip samples whose output files are all there already.")] = False,
    warmup_samples: WarmupSamples = 0,
    jobs: Annotated[Path | None, typer.Option(
        "--jobs", help="A JSONL job file instead of images: one object per line, {\"image\": \"a.png\", \"id\": "
                       "\"a\", ...generate's options, \"sweep\": [per-sample overrides]}; job id's files go to "
                       "OUT/id/, --resume skips finished ones.")] = None,
    compile_unet: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the UNet block by block (its repeated blocks; minutes to compile the first "
                          "time, cached after; on CPU it needs a C compiler). Works with every plan.")] = False,
    stall_timeout: StallTimeout = 300.0,
    load_timeout: LoadTimeout = 600.0,
    dist_timeout: DistTimeout = 1800.0,
    verbose: Verbose = False,
) -> None:
    """Turn image(s) into videos. Example: vidpipe generate photo.png --gpus 4 --samples 4

    Phase 1 diffuses every sample under the plan (--strategy; auto by default: one video on many GPUs is split
    by guidance batch and frames, many videos go to whole samples per group); phase 2 frees the UNet and
    decodes in fp32, chunk by chunk (a single video's chunks spread over ranks), writing each video at once.
    """
    start_worker_server()  # imports for the ranks, on another core, while we check the input
    from vidpipe.jobs.generate import generate as run_generate
    from vidpipe.media import parse_formats

    run = RunOptions(gpus, strategy, device, dtype, backend, stall_timeout, verbose, load_timeout, compile_unet,
                     dist_timeout_s=dist_timeout)
    config = GenerateConfig(
        run, tuple(str(p) for p in images or ()), model, samples, seed, steps, frames, height, width, fps,
        motion_bucket_id, noise_aug_strength, min_guidance, max_guidance, decode_chunk_size, vae_device,
        str(out), parse_formats(formats), save_latents, offline, str(cache_dir) if cache_dir else None,
        json_path, overwrite, warmup_samples, resume, str(jobs) if jobs else None,
    )
    run_generate(config)
