"""The Wan adapter against diffusers' own `WanImageToVideoPipeline`, on the tiny Wan 2.1 and 2.2 models built here:
the same latents, also when the steps run as separate blocks with the solver's history carried between them, and
the same frames."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from vidpipe.models.base import Sample
from vidpipe.models.wan.adapter import WanModel
from vidpipe.models.wan.sizes import WanParams
from vidpipe.models.wan.tiny import build_tiny

PROMPT, NEGATIVE = "a red fox runs through the snow", "blurry, low quality"


@dataclass(frozen=True)
class Source:  # what the registry hands the adapter: where the model is and what it was called
    kind: str
    path: Path
    name: str


#: Each tiny flavor's width at the issue's 9 x 32 x W (TI2V's 16x VAE and 2x2 patches need multiples of 32) and
#: its latents' shape [C, T, h, w].
WIDTH = {"wan-tiny": 48, "wan2.2-tiny": 48, "wan2.2-ti2v-tiny": 64}
LATENT = {"wan-tiny": (16, 3, 4, 6), "wan2.2-tiny": (16, 3, 4, 6), "wan2.2-ti2v-tiny": (48, 3, 2, 4)}


@pytest.fixture(scope="module", params=["wan-tiny", "wan2.2-tiny", "wan2.2-ti2v-tiny"])
def tiny(request, tmp_path_factory) -> Source:
    return Source("dir", build_tiny(request.param, tmp_path_factory.mktemp("cache")), request.param)


@pytest.fixture(scope="module")
def photo() -> PIL.Image.Image:
    pixels = np.random.RandomState(3).randint(0, 255, (40, 56, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


#: diffusers' outputs, by (output type, flavor, seed, image pixels): a flavor's tiny build has the same bytes in
#: every cache (tests/test_wan_models.py), so the blocks test and every plan share the pipeline's runs.
_PIPELINE_OUTPUTS: dict = {}


def pipeline_output(source: Source, image, output_type: str, seed: int = 42):
    key = (source.name, seed, image.mode, image.size, image.tobytes())
    if (output_type, *key) not in _PIPELINE_OUTPUTS:
        from diffusers import WanImageToVideoPipeline

        pipe = WanImageToVideoPipeline.from_pretrained(source.path, torch_dtype=torch.float32, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        caught = {}

        def catch(_pipe, _step, _timestep, tensors):
            caught["latents"] = tensors["latents"]
            return tensors

        def run(kind: str):
            return pipe(image, prompt=PROMPT, negative_prompt=NEGATIVE, height=32, width=WIDTH[source.name],
                        num_frames=9, num_inference_steps=6, guidance_scale=4.0,
                        generator=torch.Generator("cpu").manual_seed(seed), output_type=kind,
                        callback_on_step_end=catch).frames

        _PIPELINE_OUTPUTS[("np", *key)] = run("np")
        # output_type="latent" returns the last step's latents, caught above; on TI2V (expand_timesteps) the
        # image's latents then replace the first frame, so it is asked for.
        _PIPELINE_OUTPUTS[("latent", *key)] = run("latent") if pipe.config.expand_timesteps else caught["latents"]
    return _PIPELINE_OUTPUTS[(output_type, *key)]


def test_blocks_of_steps_on_fresh_models_give_the_pipeline_latents_and_frames(tiny, photo):
    """Three blocks (2, 1, 3 steps), each on a freshly loaded model that sees only the state: as on three pp
    stages. UniPC's history travels in the state; on Wan 2.2 the experts switch at boundary_ratio 0.875; on TI2V
    the first latent frame is the image's and the timesteps are per token."""
    params = WanParams(steps=6, frames=9, height=32, width=WIDTH[tiny.name], prompt=PROMPT, negative_prompt=NEGATIVE,
                       guidance_scale=4.0)
    state = WanModel.load(tiny, torch.device("cpu"), torch.float32, params).encode(Sample(0, 42, photo))
    for block in (range(0, 2), range(2, 3), range(3, 6)):
        stage = WanModel.load(tiny, torch.device("cpu"), torch.float32, params, encoders=False)
        state = {name: tensor.clone() for name, tensor in state.items()}
        state["latents"] = stage.denoise(state, block)
    expected = pipeline_output(tiny, photo, "latent")
    assert state["latents"].shape == expected.shape == (1, *LATENT[tiny.name])
    assert (state["latents"] - expected).abs().max().item() <= 1e-4

    frames = stage.decode(state["latents"])
    expected_frames = (pipeline_output(tiny, photo, "np")[0] * 255).round()
    assert frames.shape == expected_frames.shape == (9, 32, WIDTH[tiny.name], 3)
    assert np.abs(frames.astype(np.float64) - expected_frames).max() <= 1.0


def test_a_stage_loads_only_the_experts_its_steps_use(tiny):
    params = WanParams(steps=6, frames=9, height=32, width=WIDTH[tiny.name])
    model = WanModel.load(tiny, torch.device("cpu"), torch.float32, params, encoders=False,
                          experts=("transformer_2",))
    assert model.pipeline.transformer is None and model.pipeline.text_encoder is None
    assert (model.pipeline.transformer_2 is not None) == (tiny.name == "wan2.2-tiny")


def test_umt5_is_freed_once_every_expected_prompt_is_embedded(tiny, photo):
    params = WanParams(steps=2, frames=9, height=32, width=WIDTH[tiny.name], prompt=PROMPT,
                       negative_prompt=NEGATIVE, guidance_scale=4.0)
    model = WanModel.load(tiny, torch.device("cpu"), torch.float32, params)
    other = Sample(1, 7, photo, params=replace(params, prompt="a cat"))
    model.expect_samples([Sample(0, 42, photo), other])
    first = model.encode(Sample(0, 42, photo))
    assert model.pipeline.text_encoder is not None  # "a cat" is still to come
    model.encode(other)
    assert model.pipeline.text_encoder is None
    again = model.encode(Sample(0, 42, photo))  # an expected prompt again: from the cache
    assert torch.equal(again["prompt_embeds"], first["prompt_embeds"])


def test_pp2_on_wan22_holds_one_expert_per_stage(tmp_path, photo, capsys, monkeypatch):
    """7 steps: the low-noise expert takes over at step 3, so pp2's blocks are 3 + 4 (not the even 4 + 3), each
    stage loads one expert (half of what one rank holds), and the latents are one rank's."""
    import json

    from safetensors.torch import load_file

    from tests.conftest import run_main

    monkeypatch.setenv("VIDPIPE_THREADS_PER_RANK", "1")
    cache, image = tmp_path / "cache", tmp_path / "photo.png"
    photo.save(image)
    code, err = run_main(capsys, "generate", str(image), "--model", "wan2.2-tiny", "--cache-dir", str(cache),
                         "--prompt", PROMPT, "--seed", "42", "--steps", "7", "--frames", "9", "--height", "32",
                         "--width", "48", "--device", "cpu", "--save-latents", "--format", "png", "--gpus", "2",
                         "--strategy", "pp2", "--out", str(tmp_path / "out"), "--json", str(tmp_path / "report.json"))
    assert code == 0, err[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps_per_rank"] == [3, 4]
    assert "break at step 3, where the low-noise expert takes over" in report["step_assignment"]

    source = Source("dir", build_tiny("wan2.2-tiny", cache), "wan2.2-tiny")
    params = WanParams(steps=7, frames=9, height=32, width=48, prompt=PROMPT)
    whole = WanModel.load(source, torch.device("cpu"), torch.float32, params)
    expert_bytes = sum(p.numel() * p.element_size() for p in whole.pipeline.transformer.parameters())
    assert report["unet_param_bytes_per_rank"] == [expert_bytes, expert_bytes]
    state = whole.encode(Sample(0, 42, photo))
    expected = whole.denoise(state, range(7))[0]
    got = load_file(tmp_path / "out" / "photo_s0_seed42.latents.safetensors")["latents"]
    assert torch.equal(got, expected)


#: Plans the issue names, per model: (plan, ranks). Whole-step plans (pp) give the 1-rank latents bit for bit with
#: one thread per rank; split steps (cfg, sp) round differently: within 1e-5.
WAN21_PLANS = {"pp": 2, "cfg2": 2, "sp2": 2, "sp3": 3, "cfg2.sp2": 4, "fsdp.sp2": 2}
WAN22_PLANS = {"pp2": 2, "pp2.cfg2": 4}
TI2V_PLANS = {"pp2": 2, "cfg2": 2, "sp3": 3}  # sp3: 6 tokens (3 latent frames of 1 x 2 patches), 2 per rank


@pytest.mark.parametrize(("flavor", "plans"), [("wan-tiny", WAN21_PLANS), ("wan2.2-tiny", WAN22_PLANS),
                                               ("wan2.2-ti2v-tiny", TI2V_PLANS)])
def test_every_plan_gives_the_pipeline_latents_and_frames(flavor, plans, tmp_path, photo, capsys, monkeypatch):
    """`vidpipe generate` as the issue runs it, on each plan, against one rank and against diffusers' own pipeline
    (latents within 1e-4, frames within 1/255). Run with -s for the table."""
    from safetensors.torch import load_file

    from tests.conftest import run_main

    monkeypatch.setenv("VIDPIPE_THREADS_PER_RANK", "1")
    cache = tmp_path / "cache"
    image = tmp_path / "photo.png"
    photo.save(image)
    args = [str(image), "--model", flavor, "--cache-dir", str(cache), "--prompt", PROMPT, "--negative-prompt",
            NEGATIVE, "--guidance-scale", "4.0", "--samples", "2", "--seed", "42", "--steps", "6", "--frames", "9",
            "--height", "32", "--width", str(WIDTH[flavor]), "--device", "cpu", "--format", "png", "--save-latents"]
    outputs = {}
    for plan, ranks in {"one": 1, **plans}.items():
        out = tmp_path / plan
        code, err = run_main(capsys, "generate", *args, "--out", str(out), "--gpus", str(ranks), "--strategy",
                             "dp" if plan == "one" else plan)
        assert code == 0, (plan, err[-3000:])
        outputs[plan] = out

    source = Source("dir", build_tiny(flavor, cache), flavor)
    print(f"\n{flavor}: plan, ranks, max|diff| vs 1 rank, vs diffusers, frames vs diffusers (x 1/255)")
    for i in (0, 1):
        stem = f"photo_s{i}_seed{42 + i}"
        expected = pipeline_output(source, PIL.Image.open(image), "latent", seed=42 + i)[0]
        expected_frames = pipeline_output(source, PIL.Image.open(image), "np", seed=42 + i)[0] * 255
        one = load_file(outputs["one"] / f"{stem}.latents.safetensors")["latents"]
        assert one.shape == expected.shape == LATENT[flavor]  # [C, T, h, w]: the pipeline's, without the batch
        for plan in ["one", *plans]:
            got = load_file(outputs[plan] / f"{stem}.latents.safetensors")["latents"]
            frames = np.stack([np.asarray(PIL.Image.open(outputs[plan] / stem / f"frame_{k:03d}.png"))
                               for k in range(9)]).astype(np.float64)
            vs_one, vs_pipeline = (got - one).abs().max().item(), (got - expected).abs().max().item()
            frame_diff = np.abs(frames - expected_frames).max()
            print(f"  {plan:<9} {plans.get(plan, 1)}  {vs_one:.2g}  {vs_pipeline:.2g}  {frame_diff:.2f}")
            if plan.startswith("pp") and "cfg" not in plan:
                assert torch.equal(got, one), plan
            assert vs_one <= 1e-5 and vs_pipeline <= 1e-4 and frame_diff <= 1.0 + 1e-6, plan


@pytest.mark.parametrize(("model", "extra", "expected"), [
    ("wan-tiny", ["--motion-bucket-id", "100"], "--motion-bucket-id is a Stable Video Diffusion option; Wan takes"),
    ("wan-tiny", ["--frames", "10"], "--frames 10: Wan takes 4k + 1 frames"),
    ("wan-tiny", ["--height", "40"], "--height 40: must be a positive multiple of 16"),
    ("wan-tiny", ["--guidance-scale", "1.0", "--strategy", "cfg2", "--gpus", "2"], "guidance is off"),
    ("tiny", ["--prompt", "a fox"], "--prompt is a Wan option"),
])
def test_options_of_the_other_family_and_bad_sizes_are_refused_in_one_line(tmp_path, photo, capsys, model, extra,
                                                                          expected):
    from tests.conftest import run_main

    image = tmp_path / "photo.png"
    photo.save(image)
    code, err = run_main(capsys, "generate", str(image), "--model", model, "--cache-dir", str(tmp_path / "cache"),
                         "--device", "cpu", "--out", str(tmp_path / "out"), *extra)
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
