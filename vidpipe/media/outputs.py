"""Where a run's outputs go: the output folder, the file names per sample, and which formats to write."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from vidpipe.errors import UsageError
from vidpipe.media.atomic import os_error_reason

#: The `--format` names and the output each one names, given a sample's stem. "png" is a folder of frames.
OUTPUT_NAMES = {
    "mp4": "{stem}.mp4",
    "gif": "{stem}.gif",
    "png": "{stem}",
    "latents": "{stem}.latents.safetensors",
}
FORMATS = tuple(OUTPUT_NAMES)


def parse_formats(text: str) -> tuple[str, ...]:
    """Turn `--format` text like "mp4,gif" into ("mp4", "gif"); any case, duplicates dropped, order kept."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError(f"--format {text!r} names no output format: choose from {', '.join(FORMATS)}")
    for name in names:
        if name not in OUTPUT_NAMES:
            raise UsageError(
                f"unknown output format {name!r} in --format {text!r}: choose from {', '.join(FORMATS)}"
            )
    return tuple(dict.fromkeys(names))


def sample_stem(image_stem: str, index: int, seed: int) -> str:
    """The shared base name of one sample's outputs, e.g. "cat_s0_seed42"."""
    return f"{image_stem}_s{index}_seed{seed}"


def output_paths(out_dir: Path, stem: str, formats: Iterable[str]) -> dict[str, Path]:
    """Map each format in `formats` (already parsed) to its output path in `out_dir`, in the same order."""
    return {fmt: Path(out_dir) / OUTPUT_NAMES[fmt].format(stem=stem) for fmt in formats}


def existing_outputs(paths: dict[str, Path]) -> list[Path]:
    """The outputs among `paths` that something already occupies (so the caller can refuse to overwrite)."""
    # lexists: a dangling symlink still occupies the name and would be replaced.
    return [path for path in paths.values() if os.path.lexists(path)]


def is_complete(paths: dict[str, Path]) -> bool:
    """True when every output in `paths` exists as the right kind: a folder for "png", a file otherwise.

    The writers are atomic, so an output that exists is whole.
    """
    return all(path.is_dir() if fmt == "png" else path.is_file() for fmt, path in paths.items())


def check_output_dir(out: Path) -> None:
    """Make sure `out` is a folder we can write in, creating it (and its parents) if missing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: choose a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create output folder {out} ({os_error_reason(exc)}): choose another --out"
        ) from None
    _check_writable(out)


def _check_writable(out: Path) -> None:
    # os.access can be wrong (root, NFS with root squash, ACLs, FUSE mounts): only creating a file tells.
    try:
        handle, probe = tempfile.mkstemp(prefix=".vidpipe-write-test-", dir=out)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"output folder {out} is not writable ({os_error_reason(exc)}): "
            "fix its permissions or choose another --out"
        ) from None
