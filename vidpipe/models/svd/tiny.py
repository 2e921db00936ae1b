"""The tiny random-weight SVD, built once from `configs/tiny` and saved (so that every rank loads identical
weights); `CONFIGS_DIR`, the architecture configs shipped with the package."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vidpipe.models.source import build_once

#: Architecture configs shipped with the package, laid out like a diffusers model directory without weights.
CONFIGS_DIR = Path(__file__).parent / "configs"

#: The tiny random-weight SVD, built once and saved (so that every rank loads identical weights).
TINY_CONFIG = CONFIGS_DIR / "tiny"


def build_tiny(cache_dir: Path | None = None) -> Path:
    """Build the tiny random SVD (seeded, so always the same weights) and save it once; return its directory.

    The directory name carries a hash of the configs, so editing a config builds a new model.
    """
    digest = hashlib.sha256()
    for path in sorted(TINY_CONFIG.rglob("*.json")):
        digest.update(path.relative_to(TINY_CONFIG).as_posix().encode() + b"\0" + path.read_bytes())

    def build(directory: Path) -> None:
        # Heavy imports only when a build is needed.
        import torch
        from diffusers import StableVideoDiffusionPipeline

        from vidpipe.models.svd.adapter import random_components

        components = random_components(TINY_CONFIG, torch.device("cpu"), torch.float32)
        StableVideoDiffusionPipeline(**components).save_pretrained(directory)

    return build_once(f"tiny-svd-{digest.hexdigest()[:12]}", cache_dir, build)
