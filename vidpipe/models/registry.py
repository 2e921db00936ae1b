"""Model names -> where the weights are. Resolved once, in the parent, before any worker starts.

Workers then load with `local_files_only=True`: nothing is downloaded (or built and saved) by more than one
process, and a bad name fails before any process is spawned.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

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
from vidpipe.models.source import ModelSource
from vidpipe.models.svd.tiny import CONFIGS_DIR, build_tiny

#: model_index.json's `_class_name` -> the family package that runs it (`vidpipe/models/<family>/`). Adding a
#: family adds one line here.
FAMILIES = {"StableVideoDiffusionPipeline": "svd", "WanImageToVideoPipeline": "wan"}

#: Short names for hub repos.
HUB_ALIASES = {
    "svd-xt": "stabilityai/stable-video-diffusion-img2vid-xt",
    "wan2.1-i2v-480p": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    "wan2.1-i2v-720p": "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
    "wan2.2-i2v-a14b": "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    "wan2.2-ti2v-5b": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
}

#: Full-size architectures with random weights, built in each worker from the package configs (benchmarks).
#: `small` is a 62 M-parameter SVD UNet (SVD-XT's design at a quarter of its width): one step at 14 frames of
#: 256 x 384 keeps a CPU core busy for seconds, so CPU measurements of the latency axes are compute, not overhead.
RANDOM_FLAVORS = {"svd-xt-random": CONFIGS_DIR / "svd-xt", "small": CONFIGS_DIR / "small"}

#: Wan flavors: built once with random weights and saved (tokenizer included), or full-size architectures whose
#: random weights are built in each worker (`models/wan/configs/`).
WAN_CONFIGS = Path(__file__).parent / "wan" / "configs"
WAN_BUILT = ("wan-tiny", "wan2.2-tiny", "wan2.2-ti2v-tiny", "wan-small")
WAN_RANDOM = ("wan2.1-i2v-14b-480p-random", "wan2.1-i2v-14b-720p-random", "wan2.2-i2v-a14b-random",
              "wan2.2-ti2v-5b-random")

SVD_COMPONENTS = ("unet", "vae", "image_encoder", "feature_extractor", "scheduler")
WEIGHTED_COMPONENTS = ("unet", "vae", "image_encoder")
# Configs only, never a repo's other checkpoints (SVD-XT has ~10 GB of original-format weights at its root).
CONFIG_PATTERNS = ["model_index.json", *(f"{c}/*.json" for c in SVD_COMPONENTS)]
#: Wan: the files of every component folder (configs, tokenizer, safetensors shards and their index), nothing else.
WAN_PATTERNS = ["model_index.json", "*/*.json", "tokenizer/*", "*/*.safetensors"]
KNOWN_NAMES = ("tiny, small, svd-xt, svd-xt-random, wan-tiny, wan2.2-tiny, wan2.2-ti2v-tiny, wan-small, "
               "wan2.1-i2v-480p, wan2.1-i2v-720p, wan2.2-i2v-a14b, wan2.2-ti2v-5b, wan2.1-i2v-14b-480p-random, "
               "wan2.1-i2v-14b-720p-random, wan2.2-i2v-a14b-random, wan2.2-ti2v-5b-random")
SUPPORTED = ", ".join(FAMILIES)


def family_module(family: str, part: str = "family"):
    """`vidpipe.models.<family>.<part>`: a family's surface (`family`), its plan rules (`parallelize`), ..."""
    return importlib.import_module(f"vidpipe.models.{family}.{part}")


def resolve_model(name: str, offline: bool = False, cache_dir: Path | None = None) -> ModelSource:
    """A model name (tiny, svd-xt, svd-xt-random, a local directory or a hub id) -> a `ModelSource`.

    Builds the tiny model or downloads hub weights into the cache if needed; raises `UsageError` for names
    that do not resolve. `cache_dir` replaces both the vidpipe cache (tiny) and the Hugging Face cache.
    """
    if name == "tiny":
        return ModelSource("dir", build_tiny(cache_dir), name)
    if name in RANDOM_FLAVORS:
        return ModelSource("random", RANDOM_FLAVORS[name], name)
    if name in WAN_BUILT:
        from vidpipe.models.wan.tiny import build_tiny as build_wan

        return ModelSource("dir", build_wan(name, cache_dir), name, family="wan")
    if name in WAN_RANDOM:
        return ModelSource("random", WAN_CONFIGS / name, name, family="wan")
    local = Path(name).expanduser()
    if name not in HUB_ALIASES and local.is_dir():
        return ModelSource("dir", local.resolve(), name, family=family_of_dir(local))
    if local.is_file():
        raise UsageError(f"model '{name}' is a file, not a model directory; pass its folder or a hub id")
    repo_id = HUB_ALIASES.get(name, name)
    path = download(name, repo_id, offline, cache_dir)
    return ModelSource("dir", path, name, repo_id, family=family_of_dir(path))


def family_of_dir(path: Path) -> str:
    """The family of a local diffusers directory, from its model_index.json; one line naming the supported
    pipelines for any other (a directory without one is taken for SVD, as older exports were)."""
    index = path / "model_index.json"
    if not index.is_file():
        check_svd_dir(path)
        return "svd"
    pipeline_class = json.loads(index.read_text()).get("_class_name")
    if pipeline_class not in FAMILIES:
        raise UsageError(f"'{path}' holds a {pipeline_class}; vidpipe runs {', '.join(FAMILIES)}: point --model at "
                         f"one of those or use one of {KNOWN_NAMES}")
    return FAMILIES[pipeline_class]


def check_svd_dir(path: Path) -> None:
    """UsageError unless `path` looks like a diffusers Stable Video Diffusion directory."""
    index = path / "model_index.json"
    if index.is_file():
        pipeline_class = json.loads(index.read_text()).get("_class_name")
        if pipeline_class == "StableVideoDiffusionPipeline":
            return
        raise UsageError(
            f"'{path}' is not a Stable Video Diffusion model directory: its model_index.json names "
            f"{pipeline_class}, not StableVideoDiffusionPipeline; vidpipe runs {SUPPORTED} models: use one of "
            f"those or one of {KNOWN_NAMES}"
        )
    missing = [c for c in SVD_COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise UsageError(
            f"'{path}' is not a Stable Video Diffusion model directory: no model_index.json and no "
            f"{', '.join(missing)} folder(s); point --model at a diffusers SVD directory, a hub id or one of "
            f"{KNOWN_NAMES}"
        )


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
    if family_of_dir(path) != "svd":
        return path
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

    index = Path(snapshot_download(repo_id, allow_patterns=["model_index.json"], ignore_patterns=None,
                                   local_files_only=offline, cache_dir=cache_dir)) / "model_index.json"
    if index.is_file() and FAMILIES.get(json.loads(index.read_text()).get("_class_name")) == "wan":
        # Wan repos publish one precision, in shards: every component folder's configs and weights.
        return Path(snapshot_download(repo_id, allow_patterns=WAN_PATTERNS, ignore_patterns=None,
                                      local_files_only=offline, cache_dir=cache_dir))
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
