"""Frozen configs for every command, validated up front with the failed arithmetic in the message.

Constructing a config has no side effects: no process group, no device query, no file access. What depends on
the machine (is CUDA there? how many GPUs?) is checked by the launcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from vidpipe.errors import UsageError
from vidpipe.limits import Limits
from vidpipe.parallel.plan import AUTO, ParallelPlan, PlanSpec, parse_plan

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
    strategy: str = "pp"  # a plan (`parallel/plan.py`), or "auto" where the command allows it
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    stall_timeout_s: float = 300.0
    verbose: bool = False
    load_timeout_s: float = 600.0
    compile: bool = False  # torch.compile the denoiser's repeated blocks
    dist_timeout_s: float = 1800.0  # the process group's timeout (--dist-timeout)

    def __post_init__(self):
        if self.gpus is not None:
            _at_least("--gpus", self.gpus, 1, "vidpipe needs at least one rank")
        if self.strategy != AUTO:
            spec = parse_plan(self.strategy)
            if self.gpus is not None:
                spec.resolve(self.gpus)
        _choice("--device", self.device, DEVICE_CHOICES)
        _choice("--dtype", self.dtype, DTYPE_CHOICES)
        _choice("--backend", self.backend, BACKEND_CHOICES)
        if self.stall_timeout_s <= 0:
            raise UsageError(f"--stall-timeout {self.stall_timeout_s}: must be a positive number of seconds")
        if self.load_timeout_s <= 0:
            raise UsageError(f"--load-timeout {self.load_timeout_s}: must be a positive number of seconds")
        if self.dist_timeout_s <= 0:
            raise UsageError(f"--dist-timeout {self.dist_timeout_s}: must be a positive number of seconds")

    @property
    def plan_spec(self) -> PlanSpec:
        return parse_plan(self.strategy)

    def plan(self, world_size: int) -> ParallelPlan:
        """The plan on `world_size` ranks (UsageError with the arithmetic when it does not fit)."""
        return self.plan_spec.resolve(world_size)

    def check_plan(self, steps: int, frames: int | None = None, guidance: bool = True) -> None:
        """What can be checked before the world size is known (--gpus given, or the plan's own degrees)."""
        if self.strategy == AUTO:
            return
        spec = self.plan_spec
        if self.gpus is not None:
            self.plan(self.gpus).check_job(steps, frames, guidance)
            return
        degrees = spec.degrees
        known = ParallelPlan(spec.sample_axis, degrees.get(spec.sample_axis) or 1, degrees.get("cfg") or 1,
                             degrees.get("sp") or 1)
        known.check_job(steps, frames, guidance)


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
    model: str = "dummy"  # SVD's stand-in, or a full-size Wan flavor's (`models/wan/simulator.py`)

    #: What `--model` takes: the SVD stand-in and the full-size Wan flavors (`models/registry.py WAN_RANDOM`).
    MODELS: ClassVar[tuple[str, ...]] = (
        "dummy", "wan2.1-i2v-14b-480p-random", "wan2.1-i2v-14b-720p-random", "wan2.2-i2v-a14b-random",
        "wan2.2-ti2v-5b-random")

    def __post_init__(self):
        if self.model not in self.MODELS:
            raise UsageError(f"--model {self.model!r}: simulate has stand-ins for {', '.join(self.MODELS)} "
                             "(dummy: SVD-XT's shapes; the others: Wan's full-size transformers, random weights)")
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
        if self.run.strategy == AUTO:
            raise UsageError("--strategy auto chooses a plan for SVD jobs (generate); simulate takes a plan, "
                             "e.g. pp, dp, cfg2, sp2")
        # NOTE: sp splits SVD's frames but Wan's tokens (checked against the latent when the run starts).
        self.run.check_plan(self.steps, self.latent_shape[2] if self.model == "dummy" else None)
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
    jobs_path: str | None = None  # a JSONL job file instead of images
    # Wan (a text prompt beside the image; one guidance scale, and one for the low-noise expert of Wan 2.2 A14B).
    prompt: str | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None  # None: the model's own (5.0)
    guidance_scale_2: float | None = None  # None: guidance_scale
    text_encoder_device: str = "gpu"
    limits: Limits = Limits()  # the largest job (samples, frames, pixels, steps) taken; refused in one line beyond
    #: The options the user gave (field names): the model's family refuses those it does not take, and its own
    #: defaults replace the rest (`models/<family>/family.py complete`).
    given: frozenset[str] = frozenset()

    def __post_init__(self):
        if self.jobs_path and self.images:
            raise UsageError("give images or --jobs FILE, not both (a job file names its own images)")
        if not self.images and not self.jobs_path:
            raise UsageError("no input image: give one or more image files, e.g. vidpipe generate photo.png, or "
                             "--jobs FILE.jsonl")
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
        _choice("--text-encoder-device", self.text_encoder_device, ("gpu", "cpu"))
        for flag, value in (("--guidance-scale", self.guidance_scale), ("--guidance-scale-2", self.guidance_scale_2)):
            if value is not None and value < 0:
                raise UsageError(f"{flag} {value}: must be 0 or more (1 or less turns guidance off)")
        _at_least("--warmup-samples", self.warmup_samples, 0)
        if self.resume and self.overwrite:
            raise UsageError("--resume keeps finished outputs, --overwrite replaces them: choose one")
        self.run.check_plan(self.steps, self.frames, self.max_guidance > 1)

    @property
    def num_samples(self) -> int:
        return len(self.images) * self.samples


#: `bench --compare` takes plans, and the stock pipeline as the baseline row.
BASELINE = "diffusers"
#: `bench --compile`: eager only, compiled only, or both side by side (a compiled run's label ends in this).
COMPILE_CHOICES = ("off", "on", "both")
COMPILED = "+compile"


def parse_list(flag: str, text: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """'pp, dp' -> ('pp', 'dp'); an empty list or an unknown entry is a usage error naming the flag."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise UsageError(f"{flag} {text!r}: empty list; give comma-separated values, e.g. {flag} "
                         f"{','.join(choices[:2]) if choices else '1,2'}")
    for item in items:
        if choices is not None:
            _choice(flag, item, choices)
    return tuple(dict.fromkeys(items))  # keep order, drop repeats


def parse_int_list(flag: str, text: str, minimum: int = 1) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), each at least `minimum`."""
    values = []
    for item in parse_list(flag, text):
        try:
            value = int(item)
        except ValueError:
            raise UsageError(f"{flag} {text!r}: {item!r} is not a whole number; e.g. {flag} 1,2,4") from None
        _at_least(flag, value, minimum)
        values.append(value)
    return tuple(values)


def parse_sizes(flag: str, text: str) -> tuple[tuple[int, int], ...]:
    """'576x1024,320x576' -> ((576, 1024), (320, 576)): HEIGHTxWIDTH in pixels."""
    sizes = []
    for item in parse_list(flag, text):
        height, sep, width = item.lower().partition("x")
        if not sep or not height.isdigit() or not width.isdigit() or int(height) < 8 or int(width) < 8:
            raise UsageError(
                f"{flag} {item!r}: not HEIGHTxWIDTH in pixels (each at least 8); e.g. {flag} 576x1024,320x576"
            )
        sizes.append((int(height), int(width)))
    return tuple(sizes)


@dataclass(frozen=True)
class MachineOptions:
    """Where the ranks of a many-run command (bench, memory-probe) go, and where the model comes from."""

    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    stall_timeout_s: float = 300.0
    load_timeout_s: float = 600.0
    offline: bool = False
    cache_dir: str | None = None
    dist_timeout_s: float = 1800.0
    json_path: str | None = None  # "-" = stdout

    def check_machine(self) -> None:
        self.run_options("dp", 1)  # the same checks
        if self.json_path not in (None, "-") and Path(self.json_path).is_dir():
            raise UsageError(f"--json {self.json_path}: is a directory; give a file path or - for stdout")

    def run_options(self, strategy: str, gpus: int, verbose: bool = False) -> RunOptions:
        return RunOptions(gpus, strategy, self.device, self.dtype, self.backend, self.stall_timeout_s, verbose,
                          self.load_timeout_s, dist_timeout_s=self.dist_timeout_s)


@dataclass(frozen=True)
class BenchConfig(MachineOptions):
    """`vidpipe bench`: the same job under several strategies and rank counts, each run in fresh processes."""

    model: str = "dummy"
    compare: tuple[str, ...] = ("pp", "dp", "fsdp")
    gpus: tuple[int, ...] = (1, 2)
    samples: int = 8
    warmup_samples: int = 1
    repeats: int = 1
    steps: int | None = None  # None: 28 for the dummy model (simulate's default), 25 for SVD (diffusers')
    latent_shape: tuple[int, ...] = (1, 4, 14, 40, 72)  # dummy only
    frames: int | None = None  # SVD models
    height: int | None = None
    width: int | None = None
    step_ms: float = 0.0  # dummy only
    image: str | None = None
    seed: int = 0
    csv_path: str | None = None
    plot_dir: str | None = None
    verbose: bool = False
    compile: str = "off"  # off | on | both (each plan eager and compiled, side by side)

    def __post_init__(self):
        if not self.compare:
            raise UsageError("--compare: empty list; e.g. --compare pp,dp,fsdp")
        for name in self.strategies:
            if name == AUTO:
                raise UsageError("--compare auto: bench compares named plans; give them, e.g. dp,cfg2,sp2")
            parse_plan(name, "--compare")
        if not self.gpus:
            raise UsageError("--gpus: empty list; e.g. --gpus 1,2,4")
        for count in self.gpus:
            _at_least("--gpus", count, 1, "vidpipe needs at least one rank")
        _at_least("--samples", self.samples, 1, "a run needs at least one sample")
        _at_least("--warmup-samples", self.warmup_samples, 0)
        _at_least("--repeats", self.repeats, 1)
        if self.steps is not None:
            _at_least("--steps", self.steps, 1)
        _at_least("--step-ms", self.step_ms, 0)
        _choice("--compile", self.compile, COMPILE_CHOICES)
        if self.is_dummy and self.compile != "off":
            raise UsageError("--compile compiles an SVD UNet's blocks; the dummy model has none: use --model tiny, "
                             "small or svd-xt-random")
        if self.is_dummy:
            SimulateConfig(RunOptions(), steps=self.total_steps, samples=self.samples,
                           latent_shape=self.latent_shape)  # the same shape checks as simulate
            if BASELINE in self.compare:
                raise UsageError(
                    "--compare diffusers: the stock-pipeline baseline needs an SVD model (--model tiny, "
                    "svd-xt-random, a hub id or a folder); the dummy model has no pipeline"
                )
            if any(v is not None for v in (self.frames, self.height, self.width, self.image)):
                raise UsageError("--frames/--height/--width/--image are for SVD models; the dummy model takes "
                                 "--latent-shape B C F H W")
        for flag, value in (("--frames", self.frames), ("--height", self.height), ("--width", self.width)):
            if value is not None:
                _at_least(flag, value, 1 if flag == "--frames" else 8)
        self.check_machine()
        if self.csv_path is not None and Path(self.csv_path).is_dir():
            raise UsageError(f"--csv {self.csv_path}: is a directory; give a file path")
        if self.plot_dir is not None and Path(self.plot_dir).exists() and not Path(self.plot_dir).is_dir():
            raise UsageError(f"--plot {self.plot_dir}: exists and is not a directory; give a folder for the PNGs")

    @property
    def is_dummy(self) -> bool:
        return self.model == "dummy"

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else (28 if self.is_dummy else 25)

    @property
    def strategies(self) -> tuple[str, ...]:
        return tuple(name for name in self.compare if name != BASELINE)

    def labels(self, name: str) -> tuple[str, ...]:
        """The runs of one --compare entry: 'dp', 'dp+compile' or both, as --compile says."""
        return {"off": (name,), "on": (name + COMPILED,), "both": (name, name + COMPILED)}[self.compile]

    def run_options(self, strategy: str, gpus: int, verbose: bool = False) -> RunOptions:
        return super().run_options(strategy, gpus, self.verbose)


SEARCH_AXES = ("frames", "size")


@dataclass(frozen=True)
class MemoryProbeConfig(MachineOptions):
    """`vidpipe memory-probe`: what fits where, per strategy, rank count, frame count and resolution."""

    model: str = "svd-xt-random"
    strategies: tuple[str, ...] = ("pp", "fsdp")
    gpus: tuple[int, ...] = (1, 2)
    frames: tuple[int | None, ...] = (None,)  # None: the model's default
    sizes: tuple[tuple[int, int] | None, ...] = (None,)  # (height, width); None: the model's default
    budget_gb: float | None = None
    search: str | None = None
    search_limit: int = 256  # largest frame count, or height in multiples of the model's size unit
    decode_chunk_size: int = 4

    def __post_init__(self):
        if self.model == "dummy":
            raise UsageError("--model dummy has no weights to measure: use tiny, svd-xt-random, svd-xt, a hub id "
                             "or a folder")
        for name in self.strategies:
            parse_plan(name)
        for count in self.gpus:
            _at_least("--gpus", count, 1, "vidpipe needs at least one rank")
        for frames in self.frames:
            if frames is not None:
                _at_least("--frames", frames, 1, "a video needs at least one frame")
        if self.budget_gb is not None and self.budget_gb <= 0:
            raise UsageError(f"--budget-gb {self.budget_gb}: must be a positive number of GB")
        if self.search is not None:
            _choice("--search", self.search, SEARCH_AXES)
        _at_least("--search-limit", self.search_limit, 1)
        _at_least("--decode-chunk-size", self.decode_chunk_size, 1)
        self.check_machine()


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    """`vidpipe serve`: warm ranks behind an HTTP job queue."""

    run: RunOptions
    model: str = "stabilityai/stable-video-diffusion-img2vid-xt"
    out: str = "outputs/serve"
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (printed)
    max_queue: int = 100
    tokens: tuple[str, ...] = ()  # each one a client's; a client's queued jobs are capped by max_queued_per_client
    max_upload_mb: float = 20.0
    offline: bool = False
    cache_dir: str | None = None
    vae_device: str = "gpu"
    text_encoder_device: str | None = None  # Wan: gpu | cpu (None: gpu); refused for SVD models, as in generate
    limits: Limits = Limits()
    max_queued_per_client: int | None = None  # a client: a token, or an address where the server has none
    # The fleet (docs/fleet.md): many nodes on one Postgres queue.
    store: str | None = None  # a postgresql:// DSN; None: SQLite in --out (one node)
    node_name: str | None = None  # None: HOST:PORT
    lease_timeout_s: float = 30.0
    max_attempts: int = 3

    def __post_init__(self):
        if self.lease_timeout_s < 2:
            raise UsageError(f"--lease-timeout {self.lease_timeout_s}: must be at least 2 seconds (a node renews its "
                             "leases several times in one)")
        _at_least("--max-attempts", self.max_attempts, 1)
        if self.node_name is not None and not self.node_name.strip():
            raise UsageError("--node-name: give each node a name of its own, e.g. gpu-box-1")
        if self.run.strategy == AUTO:
            raise UsageError("serve takes a plan (jobs arrive later, so there is nothing to choose from yet): e.g. "
                             "--strategy dp for many videos, cfg2.sp2 for fast single videos")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port}: must be between 0 (any free port) and 65535")
        _at_least("--max-queue", self.max_queue, 1)
        if self.max_upload_mb <= 0:
            raise UsageError(f"--max-upload-mb {self.max_upload_mb}: must be a positive number of MB")
        if self.max_queued_per_client is not None:
            _at_least("--max-queued-per-client", self.max_queued_per_client, 1)
        if any(not token for token in self.tokens):
            raise UsageError("--token: an empty token would let anyone in; give a secret string")
        if self.host not in LOCAL_HOSTS and not self.tokens:
            raise UsageError(f"--host {self.host} opens the server to other machines: set --token (or VIDPIPE_TOKEN) "
                             "so that only those who hold it can submit jobs and read results")
        _choice("--vae-device", self.vae_device, ("gpu", "cpu"))
        if self.text_encoder_device is not None:
            _choice("--text-encoder-device", self.text_encoder_device, ("gpu", "cpu"))
