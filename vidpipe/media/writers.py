"""Atomic writers for GIF, PNG frames, latents, PNG and JSON (MP4 is in `vidpipe.media.video`).

Each writes a hidden temp beside the target and renames it into place (see `atomic_output`), so an
interrupted or failed write leaves nothing behind and an existing output is replaced whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from vidpipe.media.atomic import atomic_output

if TYPE_CHECKING:
    import torch


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Return `frames` if it is a non-empty uint8 array [F, H, W, 3]; raise ValueError otherwise."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        got = f"{type(frames).__name__} of {getattr(frames, 'dtype', '?')}"
        raise ValueError(f"frames must be a uint8 numpy array, got {got}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must have shape [F, H, W, 3] with no empty axis, got {list(frames.shape)}")
    return frames


def check_fps(fps: int) -> int:
    """Return `fps` if it is a positive whole number; raise ValueError otherwise."""
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    return int(fps)


def _images(frames: np.ndarray) -> Iterator[Image.Image]:
    # One frame at a time, so a long video is not held twice in memory.
    for frame in frames:
        yield Image.fromarray(frame)


def write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write uint8 frames [F, H, W, 3] as a GIF at `path` that loops forever at `fps` frames per second.

    NOTE: Pillow merges a frame identical to the one before into it (adding up the durations), so a GIF of a
    still scene can hold fewer frames than `frames`; it plays the same.
    """
    frames, fps = check_frames(frames), check_fps(fps)
    first, *rest = _images(frames)
    # GIF stores delays in hundredths of a second; Pillow truncates, so round to the nearest one ourselves.
    frame_ms = 10 * max(1, round(100 / fps))
    with atomic_output(Path(path)) as temp:
        first.save(temp, format="GIF", save_all=True, append_images=rest, loop=0, duration=frame_ms)


def png_frame_name(index: int, frame_count: int) -> str:
    """The file name of frame `index` of `frame_count`: frame_000.png, with more digits past 1000 frames."""
    digits = max(3, len(str(frame_count - 1)))
    return f"frame_{index:0{digits}d}.png"


def write_png_frames(dir_path: Path, frames: np.ndarray) -> None:
    """Write uint8 frames [F, H, W, 3] as lossless PNGs into the folder `dir_path` (frame_000.png, ...).

    The folder is filled under a temp name and renamed, so it appears with all its frames or not at all.
    """
    frames = check_frames(frames)
    with atomic_output(Path(dir_path), keep_suffix=False) as temp:
        temp.mkdir()
        for index, image in enumerate(_images(frames)):
            image.save(temp / png_frame_name(index, len(frames)), format="PNG")


def write_latents(path: Path, latents: torch.Tensor) -> None:
    """Save `latents` (any device or float dtype) to `path` as safetensors: one fp32 CPU tensor "latents"."""
    # Imported here: torch takes seconds to import, and the rest of this module does not need it.
    import torch
    from safetensors.torch import save_file

    tensor = latents.detach().to(device="cpu", dtype=torch.float32).contiguous()
    with atomic_output(Path(path)) as temp:
        save_file({"latents": tensor}, str(temp))


def write_png(path: Path, image: Image.Image) -> None:
    """Save one PIL image to `path` as PNG."""
    with atomic_output(Path(path)) as temp:
        image.save(temp, format="PNG")


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` to `path` as indented UTF-8 JSON with a final newline (a report or a manifest)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"  # fails before any file is created
    with atomic_output(Path(path)) as temp:
        temp.write_text(text, encoding="utf-8")


def append_manifest(path: Path, sample: int, files: list[str], job: str | None = None) -> None:
    """One line `{"sample": i, "files": [...]}` (and `"job"` for a job file's samples) appended to the output
    folder's manifest.jsonl. NOTE: a single write of one short line in append mode, so ranks appending to the
    same file never interleave their lines."""
    entry = {"sample": sample, "files": list(files)} | ({"job": job} if job is not None else {})
    line = json.dumps(entry) + "\n"
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(line)
