"""One job model for the server, the job file (`generate --jobs`) and `submit`: an image plus options named as
`generate`'s, optionally a `sweep` of per-sample overrides, expanded into samples with their own parameters.

Which options a job takes beyond the common ones is the model family's (`models/<family>/family.py JOB_FIELDS`:
SVD's fps, motion, ...; Wan's prompt and guidance scales), and so is each sample's parameters (`job_params`): every
value goes through the same `GenerateConfig` and the same family rules as `generate`'s flags, so a job gets the same
one-line errors (the server answers them with 422), with the job's field names instead of the flags.

Below both `jobs/` (job files) and `serve/` (the server): neither imports the other for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from vidpipe.config import GenerateConfig, RunOptions
from vidpipe.errors import UsageError
from vidpipe.limits import Limits
from vidpipe.media import parse_formats

#: What every job takes, whatever the model: the names of `generate`'s options (`format` is `--format`).
COMMON_FIELDS: dict[str, type] = {
    "samples": int, "seed": int, "steps": int, "frames": int, "height": int, "width": int, "format": str,
    "save_latents": bool,
}
#: What a sweep entry may not change: they are the job's, not a sample's.
PER_JOB = ("samples", "format", "save_latents")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class SampleSpec:
    """One sample of a job: its seed and complete sampling parameters (the family's), sizes resolved."""

    index: int
    seed: int
    params: object  # SVDParams, WanParams


def known_fields() -> dict[str, type]:
    """Every field a job of any family may name, with its type (a field of another family than the model's gets
    that family's one-line refusal, not 'unknown')."""
    from vidpipe.models.registry import FAMILIES, family_module

    fields = dict(COMMON_FIELDS)
    for family in dict.fromkeys(FAMILIES.values()):
        fields.update(family_module(family).job_fields())
    return fields


def model_fields(source) -> dict[str, type]:
    """The fields a job for the model `source` takes (the page shows these)."""
    from vidpipe.models.registry import family_module

    return {**COMMON_FIELDS, **family_module(source.family).job_fields(source)}


def parse_options(raw: dict, where: str = "") -> dict:
    """Strings (form fields) or JSON values -> typed options; unknown names and bad values are UsageErrors."""
    fields = known_fields()
    options = {}
    for name, value in raw.items():
        if name not in fields:
            raise UsageError(f"{where}unknown option '{name}'; options are {', '.join(fields)} and sweep")
        if value is None or value == "":
            continue
        kind = fields[name]
        if kind is bool:
            text = str(value).lower()
            if text not in _TRUE + _FALSE:
                raise UsageError(f"{where}{name} {value!r}: not true or false")
            options[name] = text in _TRUE
            continue
        if kind is str:
            if not isinstance(value, str):
                raise UsageError(f"{where}{name} {value!r}: not text; give a JSON string")
            options[name] = value
            continue
        try:
            if isinstance(value, bool):
                raise ValueError
            options[name] = kind(value)
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
        except (TypeError, ValueError):
            raise UsageError(f"{where}{name} {value!r}: not a {'whole number' if kind is int else 'number'}") from None
    return options


def parse_sweep(raw, where: str = "", limits: Limits | None = None) -> list[dict]:
    """A JSON list (or its text) of per-sample overrides -> typed overrides; its length is checked against
    `limits` before any entry is."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise UsageError(f"{where}sweep: not JSON ({error.msg}); e.g. [{{\"seed\": 1}}, {{\"seed\": 7}}]") from None
        except RecursionError:
            raise UsageError(f"{where}sweep: nested too deeply; a sweep is a flat list of objects") from None
    if limits is not None and isinstance(raw, list):
        try:
            limits.check_count(len(raw), sweep=True)
        except UsageError as error:
            raise UsageError(f"{where}{error}") from None
    if not isinstance(raw, list) or not raw or not all(isinstance(entry, dict) for entry in raw):
        raise UsageError(f"{where}sweep: a non-empty JSON list of objects, e.g. "
                         "[{\"motion_bucket_id\": 60}, {\"motion_bucket_id\": 180}] or "
                         "[{\"prompt\": \"a fox\"}, {\"prompt\": \"a cat\"}]")
    entries = []
    for number, entry in enumerate(raw):
        bad = [name for name in entry if name in PER_JOB]
        if bad:
            raise UsageError(f"{where}sweep[{number}]: '{bad[0]}' cannot vary per sample; sweep entries may set "
                             f"any option but {', '.join(PER_JOB)}")
        entries.append(parse_options(entry, f"{where}sweep[{number}]: "))
    return entries


def job_base(**run_settings) -> GenerateConfig:
    """The options a server's job starts from: generate's defaults (the family completes them: Wan's 50 steps and
    guidance 5.0), with the server's own settings (`vae_device`, `text_encoder_device`, `given`)."""
    return GenerateConfig(RunOptions(strategy="dp"), ("job",), **run_settings)


@dataclass(frozen=True)
class CheckedJob:
    """A job whose every sample has been checked (fields, sizes, plan, limits): how many samples, what they output,
    their steps in all. Its samples are built only when asked for (`samples`), one at a time, so a job of any
    admitted size costs the same to take in."""

    options: dict
    sweep: list[dict] | None
    count: int
    formats: tuple
    steps_total: int
    source: object
    plan: object
    base: GenerateConfig
    largest: object  # the parameters of its sample with the most pixels x frames (what memory is checked for)

    def samples(self, start: int = 0) -> Iterator[SampleSpec]:
        """Sample i: seed + i unless its sweep entry sets one; without a sweep every sample has the same
        parameters, built once."""
        family = _family(self.source)
        shared = None
        first_seed = self.options.get("seed", self.base.seed)
        for index in range(start, self.count):
            override = self.sweep[index] if self.sweep else {}
            seed = override["seed"] if "seed" in override else first_seed + index
            if self.sweep:
                params = _params(family, self.base, self.options, override, self.source, self.plan, index, True, "")
            else:
                shared = shared or _params(family, self.base, self.options, {}, self.source, self.plan, 0, False, "")
                params = shared
            yield SampleSpec(index, seed, params)


def check_job(options: dict, sweep: list[dict] | None, source, plan, base: GenerateConfig | None = None,
              limits: Limits | None = None, where: str = "") -> CheckedJob:
    """Check a job before it is queued: its size against `limits` first (before a single sample is built), then
    every distinct sample's parameters (the family's rules, `plan`'s needs, the limits on frames, pixels, steps
    and seeds). Raises UsageError with the job's first problem.

    `source` is the model (its family builds each sample's parameters, sizes resolve against it), `plan` the
    `ParallelPlan` samples run under (pp needs a step per stage, cfg guidance, SVD's sp a frame per rank); `base`
    the options a job does not give (a job file: the command's; a server: `job_base`).
    """
    family = _family(source)
    base = base if base is not None else job_base()
    limits = (limits or Limits()).for_model(source)
    if sweep and "samples" in options and options["samples"] != len(sweep):
        raise UsageError(f"{where}samples {options['samples']} and a sweep of {len(sweep)}: a sweep gives one "
                         "sample per entry; drop samples")
    count = len(sweep) if sweep else options.get("samples", base.samples)
    try:
        limits.check_count(count, sweep=bool(sweep))
        formats = tuple(parse_formats(options.get("format", ",".join(base.formats))))
        first_seed = options.get("seed", base.seed)
        seeds = [entry.get("seed", first_seed + i) for i, entry in enumerate(sweep)] if sweep else [first_seed]
        limits.check_seeds(min(seeds), max(seeds) + (count - 1 if not sweep else 0))
    except UsageError as error:
        raise UsageError(f"{where}{error}") from None
    steps_total, largest = 0, None
    for index, override in enumerate(sweep or [{}]):
        params = _params(family, base, options, override, source, plan, index, bool(sweep), where)
        try:
            limits.check_sample(params.steps, params.frames, params.height, params.width)
        except UsageError as error:
            label = f"sweep[{index}]: " if sweep else ""
            raise UsageError(f"{where}{label}{error}") from None
        steps_total += params.steps
        if largest is None or _volume(params) > _volume(largest):
            largest = params
    latents = options.get("save_latents", base.save_latents)
    return CheckedJob(options, sweep, count, formats + (("latents",) if latents else ()),
                      steps_total if sweep else steps_total * count, source, plan, base, largest)


def expand(options: dict, sweep: list[dict] | None, source, plan, base: GenerateConfig | None = None,
           where: str = "", limits: Limits | None = None) -> tuple[list[SampleSpec], tuple]:
    """A job's samples, all built (a job file's), and its outputs (formats, and "latents" with save_latents)."""
    job = check_job(options, sweep, source, plan, base, limits, where)
    return list(job.samples()), job.formats


def _volume(params) -> int:
    return params.frames * params.height * params.width


def _family(source):
    from vidpipe.models.registry import family_module

    return family_module(source.family)


def _params(family, base: GenerateConfig, options: dict, override: dict, source, plan, index: int, in_sweep: bool,
            where: str):
    """One sample's parameters: the job's options, then its sweep entry's (all but the seed)."""
    job = {k: v for k, v in options.items() if k not in (*PER_JOB, "seed")}
    values = {**job, **{k: v for k, v in override.items() if k != "seed"}}
    try:
        return family.job_params(_sample_config(base, values), source, plan)
    except UsageError as error:
        label = f"sweep[{index}]: " if in_sweep else ""
        raise UsageError(f"{where}{label}{_field_names(str(error))}") from None


def _sample_config(base: GenerateConfig, values: dict) -> GenerateConfig:
    """`base` with one sample's options; `given` gains their names, so the family refuses those it does not take
    and completes the rest. NOTE: GenerateConfig refuses a decode chunk larger than the frames, so a job that sets
    fewer frames than the default chunk, and no chunk, gets a chunk of its frames (as generate's default would)."""
    given = base.given | frozenset(values)
    if "decode_chunk_size" not in given and values.get("frames"):
        values = {**values, "decode_chunk_size": min(base.decode_chunk_size, values["frames"])}
    return replace(base, samples=1, **values, given=given)


def _field_names(message: str) -> str:
    """generate's messages name flags (--max-guidance); a job's fields are named max_guidance."""
    names = sorted({*known_fields(), "text_encoder_device", "vae_device"}, key=len, reverse=True)
    for name in names:  # NOTE: longest first: --guidance-scale-2 before --guidance-scale
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
