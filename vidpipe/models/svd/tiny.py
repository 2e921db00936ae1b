"""The tiny random-weight SVD, built once from `configs/tiny` and saved (so that every rank loads identical
weights); `CONFIGS_DIR`, the architecture configs shipped with the package."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from vidpipe.errors import UsageError
from vidpipe.models.source import default_cache_root, quiet_saving

#: Architecture configs shipped with the package, laid out like a diffusers model directory without weights.
CONFIGS_DIR = Path(__file__).parent / "configs"

#: The tiny random-weight SVD, built once and saved (so that every rank loads identical weights).
TINY_CONFIG = CONFIGS_DIR / "tiny"


def build_tiny(cache_dir: Path | None = None) -> Path:
    """Build the tiny random SVD (seeded, so always the same weights) and save it once; return its directory.

    The directory name carries a hash of the configs, so editing a config builds a new model. Written to a
    temporary directory and renamed into place: a concurrent or interrupted build never leaves half a model.
    """
    digest = hashlib.sha256()
    for path in sorted(TINY_CONFIG.rglob("*.json")):
        digest.update(path.relative_to(TINY_CONFIG).as_posix().encode() + b"\0" + path.read_bytes())
    # Absolute, so that workers find it whatever their working directory.
    root = (Path(cache_dir) if cache_dir is not None else default_cache_root()).expanduser().absolute()
    target = root / f"tiny-svd-{digest.hexdigest()[:12]}"
    if (target / "model_index.json").is_file():
        return target

    # Heavy imports only when a build is needed.
    import torch
    from diffusers import StableVideoDiffusionPipeline

    from vidpipe.models.svd.adapter import random_components

    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-svd-", dir=root))
    except OSError as error:
        raise UsageError(
            f"cannot write the tiny model under {root}: {error}; pass a writable cache dir"
        ) from error
    try:
        components = random_components(TINY_CONFIG, torch.device("cpu"), torch.float32)
        with quiet_saving():
            StableVideoDiffusionPipeline(**components).save_pretrained(tmp)
        os.rename(tmp, target)
    except OSError as error:
        # Another process may have renamed its own build into place first: theirs is identical.
        if not (target / "model_index.json").is_file():
            raise UsageError(f"cannot write the tiny model to {target}: {error}; free disk space") from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
