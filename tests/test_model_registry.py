"""Model names -> ModelSource, without ever touching the network (the hub is faked or set offline)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import filter_repo_objects

from vidpipe.errors import UsageError
from vidpipe.models import registry
from vidpipe.models.registry import resolve_model
from vidpipe.models.source import ModelSource
from vidpipe.models.svd.tiny import CONFIGS_DIR

SVD_INDEX = json.dumps({"_class_name": "StableVideoDiffusionPipeline"})
WAN_INDEX = json.dumps({"_class_name": "WanImageToVideoPipeline", "boundary_ratio": None})


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any hub request that slips through fails at once instead of reaching out."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def hub_error(cls):
    # The hub's HTTP errors want a live response object; the registry only looks at the type.
    return cls.__new__(cls)


def fake_hub(monkeypatch, repo_files: list[str], index: str | None = None) -> list[dict]:
    """Replace snapshot_download by a fake repo holding `repo_files` (its model_index.json: `index`, SVD's by
    default); return the calls it received."""
    calls = []

    def snapshot_download(repo_id, allow_patterns, ignore_patterns, local_files_only, cache_dir):
        calls.append({"allow": allow_patterns, "ignore": ignore_patterns, "offline": local_files_only})
        snapshot = Path(cache_dir) / "snapshot"
        for name in filter_repo_objects(
            repo_files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns
        ):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / name).write_text((index or SVD_INDEX) if name == "model_index.json" else "")
        return str(snapshot)

    monkeypatch.setattr(registry, "snapshot_download", snapshot_download)
    return calls


def failing_hub(monkeypatch, error: Exception) -> None:
    def snapshot_download(*args, **kwargs):
        raise error

    monkeypatch.setattr(registry, "snapshot_download", snapshot_download)


def test_tiny_is_built_once_and_reused(tmp_path, monkeypatch):
    source = resolve_model("tiny", cache_dir=tmp_path)
    assert source.kind == "dir" and source.name == "tiny"
    assert source.path.parent == tmp_path and source.path.name.startswith("tiny-svd-")
    assert (source.path / "model_index.json").is_file()
    assert (source.path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [source.path.name]  # no temporary directory left

    import vidpipe.models.svd.adapter as svd

    monkeypatch.setattr(svd, "random_components", lambda *a, **k: pytest.fail("tiny was rebuilt"))
    assert resolve_model("tiny", cache_dir=tmp_path) == source
    assert pickle.loads(pickle.dumps(source)) == source


def test_random_flavor_needs_no_files(tmp_path):
    source = resolve_model("svd-xt-random", cache_dir=tmp_path)
    assert source == ModelSource("random", CONFIGS_DIR / "svd-xt", "svd-xt-random")
    assert not list(tmp_path.iterdir())


def test_local_directories(tmp_path):
    with_index = tmp_path / "with-index"
    with_index.mkdir()
    (with_index / "model_index.json").write_text(SVD_INDEX)
    assert resolve_model(str(with_index)) == ModelSource("dir", with_index, str(with_index))

    # The five component folders are enough without a model_index.json.
    components = tmp_path / "components"
    for component in registry.SVD_COMPONENTS:
        (components / component).mkdir(parents=True)
    assert resolve_model(str(components)).path == components


def test_directory_that_is_not_svd(tmp_path):
    with pytest.raises(UsageError, match="is not a Stable Video Diffusion model directory: no model_index"):
        resolve_model(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UsageError, match="holds a StableDiffusionPipeline; vidpipe runs StableVideoDiffusionPipeline, "
                                         "WanImageToVideoPipeline"):
        resolve_model(str(tmp_path))


def test_missing_directory_or_a_file(tmp_path):
    with pytest.raises(UsageError, match="model directory '.*nope' does not exist"):
        resolve_model(str(tmp_path / "nope"), cache_dir=tmp_path)
    (tmp_path / "photo.png").write_bytes(b"")
    with pytest.raises(UsageError, match="is a file, not a model directory"):
        resolve_model(str(tmp_path / "photo.png"), cache_dir=tmp_path)


def test_unknown_name(tmp_path):
    with pytest.raises(UsageError, match="unknown model 'no such model': not a hub repo, a local directory"):
        resolve_model("no such model", cache_dir=tmp_path)


def test_unknown_hub_repo(tmp_path, monkeypatch):
    failing_hub(monkeypatch, hub_error(RepositoryNotFoundError))
    with pytest.raises(UsageError) as error:
        resolve_model("someone/not-a-model", cache_dir=tmp_path)
    assert str(error.value).startswith(
        "unknown model 'someone/not-a-model': not a hub repo, a local directory, or one of tiny, small, svd-xt, "
        "svd-xt-random"
    )


def test_gated_hub_repo(tmp_path, monkeypatch):
    failing_hub(monkeypatch, hub_error(GatedRepoError))
    with pytest.raises(
        UsageError, match="'svd-xt' \\(stabilityai/stable-video-diffusion-img2vid-xt\\) is gated"
    ):
        resolve_model("svd-xt", cache_dir=tmp_path)


def test_network_unreachable(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    failing_hub(monkeypatch, LocalEntryNotFoundError("connection error"))
    with pytest.raises(UsageError, match="cannot reach the Hugging Face hub.*--offline"):
        resolve_model("someone/some-model", cache_dir=tmp_path)


@pytest.mark.parametrize("how", ["--offline", "HF_HUB_OFFLINE"])
def test_offline_and_not_cached(tmp_path, monkeypatch, how):
    # The real snapshot_download, on an empty cache: offline, it must fail without any request.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", how == "HF_HUB_OFFLINE")
    with pytest.raises(UsageError) as error:
        resolve_model("svd-xt", offline=how == "--offline", cache_dir=tmp_path)
    message = str(error.value)
    assert "not in the Hugging Face cache" in message
    assert "hf download stabilityai/stable-video-diffusion-img2vid-xt" in message


def test_download_prefers_fp16_and_falls_back_per_component(tmp_path, monkeypatch):
    repo = [
        "model_index.json",
        "svd_xt.safetensors",  # an original-format checkpoint at the root: never fetched
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "image_encoder/config.json",
        "image_encoder/model.safetensors",  # no fp16 variant
        "feature_extractor/preprocessor_config.json",
        "scheduler/scheduler_config.json",
    ]
    calls = fake_hub(monkeypatch, repo)
    source = resolve_model("someone/svd", offline=True, cache_dir=tmp_path)
    assert source.kind == "dir" and source.repo_id == "someone/svd"
    fetched = sorted(p.relative_to(source.path).as_posix() for p in source.path.rglob("*") if p.is_file())
    assert fetched == sorted(set(repo) - {"svd_xt.safetensors", "unet/diffusion_pytorch_model.safetensors",
                                          "vae/diffusion_pytorch_model.safetensors"})  # fmt: skip
    # model_index.json first (it names the family), then fp16 weights, then the full-precision rest.
    assert calls[0]["allow"] == ["model_index.json"]
    assert len(calls) == 3 and all(call["offline"] for call in calls)


def test_a_wan_repo_fetches_every_component_folder_and_nothing_at_its_root(tmp_path, monkeypatch):
    repo = ["model_index.json", "Wan2.1_VAE.pth", "transformer/config.json",
            "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
            "transformer/diffusion_pytorch_model.safetensors.index.json", "tokenizer/spiece.model",
            "text_encoder/config.json", "text_encoder/model.safetensors", "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]
    calls = fake_hub(monkeypatch, repo, index=WAN_INDEX)
    source = resolve_model("wan2.1-i2v-480p", cache_dir=tmp_path)
    assert source.family == "wan" and source.repo_id == "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
    fetched = sorted(p.relative_to(source.path).as_posix() for p in source.path.rglob("*") if p.is_file())
    assert fetched == sorted(set(repo) - {"Wan2.1_VAE.pth"})  # the original-format checkpoint stays behind
    assert [call["allow"] for call in calls] == [["model_index.json"], registry.WAN_PATTERNS]


def test_repo_without_weights(tmp_path, monkeypatch):
    fake_hub(monkeypatch, ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin"])
    with pytest.raises(UsageError, match="no safetensors weights for unet, vae, image_encoder"):
        resolve_model("someone/old-format", cache_dir=tmp_path)


def test_a_parent_process_resolves_sizes_and_reports_a_model_without_importing_diffusers(tmp_path):
    """What `serve` and `generate` do in their own process (resolve the model, its sizes and memory, the report's
    versions) reads configs and the weights' headers only: diffusers and transformers, seconds of imports, are
    left to the ranks (the worker server imports them meanwhile, on another core)."""
    import subprocess
    import sys

    from tests.conftest import REPO, vidpipe_env

    for name in ("tiny", "wan-tiny"):
        resolve_model(name, cache_dir=tmp_path)  # built here: building does import them
    script = f"""
import sys
from pathlib import Path
import vidpipe.cli, vidpipe.jobs.generate, vidpipe.serve.engine, vidpipe.serve.app
from vidpipe.models.registry import family_module, resolve_model
from vidpipe.report import versions
for name in ("tiny", "wan-tiny"):
    source = resolve_model(name, cache_dir=Path({str(tmp_path)!r}))
    family = family_module(source.family)
    family.model_size(source, 4), family.resolve_size(source, None, None, None), family.expert_switch(source, 4)
versions()
print(sorted(module for module in ("diffusers", "transformers") if module in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
                            env=vidpipe_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
