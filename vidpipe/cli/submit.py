"""`vidpipe submit`: send images to a running `vidpipe serve`, follow the jobs, download the videos."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from vidpipe.cli.options import GuidanceScale, GuidanceScale2, NegativePrompt, Prompt


def submit(
    images: Annotated[list[Path], typer.Argument(help="Image file(s): one job each.")],
    server: Annotated[str, typer.Option(help="The server's URL.")] = "http://127.0.0.1:8000",
    samples: Annotated[int | None, typer.Option(help="Videos per image (default: the server's, 1).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sample i uses seed + i (default 0).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the model's, SVD 25, Wan 50).")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames per video (default: the model's).")] = None,
    height: Annotated[int | None, typer.Option(help="Video height in pixels.")] = None,
    width: Annotated[int | None, typer.Option(help="Video width in pixels.")] = None,
    fps: Annotated[int | None, typer.Option(help="SVD: frame rate (conditions the model).")] = None,
    motion_bucket_id: Annotated[int | None, typer.Option(
        "--motion-bucket-id", help="SVD: more motion when higher.")] = None,
    noise_aug_strength: Annotated[float | None, typer.Option("--noise-aug-strength", help="SVD.")] = None,
    min_guidance: Annotated[float | None, typer.Option("--min-guidance", help="SVD.")] = None,
    max_guidance: Annotated[float | None, typer.Option("--max-guidance", help="SVD.")] = None,
    decode_chunk_size: Annotated[int | None, typer.Option("--decode-chunk-size", help="SVD.")] = None,
    prompt: Prompt = None,
    negative_prompt: NegativePrompt = None,
    guidance_scale: GuidanceScale = None,
    guidance_scale_2: GuidanceScale2 = None,
    formats: Annotated[str | None, typer.Option("--format", help="Comma list of mp4, gif, png.")] = None,
    sweep: Annotated[str | None, typer.Option(
        help="Per-sample overrides, a JSON list (or @file.json), e.g. '[{\"motion_bucket_id\": 60}, "
             "{\"motion_bucket_id\": 180}]' or '[{\"prompt\": \"a fox\"}, {\"prompt\": \"a cat\"}]': one "
             "sample each.")] = None,
    out: Annotated[Path, typer.Option(
        help="Downloads go to OUT/<image>_<job id prefix>/ (two jobs of one image make files of the same names).")
    ] = Path("outputs"),
    token: Annotated[str | None, typer.Option(help="The server's bearer token (default: $VIDPIPE_TOKEN).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files in --out.")] = False,
) -> None:
    """Submit images as jobs to a running `vidpipe serve`, show their progress, download their files. Options as
    generate's: the served model's family decides which it takes (SVD: --fps, --motion-bucket-id, ...; Wan:
    --prompt, --guidance-scale, ...); the server refuses the others in one line.

    Example: vidpipe submit photo.png --server http://127.0.0.1:8000 --samples 2 --steps 25 --out videos

    Exit codes as generate's: 0 every job done, 2 refused (a bad field or file), 1 a job failed or the server is
    unreachable, 130 interrupted (the jobs this command submitted are cancelled).
    """
    from vidpipe.serve.client import SubmitConfig
    from vidpipe.serve.client import submit as run_submit

    values = {"samples": samples, "seed": seed, "steps": steps, "frames": frames, "height": height, "width": width,
              "fps": fps, "motion_bucket_id": motion_bucket_id, "noise_aug_strength": noise_aug_strength,
              "min_guidance": min_guidance, "max_guidance": max_guidance, "decode_chunk_size": decode_chunk_size,
              "prompt": prompt, "negative_prompt": negative_prompt, "guidance_scale": guidance_scale,
              "guidance_scale_2": guidance_scale_2, "format": formats}
    if sweep and sweep.startswith("@"):
        sweep = Path(sweep[1:]).read_text()
    run_submit(SubmitConfig(
        tuple(str(p) for p in images), server, {k: v for k, v in values.items() if v is not None}, sweep, str(out),
        token or os.environ.get("VIDPIPE_TOKEN") or None, overwrite,
    ))
