"""`svd` against diffusers' own StableVideoDiffusionPipeline, on the tiny random model (CPU, fp32)."""

from __future__ import annotations

import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel

from vidpipe.errors import UsageError
from vidpipe.models.base import Sample
from vidpipe.models.registry import resolve_model
from vidpipe.models.source import ModelSource
from vidpipe.models.svd.adapter import SVDModel
from vidpipe.models.svd.sizes import SVDParams, check_size, default_size

STEPS = 4
SEED = 1234


@pytest.fixture(scope="module")
def tiny(cache):
    return resolve_model("tiny", cache_dir=cache)


@pytest.fixture(scope="module")
def image():
    # A non-square gradient, so resizing and both axes matter.
    y, x = np.mgrid[0:80, 0:120]
    pixels = np.stack([x * 255 / 119, y * 255 / 79, (x + y) * 255 / 198], axis=-1)
    return PIL.Image.fromarray(pixels.astype(np.uint8))


# Not the defaults: guidance on and ramped, odd fps, a chunk size that does not divide the frame count.
PARAMS = SVDParams(
    steps=STEPS, frames=3, height=64, width=96, fps=9, motion_bucket_id=100,
    noise_aug_strength=0.05, min_guidance=1.5, max_guidance=3.5, decode_chunk_size=2, vae_device="cpu",
)  # fmt: skip


@pytest.fixture(scope="module")
def model(tiny):
    return SVDModel.load(tiny, torch.device("cpu"), torch.float32, PARAMS)


def reference(tiny, image):
    """(final latents, frames as floats in [0, 1]) from diffusers' pipeline; latents caught at the end."""
    pipe = StableVideoDiffusionPipeline.from_pretrained(tiny.path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    caught = {}

    def catch_latents(pipe, step, timestep, tensors):
        caught["latents"] = tensors["latents"]
        return tensors

    frames = pipe(
        image,
        height=PARAMS.height,
        width=PARAMS.width,
        num_frames=PARAMS.frames,
        num_inference_steps=STEPS,
        fps=PARAMS.fps,
        motion_bucket_id=PARAMS.motion_bucket_id,
        noise_aug_strength=PARAMS.noise_aug_strength,
        min_guidance_scale=PARAMS.min_guidance,
        max_guidance_scale=PARAMS.max_guidance,
        decode_chunk_size=PARAMS.decode_chunk_size,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
        callback_on_step_end=catch_latents,
    ).frames
    return caught["latents"], frames[0]


def test_state_matches_spec(model, image):
    state = model.encode(Sample(0, SEED, image))
    spec = model.state_spec()
    assert list(state) == list(spec)
    for key, tensor in state.items():
        assert tuple(tensor.shape) == spec[key].shape and tensor.dtype == spec[key].dtype, key


def test_latents_and_frames_match_the_pipeline(tiny, model, image):
    expected_latents, expected_frames = reference(tiny, image)
    latents = model.denoise(model.encode(Sample(0, SEED, image)), range(0, STEPS))
    diff = (latents - expected_latents).abs().max().item()
    print(f"max abs latent diff vs StableVideoDiffusionPipeline: {diff:.3g}")
    assert latents.shape == expected_latents.shape
    assert diff <= 1e-4

    frames = model.decode(latents)
    frame_diff = np.abs(frames.astype(np.int16) - np.round(expected_frames * 255).astype(np.int16)).max()
    print(f"max frame diff (uint8 levels): {frame_diff}")
    assert frames.dtype == np.uint8 and frames.shape == (PARAMS.frames, PARAMS.height, PARAMS.width, 3)
    assert frame_diff <= 1


def test_blocks_continue_the_schedule_exactly(model, image):
    state = model.encode(Sample(0, SEED, image))
    whole = model.denoise(state, range(0, STEPS))
    seen = []
    for block in (range(0, 2), range(2, 3), range(3, 3), range(3, STEPS)):
        state = {**state, "latents": model.denoise(state, block, on_step=seen.append)}
    assert torch.equal(state["latents"], whole)
    assert seen == list(range(STEPS))


def test_encode_is_seeded(model, image):
    first, again = model.encode(Sample(0, 7, image)), model.encode(Sample(1, 7, image))
    other = model.encode(Sample(2, 8, image))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["latents"], other["latents"])


def test_input_image_has_the_model_size(model, image):
    assert model.input_image(Sample(0, 0, image)).size == (PARAMS.width, PARAMS.height)


def test_release_then_decode(tiny, image):
    model = SVDModel.load(tiny, torch.device("cpu"), None, SVDParams(steps=2), encoders=False)
    assert model.pipeline.image_encoder is None
    assert (model.num_frames, model.height, model.width) == default_size(tiny) == (4, 64, 64)
    spec = model.state_spec()
    state = {key: torch.zeros(s.shape, dtype=s.dtype) for key, s in spec.items() if key != "sampling"}
    latents = model.denoise(state, range(0, 1))
    model.release_denoiser()
    assert model.pipeline.unet is None
    assert model.decode(latents).shape == (4, 64, 64, 3)
    with pytest.raises(RuntimeError):
        model.encode(Sample(0, 0, image))


def test_loads_the_fp16_variant_when_present(tiny, tmp_path):
    model_dir = tmp_path / "fp16-only"
    shutil.copytree(tiny.path, model_dir)
    unet = UNetSpatioTemporalConditionModel.from_pretrained(model_dir, subfolder="unet")
    unet.half().save_pretrained(model_dir / "unet", variant="fp16")
    (model_dir / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    source = ModelSource("dir", model_dir, "fp16-only")
    model = SVDModel.load(source, torch.device("cpu"), torch.float32, SVDParams(steps=1))
    loaded = model.pipeline.unet.conv_in.weight
    assert loaded.dtype == torch.float32 and torch.equal(loaded, unet.conv_in.weight.float())


@pytest.mark.parametrize(
    ("frames", "height", "width", "message"),
    [
        (0, None, None, "--frames 0: must be at least 1"),
        (None, 500, None, "--height 500: must be a positive multiple of 64 (VAE factor 8 x 2**3 UNet "
         "down-samplings); try 448 or 512"),
        (None, None, 40, "--width 40: must be a positive multiple of 64 (VAE factor 8 x 2**3 UNet "
         "down-samplings); try 64"),
    ],
)  # fmt: skip
def test_check_size_explains_the_arithmetic(frames, height, width, message):
    svd_xt = resolve_model("svd-xt-random")
    with pytest.raises(UsageError) as error:
        check_size(svd_xt, frames, height, width)
    assert str(error.value).startswith(message)


def test_check_size_accepts_valid_sizes(tiny):
    check_size(resolve_model("svd-xt-random"), 25, 576, 1024)
    assert default_size(resolve_model("svd-xt-random")) == (25, 576, 1024)
    check_size(tiny, 1, 16, 48)  # tiny: VAE factor 8 x 2**1
    with pytest.raises(UsageError, match="multiple of 16"):
        check_size(tiny, 1, 24, 48)
