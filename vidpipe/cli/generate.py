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
    GuidanceScale,
    GuidanceScale2,
    JsonPath,
    LoadTimeout,
    MaxFrames,
    MaxPixels,
    MaxSamplesPerJob,
    MaxSteps,
    NegativePrompt,
    Offline,
    Prompt,
    Seed,
    StallTimeout,
    Verbose,
    WarmupSamples,
)
from vidpipe.config import GenerateConfig, RunOptions
from vidpipe.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SAMPLES_PER_JOB, DEFAULT_MAX_STEPS, Limits
from vidpipe.runtime.forkserver import start_worker_server


def generate(
    images: Annotated[list[Path] | None, typer.Argument(
        help="Input image file(s): PNG, JPEG, WebP, ... (or --jobs FILE.jsonl)")] = None,
    model: Annotated[str, typer.Option(
        help="Hub id, local diffusers directory (Stable Video Diffusion or Wan image-to-video, told apart by its "
             "model_index.json), or a built-in name: svd-xt, tiny (tiny random SVD, CPU demos), small (62M-parameter "
             "random SVD, CPU measurements), svd-xt-random (full-size architecture, random weights, no download); "
             "wan2.1-i2v-480p, wan2.1-i2v-720p, wan2.2-i2v-a14b, wan2.2-ti2v-5b (hub), wan-tiny, wan2.2-tiny, "
             "wan2.2-ti2v-tiny (tiny random Wan 2.1 / 2.2 A14B / 2.2 TI2V), wan-small (random, CPU measurements).")
    ] = "stabilityai/stable-video-diffusion-img2vid-xt",
    gpus: Annotated[int | None, typer.Option(
        "--gpus", "-g", help="Ranks, one per GPU (default: every visible GPU; on CPU one process). Under "
                             "torchrun: its ranks.")] = None,
    strategy: Annotated[str, typer.Option(
        help="auto (chooses from the job and the GPUs' memory, and says why) or a p" + PLAN_HELP[1:])] = "auto",
    samples: Annotated[int, typer.Option(help="Videos per image; sample i of the run uses seed + i.")] = 1,
    seed: Seed = 0,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the model's, SVD 25, Wan 50).")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames per video (default: the model's, 25 for SVD-XT).")] = None,
    height: Annotated[int | None, typer.Option(help="Video height in pixels (default 576; tiny: 64).")] = None,
    width: Annotated[int | None, typer.Option(help="Video width in pixels (default 1024; tiny: 64).")] = None,
    fps: Annotated[int | None, typer.Option(
        help="SVD: frame rate; conditions the model and sets the video's rate (default 7).")] = None,
    motion_bucket_id: Annotated[int | None, typer.Option(
        "--motion-bucket-id", help="SVD: more motion when higher (default 127).")] = None,
    noise_aug_strength: Annotated[float | None, typer.Option(
        "--noise-aug-strength", help="SVD: noise added to the input image (default 0.02).")] = None,
    min_guidance: Annotated[float | None, typer.Option(
        "--min-guidance", help="SVD: guidance on the first frame (default 1.0).")] = None,
    max_guidance: Annotated[float | None, typer.Option(
        "--max-guidance", help="SVD: guidance on the last frame (default 3.0).")] = None,
    decode_chunk_size: Annotated[int | None, typer.Option(
        "--decode-chunk-size", help="SVD: frames the VAE decodes at once (less = less memory; default 4).")] = None,
    prompt: Prompt = None,
    negative_prompt: NegativePrompt = None,
    guidance_scale: GuidanceScale = None,
    guidance_scale_2: GuidanceScale2 = None,
    text_encoder_device: Annotated[str | None, typer.Option(
        "--text-encoder-device", help="Wan: gpu | cpu, where UMT5 encodes the prompts (11 GB for the 14B "
                                      "models; default gpu).")] = None,
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
        "--compile", help="torch.compile the denoiser block by block (SVD's UNet, Wan's transformer: its repeated "
                          "blocks; minutes to compile the first time, cached after; on CPU it needs a C compiler). "
                          "Works with every plan; blocks that sp patches with collectives stay eager.")] = False,
    max_samples_per_job: MaxSamplesPerJob = DEFAULT_MAX_SAMPLES_PER_JOB,
    max_frames: MaxFrames = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    max_steps: MaxSteps = DEFAULT_MAX_STEPS,
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
    # Options a family may not take, or defaults differently, are None unless given: the model's family decides.
    family_options = {
        "steps": steps, "fps": fps, "motion_bucket_id": motion_bucket_id, "noise_aug_strength": noise_aug_strength,
        "min_guidance": min_guidance, "max_guidance": max_guidance, "decode_chunk_size": decode_chunk_size,
        "prompt": prompt, "negative_prompt": negative_prompt, "guidance_scale": guidance_scale,
        "guidance_scale_2": guidance_scale_2, "text_encoder_device": text_encoder_device,
    }
    given = {name: value for name, value in family_options.items() if value is not None}
    config = GenerateConfig(
        run, tuple(str(p) for p in images or ()), model, samples=samples, seed=seed, frames=frames, height=height,
        width=width, vae_device=vae_device, out=str(out), formats=parse_formats(formats), save_latents=save_latents,
        offline=offline, cache_dir=str(cache_dir) if cache_dir else None, json_path=json_path, overwrite=overwrite,
        warmup_samples=warmup_samples, resume=resume, jobs_path=str(jobs) if jobs else None, **given,
        limits=Limits(max_samples_per_job, max_frames, max_pixels, max_steps), given=frozenset(given),
    )
    run_generate(config)
