"""Frozen configs for every command, validated up front with the failed arithmetic in the message.

Constructing a config has no side effects: no process group, no device query, no file access. What depends on
the machine (is CUDA there? how many GPUs?) is checked by the launcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vidpipe.errors import UsageError

STRATEGY_NAMES = ("pp", "dp")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")
BACKEND_CHOICES = ("auto", "gloo", "nccl")


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{flag} {value!r}: unknown; choose one of {', '.join(choices)}")


def _at_least(flag: str, value: float, minimum: float, hint: str = "") -> None:
    if value < minimum:
        raise UsageError(f"{flag} {value}: must be at least {minimum}" + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class RunOptions:
    """How a job is spread over ranks; shared by every command that runs workers."""

    gpus: int | None = None  # None: torchrun's world size, else the command's default
    strategy: str = "pp"
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    stall_timeout_s: float = 300.0
    verbose: bool = False

    def __post_init__(self):
        if self.gpus is not None:
            _at_least("--gpus", self.gpus, 1, "vidpipe needs at least one rank")
        _choice("--strategy", self.strategy, STRATEGY_NAMES)
        _choice("--device", self.device, DEVICE_CHOICES)
        _choice("--dtype", self.dtype, DTYPE_CHOICES)
        _choice("--backend", self.backend, BACKEND_CHOICES)
        if self.stall_timeout_s <= 0:
            raise UsageError(f"--stall-timeout {self.stall_timeout_s}: must be a positive number of seconds")

    def check_steps(self, steps: int, world_size: int | None = None) -> None:
        """The step pipeline gives every rank a non-empty block of steps."""
        ranks = world_size or self.gpus or 1
        if self.strategy == "pp" and steps < ranks:
            raise UsageError(
                f"--steps {steps} --gpus {ranks}: the step pipeline needs at least one step per rank "
                f"({steps} < {ranks}); use --steps {ranks} or more, --gpus {steps} or fewer, "
                f"or --strategy dp"
            )


@dataclass(frozen=True)
class SimulateConfig:
    """`vidpipe simulate`: the whole pipeline logic with the stand-in UNet."""

    run: RunOptions
    steps: int = 28
    samples: int = 8
    warmup_samples: int = 1
    latent_shape: tuple[int, ...] = (1, 4, 14, 40, 72)  # B C F H W
    step_ms: float = 0.0
    seed: int = 0
    json_path: str | None = None  # "-" = stdout

    def __post_init__(self):
        _at_least("--steps", self.steps, 1)
        _at_least("--samples", self.samples, 1, "a run needs at least one sample")
        _at_least("--warmup-samples", self.warmup_samples, 0)
        _at_least("--step-ms", self.step_ms, 0)
        if len(self.latent_shape) != 5:
            raise UsageError(
                f"--latent-shape {' '.join(map(str, self.latent_shape))}: needs 5 sizes B C F H W "
                f"(got {len(self.latent_shape)}), e.g. --latent-shape 1 4 14 40 72"
            )
        if min(self.latent_shape) < 1:
            raise UsageError(
                f"--latent-shape {' '.join(map(str, self.latent_shape))}: every size must be at least 1"
            )
        self.run.check_steps(self.steps)
        if self.json_path not in (None, "-") and Path(self.json_path).is_dir():
            raise UsageError(f"--json {self.json_path}: is a directory; give a file path or - for stdout")


@dataclass(frozen=True)
class GenerateConfig:
    """`vidpipe generate`: images -> videos with Stable Video Diffusion."""

    run: RunOptions
    images: tuple[str, ...]
    model: str = "stabilityai/stable-video-diffusion-img2vid-xt"
    samples: int = 1  # per image
    seed: int = 0
    steps: int = 25
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance: float = 1.0
    max_guidance: float = 3.0
    decode_chunk_size: int = 4
    vae_device: str = "gpu"
    out: str = "outputs"
    formats: tuple[str, ...] = ("mp4",)
    save_latents: bool = False
    offline: bool = False
    cache_dir: str | None = None
    json_path: str | None = None
    overwrite: bool = False
    warmup_samples: int = 0
    resume: bool = False

    def __post_init__(self):
        if not self.images:
            raise UsageError("no input image: give one or more image files, e.g. vidpipe generate photo.png")
        _at_least("--samples", self.samples, 1, "each image needs at least one sample")
        _at_least("--steps", self.steps, 1)
        if self.frames is not None:
            _at_least("--frames", self.frames, 1, "a video needs at least one frame")
        for flag, value in (("--height", self.height), ("--width", self.width)):
            if value is not None:
                _at_least(flag, value, 8)
        _at_least("--fps", self.fps, 1)
        _at_least("--decode-chunk-size", self.decode_chunk_size, 1)
        if self.frames is not None and self.decode_chunk_size > self.frames:
            raise UsageError(
                f"--decode-chunk-size {self.decode_chunk_size}: must be between 1 and --frames {self.frames}"
            )
        if self.min_guidance > self.max_guidance:
            raise UsageError(
                f"--min-guidance {self.min_guidance} > --max-guidance {self.max_guidance}: the guidance ramps "
                "from min to max over the frames"
            )
        _choice("--vae-device", self.vae_device, ("gpu", "cpu"))
        _at_least("--warmup-samples", self.warmup_samples, 0)
        if self.resume and self.overwrite:
            raise UsageError("--resume keeps finished outputs, --overwrite replaces them: choose one")
        self.run.check_steps(self.steps)

    @property
    def num_samples(self) -> int:
        return len(self.images) * self.samples
