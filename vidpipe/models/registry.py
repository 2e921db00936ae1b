"""Model names -> where the weights are. Resolved once, in the parent, before any worker starts.

Workers then load with `local_files_only=True`: nothing is downloaded (or built and saved) by more than one
process, and a bad name fails before any process is spawned.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from vidpipe.errors import UsageError

#: Architecture configs shipped with the package, laid out like a diffusers model directory without weights.
CONFIGS_DIR = Path(__file__).parent / "configs"

#: Short names for hub repos.
HUB_ALIASES = {"svd-xt": "stabilityai/stable-video-diffusion-img2vid-xt"}

#: Full-size architectures with random weights, built in each worker from the package configs (benchmarks).
#: `small` is a 62 M-parameter SVD UNet (SVD-XT's design at a quarter of its width): one step at 14 frames of
#: 256 x 384 keeps a CPU core busy for seconds, so CPU measurements of the latency axes are compute, not overhead.
RANDOM_FLAVORS = {"svd-xt-random": CONFIGS_DIR / "svd-xt", "small": CONFIGS_DIR / "small"}

#: The tiny random-weight SVD, built once and saved (so that every rank loads identical weights).
TINY_CONFIG = CONFIGS_DIR / "tiny"

SVD_COMPONENTS = ("unet", "vae", "image_encoder", "feature_extractor", "scheduler")
WEIGHTED_COMPONENTS = ("unet", "vae", "image_encoder")
# Configs only, never a repo's other checkpoints (SVD-XT has ~10 GB of original-format weights at its root).
CONFIG_PATTERNS = ["model_index.json", *(f"{c}/*.json" for c in SVD_COMPONENTS)]
KNOWN_NAMES = "tiny, small, svd-xt, svd-xt-random"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from; small and picklable, handed to every worker.

    kind "dir": `path` is a diffusers Stable Video Diffusion directory with weights.
    kind "random": `path` is a config directory (no weights); workers build random weights from it.
    """

    kind: Literal["dir", "random"]
    path: Path
    name: str  # what the user asked for
    repo_id: str | None = None  # the hub repo it came from, if any


def resolve_model(name: str, offline: bool = False, cache_dir: Path | None = None) -> ModelSource:
    """A model name (tiny, svd-xt, svd-xt-random, a local directory or a hub id) -> a `ModelSource`.

    Builds the tiny model or downloads hub weights into the cache if needed; raises `UsageError` for names
    that do not resolve. `cache_dir` replaces both the vidpipe cache (tiny) and the Hugging Face cache.
    """
    if name == "tiny":
        return ModelSource("dir", build_tiny(cache_dir), name)
    if name in RANDOM_FLAVORS:
        return ModelSource("random", RANDOM_FLAVORS[name], name)
    local = Path(name).expanduser()
    if name not in HUB_ALIASES and local.is_dir():
        check_svd_dir(local)
        return ModelSource("dir", local.resolve(), name)
    if local.is_file():
        raise UsageError(f"model '{name}' is a file, not a model directory; pass its folder or a hub id")
    repo_id = HUB_ALIASES.get(name, name)
    return ModelSource("dir", download(name, repo_id, offline, cache_dir), name, repo_id)


def check_svd_dir(path: Path) -> None:
    """UsageError unless `path` looks like a diffusers Stable Video Diffusion directory."""
    index = path / "model_index.json"
    if index.is_file():
        pipeline_class = json.loads(index.read_text()).get("_class_name")
        if pipeline_class == "StableVideoDiffusionPipeline":
            return
        raise UsageError(
            f"'{path}' is not a Stable Video Diffusion model directory: its model_index.json names "
            f"{pipeline_class}, not StableVideoDiffusionPipeline; use an SVD model or one of {KNOWN_NAMES}"
        )
    missing = [c for c in SVD_COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise UsageError(
            f"'{path}' is not a Stable Video Diffusion model directory: no model_index.json and no "
            f"{', '.join(missing)} folder(s); point --model at a diffusers SVD directory, a hub id or one of "
            f"{KNOWN_NAMES}"
        )


def default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vidpipe"


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

    from vidpipe.models.svd import random_components

    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-svd-", dir=root))
    except OSError as error:
        raise UsageError(
            f"cannot write the tiny model under {root}: {error}; pass a writable cache dir"
        ) from error
    try:
        components = random_components(TINY_CONFIG, torch.device("cpu"), torch.float32)
        StableVideoDiffusionPipeline(**components).save_pretrained(tmp)
        os.rename(tmp, target)
    except OSError as error:
        # Another process may have renamed its own build into place first: theirs is identical.
        if not (target / "model_index.json").is_file():
            raise UsageError(f"cannot write the tiny model to {target}: {error}; free disk space") from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def download(name: str, repo_id: str, offline: bool, cache_dir: Path | None) -> Path:
    """Fetch (or find in the cache) the SVD files of hub repo `repo_id`: fp16 weights where the repo has them.

    Hub errors become one-line `UsageError`s; `name` is what the user typed, for the messages.
    """
    offline = offline or hub_constants.is_offline_mode()
    label = f"'{name}'" if name == repo_id else f"'{name}' ({repo_id})"
    try:
        path = _fetch(repo_id, offline, cache_dir)
    except HFValidationError as error:
        if "/" in name or name.startswith((".", "~")):
            raise UsageError(f"model directory '{name}' does not exist; check the path") from error
        raise UsageError(f"unknown model '{name}': {_NOT_A_MODEL}") from error
    except GatedRepoError as error:
        raise UsageError(
            f"model {label} is gated on the Hugging Face hub: accept its license at "
            f"https://huggingface.co/{repo_id} and log in with `hf auth login`, or pass a local directory"
        ) from error
    except RepositoryNotFoundError as error:
        raise UsageError(
            f"unknown model '{name}': {_NOT_A_MODEL} (private repos need `hf auth login`)"
        ) from error
    except LocalEntryNotFoundError as error:
        if offline:
            raise UsageError(
                f"model {label} is not in the Hugging Face cache and offline mode forbids downloading it: "
                f"run once without --offline, or fetch it with `hf download {repo_id}`"
            ) from error
        raise UsageError(
            f"cannot reach the Hugging Face hub to fetch model {label}, and it is not cached: check the "
            "network, or use --offline with a cached model, or pass a local model directory"
        ) from error
    missing = [c for c in WEIGHTED_COMPONENTS if not _has_weights(path / c)]
    if missing:
        raise UsageError(
            f"model {label} has no safetensors weights for {', '.join(missing)} (in {path}); "
            "vidpipe loads diffusers safetensors only: use a diffusers-format SVD repo"
        )
    check_svd_dir(path)
    return path


_NOT_A_MODEL = f"not a hub repo, a local directory, or one of {KNOWN_NAMES}"


def _fetch(repo_id: str, offline: bool, cache_dir: Path | None) -> Path:
    """Configs + fp16 weights; then full-precision weights for the components that have no fp16 variant."""

    def snapshot(weight_patterns: list[str], ignore_patterns: list[str] | None = None) -> Path:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=CONFIG_PATTERNS + weight_patterns,
                ignore_patterns=ignore_patterns,
                local_files_only=offline,
                cache_dir=cache_dir,
            )
        )

    try:
        path = snapshot([f"{c}/*.fp16*.safetensors" for c in WEIGHTED_COMPONENTS])
        missing = [c for c in WEIGHTED_COMPONENTS if not _has_weights(path / c, fp16=True)]
    except IncompleteSnapshotError:
        # Offline, and only part of the fp16 set is cached: the full-precision set may be complete.
        missing = list(WEIGHTED_COMPONENTS)
    if missing:
        path = snapshot([f"{c}/*.safetensors" for c in missing], ignore_patterns=["*fp16*"])
    return path


def _has_weights(folder: Path, fp16: bool = False) -> bool:
    return any(folder.glob("*fp16*.safetensors" if fp16 else "*.safetensors"))
