"""Wan model definitions: the local tokenizer, tiny random-weight pipelines that diffusers' own
`WanImageToVideoPipeline` loads and runs, and the full-size architectures counted on the meta device."""

from __future__ import annotations

import importlib.util
import types

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import WanImageToVideoPipeline
from transformers import AutoTokenizer

from vidpipe.errors import UsageError
from vidpipe.models.wan import tiny
from vidpipe.models.wan.tiny import CONFIGS_DIR, build_tiny, build_tokenizer, parameter_counts

# Frames, height, width of the calls below: 9 frames -> 3 latent frames, 32 x 48 px -> 4 x 6 latents.
SIZE = {"num_frames": 9, "height": 32, "width": 48}
LATENT_SHAPE = (1, 16, 3, 4, 6)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("wan-cache")


@pytest.fixture
def plain_prompts(monkeypatch):
    # The Wan pipelines clean prompts with ftfy, which diffusers imports only when it is installed and vidpipe's
    # dependencies do not list: stand in with the identity where it is missing (ftfy leaves plain ASCII as is).
    if importlib.util.find_spec("ftfy") is None:
        from diffusers.pipelines.wan import pipeline_wan_i2v

        monkeypatch.setattr(pipeline_wan_i2v, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)


def generate_latents(pipe: WanImageToVideoPipeline) -> torch.Tensor:
    """Two steps with classifier-free guidance on a fixed 48 x 32 image, seed 42; the final latents."""
    pixels = (np.arange(32 * 48 * 3) % 251).astype(np.uint8).reshape(32, 48, 3)
    return pipe(
        image=PIL.Image.fromarray(pixels),
        prompt="a cat surfing a wave at sunset",
        negative_prompt="blurry, low quality",
        guidance_scale=4.0,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(42),
        output_type="latent",
        **SIZE,
    ).frames


def test_tokenizer_pads_to_512_and_ends_with_eos(tmp_path):
    first, second = build_tokenizer(tmp_path / "first"), build_tokenizer(tmp_path / "second")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} differs between two builds"
        for flavor in tiny.BUILDABLE_FLAVORS:  # the shipped copies are this builder's output
            assert (CONFIGS_DIR / flavor / "tokenizer" / name).read_bytes() == (first / name).read_bytes()

    tokenizer = AutoTokenizer.from_pretrained(first)
    assert tokenizer.is_fast
    # The call `WanImageToVideoPipeline._get_t5_prompt_embeds` makes.
    encoded = tokenizer(
        ["A cat surfing a wave.", "zebra " + "cat " * 600],
        padding="max_length", max_length=512, truncation=True, add_special_tokens=True,
        return_attention_mask=True, return_tensors="pt",
    )
    ids, mask = encoded.input_ids, encoded.attention_mask
    assert ids.shape == mask.shape == (2, 512)
    words = tokenizer.convert_ids_to_tokens(ids[0, :7].tolist())
    assert words == ["a", "cat", "surfing", "a", "wave", ".", "</s>"]
    assert mask[0].sum() == 7 and (ids[0, 7:] == tokenizer.pad_token_id).all() and tokenizer.pad_token_id == 0
    assert ids[1, 0] == tokenizer.unk_token_id == 2  # not in the vocabulary
    assert mask[1].all() and ids[1, -1] == tokenizer.eos_token_id == 1  # truncated, still closed by </s>


def test_wan21_tiny_runs_in_the_diffusers_pipeline(cache, plain_prompts):
    pipe = WanImageToVideoPipeline.from_pretrained(build_tiny("wan-tiny", cache), local_files_only=True)
    config = pipe.transformer.config
    assert (config.num_attention_heads, config.num_layers, config.in_channels, config.out_channels) == (3, 2, 36, 16)
    # Wan 2.1: CLIP image tokens go through the extra key/value projections, as in the 14B model.
    assert config.image_dim == pipe.image_encoder.config.hidden_size and config.added_kv_proj_dim is not None
    assert pipe.transformer_2 is None and pipe.config.boundary_ratio is None
    assert pipe.scheduler.config.prediction_type == "flow_prediction" and pipe.scheduler.config.use_flow_sigmas

    latents = generate_latents(pipe)
    assert tuple(latents.shape) == LATENT_SHAPE and torch.isfinite(latents).all()


def test_wan22_tiny_runs_both_experts(cache, plain_prompts):
    pipe = WanImageToVideoPipeline.from_pretrained(build_tiny("wan2.2-tiny", cache), local_files_only=True)
    assert pipe.config.boundary_ratio == 0.875 and not pipe.config.expand_timesteps
    assert pipe.image_encoder is None and pipe.image_processor is None
    assert pipe.transformer.config.image_dim is None
    high, low = pipe.transformer.state_dict(), pipe.transformer_2.state_dict()
    assert high.keys() == low.keys()
    assert not torch.equal(high["proj_out.weight"], low["proj_out.weight"]), "the two experts have the same weights"

    calls = {"transformer": 0, "transformer_2": 0}
    for name in calls:
        getattr(pipe, name).register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    latents = generate_latents(pipe)
    assert tuple(latents.shape) == LATENT_SHAPE and torch.isfinite(latents).all()
    # Timesteps 999 then 833 (flow shift 5): one step on each side of the boundary, cond + uncond calls each.
    assert calls == {"transformer": 2, "transformer_2": 2}


def test_a_config_without_a_tokenizer_runs_with_the_local_one(tmp_path, plain_prompts):
    """The full-size flavors ship configs only (UMT5's tokenizer is on the hub): a run of random weights from such a
    folder gets the local tokenizer, and the stock pipeline runs. Shown on wan-tiny's configs without their
    tokenizer; counting parameters on the meta device builds none."""
    import shutil

    from vidpipe.models.source import ModelSource
    from vidpipe.models.wan.loading import load_components

    configs = shutil.copytree(CONFIGS_DIR / "wan-tiny", tmp_path / "configs",
                              ignore=shutil.ignore_patterns("tokenizer"))
    assert not (configs / "tokenizer").exists()
    for flavor in tiny.FULL_SIZE_FLAVORS:
        assert not (CONFIGS_DIR / flavor / "tokenizer").exists(), flavor
    assert tiny.random_components(configs, device="meta")["tokenizer"] is None
    source = ModelSource("random", configs, "wan-tiny-configs", family="wan")
    components = load_components(source, torch.float32, encoders=True, experts=("transformer",))
    assert components["tokenizer"].is_fast and components["tokenizer"].eos_token_id == 1
    latents = generate_latents(WanImageToVideoPipeline(**components))
    assert tuple(latents.shape) == LATENT_SHAPE and torch.isfinite(latents).all()


def test_build_tiny_is_reused_and_reproducible(cache, tmp_path, monkeypatch):
    path = build_tiny("wan2.2-tiny", cache)
    weights = path / "transformer_2" / "diffusion_pytorch_model.safetensors"
    assert path.name.startswith("wan2.2-tiny-") and weights.is_file()
    before = weights.stat().st_mtime_ns

    def no_rebuild(*_):
        raise AssertionError("rebuilt a cached model")

    with monkeypatch.context() as patch:
        patch.setattr(tiny, "build_random_pipeline_dir", no_rebuild)
        assert build_tiny("wan2.2-tiny", cache) == path
    assert weights.stat().st_mtime_ns == before
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "a temporary build directory was left"

    # Seeded per component: another cache gets byte-identical weights.
    again = build_tiny("wan2.2-tiny", tmp_path)
    assert again.name == path.name
    assert (again / "transformer_2" / "diffusion_pytorch_model.safetensors").read_bytes() == weights.read_bytes()


def test_every_config_parses():
    flavors = sorted(p.name for p in CONFIGS_DIR.iterdir() if p.is_dir())
    assert flavors == sorted(tiny.BUILDABLE_FLAVORS + tiny.FULL_SIZE_FLAVORS)
    for flavor in flavors:
        index = WanImageToVideoPipeline.load_config(CONFIGS_DIR / flavor)
        assert index["_class_name"] == "WanImageToVideoPipeline"
        for component, entry in index.items():
            if isinstance(entry, list) and entry[0] is not None and component != "tokenizer":
                assert (CONFIGS_DIR / flavor / component).is_dir(), f"{flavor}: no folder for {component}"
    assert tiny.read_model_index(CONFIGS_DIR / "wan2.2-i2v-a14b-random")["boundary_ratio"] == 0.9
    assert tiny.read_model_index(CONFIGS_DIR / "wan2.2-ti2v-5b-random")["expand_timesteps"] is True


def test_full_size_parameter_counts():
    def near(count: int, expected: float, tolerance: float = 0.1) -> bool:
        return abs(count - expected) <= tolerance * expected

    i2v_480p = parameter_counts(CONFIGS_DIR / "wan2.1-i2v-14b-480p-random")
    assert i2v_480p == parameter_counts(CONFIGS_DIR / "wan2.1-i2v-14b-720p-random")  # same weights, other shift
    a14b = parameter_counts(CONFIGS_DIR / "wan2.2-i2v-a14b-random")
    ti2v = parameter_counts(CONFIGS_DIR / "wan2.2-ti2v-5b-random")

    # A14B: two 14B experts, no image encoder.
    assert set(a14b) == {"transformer", "transformer_2", "vae", "text_encoder"}
    assert a14b["transformer"] == a14b["transformer_2"] and near(a14b["transformer"], 14e9)
    # Wan 2.1 I2V is the same 14B DiT plus CLIP key/value projections in every block (40 x 2 x 5120^2 = 2.1e9):
    # 16.4e9 in all, as the 32.8 GB of its published bf16 checkpoint say.
    image_branch = i2v_480p["transformer"] - a14b["transformer"]
    assert near(image_branch, 40 * 2 * 5120**2, 0.02) and near(i2v_480p["transformer"], 16.4e9, 0.02)
    assert near(ti2v["transformer"], 5e9)
    for counts in (i2v_480p, a14b, ti2v):
        assert near(counts["text_encoder"], 5.7e9, 0.02)  # the UMT5-XXL encoder
    assert near(i2v_480p["image_encoder"], 0.63e9, 0.02)  # CLIP ViT-H/14 vision tower
    assert near(i2v_480p["vae"], 127e6, 0.02) and i2v_480p["vae"] == a14b["vae"]  # the Wan 2.1 VAE
    assert near(ti2v["vae"], 705e6, 0.02)  # the Wan 2.2 VAE (z_dim 48, 16x spatial)


def test_flavor_errors():
    with pytest.raises(UsageError, match="unknown Wan flavor 'wan-huge'.*wan-tiny"):
        tiny.flavor_dir("wan-huge")
    with pytest.raises(UsageError, match="full-size architecture"):
        tiny.build_random_pipeline_dir("wan2.2-i2v-a14b-random", "/nonexistent")
