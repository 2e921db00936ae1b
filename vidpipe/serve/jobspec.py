"""One job model for the server, the job file (`generate --jobs`) and `submit`: an image plus options named as
`generate`'s, optionally a `sweep` of per-sample overrides, expanded into samples with their own parameters.

Every value is checked by the same `GenerateConfig` that checks `generate`'s flags, so a job gets the same
one-line errors (the server answers them with 422).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from vidpipe.config import GenerateConfig, RunOptions
from vidpipe.errors import UsageError
from vidpipe.media import parse_formats

#: Job options and their types: the names of `generate`'s options (`format` is `--format`).
JOB_OPTIONS: dict[str, type] = {
    "samples": int, "seed": int, "steps": int, "frames": int, "height": int, "width": int, "fps": int,
    "motion_bucket_id": int, "noise_aug_strength": float, "min_guidance": float, "max_guidance": float,
    "decode_chunk_size": int, "format": str, "save_latents": bool,
}
#: What a sweep entry may change per sample.
SWEEP_OPTIONS = tuple(name for name in JOB_OPTIONS if name not in ("samples", "format", "save_latents"))
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class SampleSpec:
    """One sample of a job: its seed and complete sampling parameters, sizes resolved."""

    index: int
    seed: int
    params: object  # SVDParams


def parse_options(raw: dict, where: str = "") -> dict:
    """Strings (form fields) or JSON values -> typed options; unknown names and bad values are UsageErrors."""
    options = {}
    for name, value in raw.items():
        if name not in JOB_OPTIONS:
            raise UsageError(f"{where}unknown option '{name}'; options are {', '.join(JOB_OPTIONS)} and sweep")
        if value is None or value == "":
            continue
        kind = JOB_OPTIONS[name]
        if kind is bool:
            text = str(value).lower()
            if text not in _TRUE + _FALSE:
                raise UsageError(f"{where}{name} {value!r}: not true or false")
            options[name] = text in _TRUE
            continue
        try:
            options[name] = value if kind is str else kind(value)
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
        except (TypeError, ValueError):
            raise UsageError(f"{where}{name} {value!r}: not a {'whole number' if kind is int else 'number'}") from None
    return options


def parse_sweep(raw, where: str = "") -> list[dict]:
    """A JSON list (or its text) of per-sample overrides -> typed overrides."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise UsageError(f"{where}sweep: not JSON ({error.msg}); e.g. [{{\"motion_bucket_id\": 60}}]") from None
    if not isinstance(raw, list) or not raw or not all(isinstance(entry, dict) for entry in raw):
        raise UsageError(f"{where}sweep: a non-empty JSON list of objects, e.g. "
                         "[{\"motion_bucket_id\": 60}, {\"motion_bucket_id\": 180}]")
    entries = []
    for number, entry in enumerate(raw):
        bad = [name for name in entry if name not in SWEEP_OPTIONS]
        if bad:
            raise UsageError(f"{where}sweep[{number}]: '{bad[0]}' cannot vary per sample; sweep entries may set "
                             f"{', '.join(SWEEP_OPTIONS)}")
        entries.append(parse_options(entry, f"{where}sweep[{number}]: "))
    return entries


def expand(options: dict, sweep: list[dict] | None, source, plan, where: str = "") -> tuple[list[SampleSpec], tuple]:
    """A job's samples (sample i: seed + i unless its sweep entry sets one) and its outputs (formats, and
    "latents" with save_latents).

    `source` is the server's model (sizes resolve against it), `plan` its `ParallelPlan` (sp needs a frame per
    rank, pp a step per stage, cfg guidance). Raises UsageError with the job's first problem.
    """
    from vidpipe.models.svd.adapter import SVDParams, resolve_size

    formats = parse_formats(options.get("format", "mp4"))
    base = {k: v for k, v in options.items() if k not in ("format", "save_latents")}
    count = len(sweep) if sweep else base.get("samples", 1)
    if sweep and "samples" in base and base["samples"] != len(sweep):
        raise UsageError(f"{where}samples {base['samples']} and a sweep of {len(sweep)}: a sweep gives one sample "
                         "per entry; drop samples")
    specs = []
    for index in range(count):
        override = sweep[index] if sweep else {}
        values = {**base, **override}
        values.pop("samples", None)
        values.pop("seed", None)
        if "decode_chunk_size" not in values and values.get("frames"):  # the default of 4, but never more frames
            values["decode_chunk_size"] = min(4, values["frames"])
        seed = override["seed"] if "seed" in override else base.get("seed", 0) + index
        try:
            config = GenerateConfig(RunOptions(strategy="dp"), ("job",), samples=1, seed=seed, formats=formats,
                                    **values)
            frames, height, width = resolve_size(source, config.frames, config.height, config.width)
            chunk = config.decode_chunk_size if "decode_chunk_size" in values else min(4, frames)
            config = replace(config, decode_chunk_size=chunk)
            if config.decode_chunk_size > frames:
                raise UsageError(f"decode_chunk_size {config.decode_chunk_size}: must be between 1 and {frames} "
                                 "frames")
            plan.check_job(config.steps, frames, config.max_guidance > 1)
        except UsageError as error:
            label = f"sweep[{index}]: " if sweep else ""
            raise UsageError(f"{where}{label}{_option_names(str(error))}") from None
        specs.append(SampleSpec(index, seed, SVDParams(
            steps=config.steps, frames=frames, height=height, width=width, fps=config.fps,
            motion_bucket_id=config.motion_bucket_id, noise_aug_strength=config.noise_aug_strength,
            min_guidance=config.min_guidance, max_guidance=config.max_guidance,
            decode_chunk_size=config.decode_chunk_size,
        )))
    return specs, tuple(formats) + (("latents",) if options.get("save_latents") else ())


def _option_names(message: str) -> str:
    """generate's messages name flags (--max-guidance); a job's fields are named max_guidance."""
    for name in JOB_OPTIONS:
        message = message.replace(f"--{name.replace('_', '-')}", name)
    return message


@dataclass(frozen=True)
class JobEntry:
    """One line of a job file: `{"image": "a.png", "id": "a", ...options, "sweep": [...]}`."""

    id: str
    image: str  # resolved against the job file's folder
    options: dict
    sweep: list[dict] | None


def read_job_file(path) -> list[JobEntry]:
    """A JSONL job file -> entries; one-line UsageErrors that name the file and line."""
    from pathlib import Path

    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise UsageError(f"--jobs {path}: cannot read it ({error.strerror})") from None
    entries, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path} line {number}: "
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{where}not JSON ({error.msg})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("image"), str):
            raise UsageError(f'{where}each line is a JSON object with "image", e.g. {{"image": "a.png", "seed": 3}}')
        job_id = str(raw.pop("id", f"line{number}"))
        if not job_id or "/" in job_id or job_id.startswith(".") or job_id in seen:
            raise UsageError(f"{where}id {job_id!r}: ids are unique names without '/' (they name the job's folder)")
        seen.add(job_id)
        image = Path(raw.pop("image")).expanduser()
        image = image if image.is_absolute() else path.parent / image
        sweep = parse_sweep(raw.pop("sweep"), where) if "sweep" in raw else None
        entries.append(JobEntry(job_id, str(image), parse_options(raw, where), sweep))
    if not entries:
        raise UsageError(f"--jobs {path}: no jobs in it (one JSON object per line)")
    return entries
