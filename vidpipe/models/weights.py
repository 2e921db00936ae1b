"""Parameter counts read from a model folder's safetensors headers: the memory model's sizes without building the
model, so a parent process (`serve`, `generate` before its ranks start) never imports diffusers for them.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming every tensor's shape;
a sharded component's files are named `...-0000K-of-0000N.safetensors` (their index file is not needed: every shard
is read). Reading the headers costs a few kB per file, whatever the model's size.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

#: Header sizes beyond this are not a safetensors header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024


def stored_parameters(folder: Path) -> int | None:
    """Elements of every tensor stored in `folder`'s safetensors files (one component: `unet/`, `transformer/`, ...);
    None when it holds none (a config-only folder) or a header cannot be read."""
    files = _one_checkpoint(sorted(Path(folder).glob("*.safetensors")))
    if not files:
        return None
    try:
        return sum(_tensor_elements(path) for path in files)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _one_checkpoint(files: list[Path]) -> list[Path]:
    """The files of one checkpoint: a hub folder may hold the same weights twice, whole and as a variant
    (`diffusion_pytorch_model.safetensors` and `diffusion_pytorch_model.fp16.safetensors`), each maybe in shards
    (`model-00001-of-00004.safetensors`). The one without a variant is taken, else the first."""
    checkpoints: dict[str, list[Path]] = {}
    for path in files:
        checkpoints.setdefault(re.sub(r"-\d+-of-\d+$", "", path.name.removesuffix(".safetensors")), []).append(path)
    if not checkpoints:
        return []
    plain = [name for name in checkpoints if "." not in name]
    return checkpoints[(plain or sorted(checkpoints))[0]]


def _tensor_elements(path: Path) -> int:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: not a safetensors header")
        header = json.loads(handle.read(length))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


def stored_counts(model_dir: Path, components: tuple[str, ...]) -> dict[str, int] | None:
    """{component: parameters} for those of `components` that `model_dir` has a folder for, from their files;
    None unless every such folder holds weights (then the caller counts on the meta device instead)."""
    counts = {}
    for name in components:
        if not (Path(model_dir) / name).is_dir():
            continue
        stored = stored_parameters(Path(model_dir) / name)
        if stored is None:
            return None
        counts[name] = stored
    return counts
