"""Options shared by several commands, as `Annotated` aliases so every command spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Gpus = Annotated[
    int | None,
    typer.Option("--gpus", "-g", help="Ranks: one per GPU (on CPU, one process each). Under torchrun: its ranks."),
]
PLAN_HELP = (
    "A plan: axes joined by '.', each with an optional degree. Samples: pp (step pipeline: stages run blocks "
    "of steps) or dp (groups run whole samples); one sample split inside a group: cfg2 (guidance batch), spK "
    "(frames); fsdp (UNet parameters sharded). The sample axis takes the ranks left over: cfg2 on 8 GPUs = "
    "dp4.cfg2. Examples: pp, dp, cfg2, sp2, cfg2.sp4, pp2.cfg2.sp2, fsdp, sp4.fsdp."
)
Strategy = Annotated[str, typer.Option(help=PLAN_HELP)]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda. auto = cuda when a GPU is visible.")]
Dtype = Annotated[str, typer.Option(help="auto | fp32 | fp16 | bf16. auto = fp16 on CUDA, fp32 on CPU.")]
Backend = Annotated[str, typer.Option(help="auto | gloo | nccl. auto = nccl on CUDA, gloo on CPU.")]
Seed = Annotated[int, typer.Option(help="Sample i uses seed + i.")]
Steps = Annotated[int, typer.Option(help="Denoising steps per sample.")]
WarmupSamples = Annotated[
    int, typer.Option("--warmup-samples", help="Samples run through every rank before the clock starts.")
]
JsonPath = Annotated[str | None, typer.Option("--json", help="Write the JSON report here (- = stdout).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log every step of every rank.")]
StallTimeout = Annotated[
    float,
    typer.Option("--stall-timeout", help="Stop the run when a rank stops responding, or no rank makes progress, "
                                         "for this many seconds (start-up included)."),
]
LoadTimeout = Annotated[
    float,
    typer.Option("--load-timeout", help="Seconds a rank may spend loading (or building) the model before the "
                                        "run is declared stalled."),
]
DistTimeout = Annotated[
    float,
    typer.Option("--dist-timeout", help="Seconds a collective (NCCL/gloo) may wait for its peers before it fails "
                                        "(the process group's timeout)."),
]
Offline = Annotated[bool, typer.Option(help="Never touch the network: the model must be cached.")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Hugging Face / vidpipe cache.")]

# Wan's options (generate, submit): None = the model's own default; refused for SVD models.
Prompt = Annotated[str | None, typer.Option(help="Wan: what the video shows (a text prompt).")]
NegativePrompt = Annotated[str | None, typer.Option("--negative-prompt", help="Wan: what it should not show.")]
GuidanceScale = Annotated[float | None, typer.Option(
    "--guidance-scale", help="Wan: classifier-free guidance scale (default 5.0; 1 or less: off).")]
GuidanceScale2 = Annotated[float | None, typer.Option(
    "--guidance-scale-2", help="Wan 2.2 A14B: the low-noise expert's scale (default: --guidance-scale).")]

# Admission limits (vidpipe/limits.py): the largest job taken, the same for generate, job files and serve.
MaxSamplesPerJob = Annotated[int, typer.Option(
    "--max-samples-per-job", help="Most samples a job (or an image's --samples, or a sweep's entries) may ask for.")]
MaxFrames = Annotated[int | None, typer.Option(
    "--max-frames", help="Most frames a video may have (default: the model's own maximum).")]
MaxPixels = Annotated[int, typer.Option(
    "--max-pixels", help="Most pixels a frame may have, height x width (default 1920 x 1080).")]
MaxSteps = Annotated[int, typer.Option("--max-steps", help="Most denoising steps a sample may ask for.")]
