"""`vidpipe simulate --model wan...`: the Wan stand-in (real block count, real sampler, Ulysses' collectives) on a
few tokens, every plan against one rank; and the stated GPU model's arithmetic for Wan."""

from __future__ import annotations

import pytest

from tests.conftest import run_main
from vidpipe.config import RunOptions, SimulateConfig
from vidpipe.jobs.simulate import SimulateJob, analytic_bytes, verify
from vidpipe.models.registry import WAN_RANDOM
from vidpipe.parallel.gpu_model import GPU_COLLECTIVE_LATENCY_S, GPU_LINK_BYTES_PER_S
from vidpipe.parallel.plan import parse_plan
from vidpipe.runtime.launch import LaunchSpec, launch

WAN = "wan2.1-i2v-14b-720p-random"
#: 2 latent frames of 4 x 6: 2 x 2 x 3 = 12 tokens (the 14B's 40 blocks and 40 heads, one channel each).
TINY = (1, 16, 2, 4, 6)


@pytest.mark.parametrize(("strategy", "mode", "calls"), [
    ("pp", "bit-identical", 0.0),
    ("sp2", "max abs diff", 2 * (2 * 40 + 1)),  # two calls a step: 2 all-to-alls per block, the gather at the end
    ("cfg2", "max abs diff", 1.0),  # one call a step, one gather of the prediction
])
def test_wan_stand_in_on_two_ranks_gives_the_one_rank_latents(strategy, mode, calls):
    """Through the real Wan loop (UniPC's history travels in pp's hand-off) and the plan's real axes; cfg and sp
    send what `wan_bytes_per_step` says, with the stand-in's heads of one channel."""
    config = SimulateConfig(RunOptions(2, strategy, "cpu"), steps=3, samples=2, warmup_samples=0,
                            latent_shape=TINY, model=WAN)
    plan = config.run.plan(2)
    result = launch(SimulateJob(config, "fp32", plan), LaunchSpec(2, "cpu", "gloo", 120.0), lambda e: None)
    checked = verify(config, plan, "fp32", "cpu", result["finals"])
    assert checked["verified"], checked
    assert checked["verify_mode"].startswith(mode)
    steps = [len(r.steps) for r in result["records"]]
    assert [r.split_comm_calls / n for r, n in zip(result["records"], steps, strict=True)] == [calls] * 2
    sent = [r.split_comm_bytes / n for r, n in zip(result["records"], steps, strict=True)]
    assert sent == analytic_bytes(config, plan, "fp32")


def test_wan_gpu_model_arithmetic():
    """cfg2.sp4 at 81 x 720 x 1280 on the 14B: 1/8 of the kernel; per rank one call a step with 2 x 40
    all-to-alls and a gather, plus cfg's gather; Ulysses' bytes in bf16."""
    from vidpipe.models.wan.simulator import default_latent_shape, wan_gpu_model

    latent = default_latent_shape(WAN)
    assert latent == (1, 16, 21, 90, 160)  # 21 x 45 x 80 = 75,600 tokens
    model = wan_gpu_model(WAN, parse_plan("cfg2.sp4").resolve(8), latent, step_ms=200)
    tokens, mine, heads, head_dim = 75_600, 18_900, 40, 128
    per_block = 3 * mine * (heads - heads // 4) * head_dim + (tokens - mine) * (heads // 4) * head_dim
    per_call = (40 * per_block + 3 * mine * 16 * 4) * 2  # + the gather after proj_out (16 channels x 2 x 2)
    sent = per_call + 16 * 21 * 90 * 160 * 2  # + cfg's gather of the prediction
    assert model["work_share"] == 0.125 and model["collectives_per_step"] == 82
    assert model["bytes_per_step"] == sent == 23_241_254_400
    step = 0.2 * 0.125 + 82 * GPU_COLLECTIVE_LATENCY_S + sent / GPU_LINK_BYTES_PER_S
    assert model["predicted_step_s"] == pytest.approx(step)
    assert model["predicted_latency_speedup"] == pytest.approx(0.2 / step)
    assert "6.25x on 2 / 4 / 8 H800" not in model["assumptions"] and "H800" in model["published"]
    # Wan's own plans (Ulysses over all G GPUs = spG), modelled the same way, beside their published figures
    assert sorted(model["published_plans"]) == [2, 4, 8]


def test_simulate_names_its_models():
    # every full-size Wan flavor but TI2V-5B, whose stand-in (48 channels, per-token timesteps) is not written yet
    assert SimulateConfig.MODELS[1:] == WAN_RANDOM


@pytest.mark.parametrize(("args", "expected"), [
    (["--model", "wan-tiny"], "--model 'wan-tiny': simulate has stand-ins for dummy, wan2.1-i2v-14b-480p-random"),
    (["--model", WAN, "--latent-shape", "1", "4", "2", "8", "8"], "takes latents 1 x 16 x T x h x w"),
    (["--model", WAN, "--gpus", "4", "--strategy", "sp4", "--latent-shape", "1", "16", "1", "2", "2"],
     "sp4 with 1 tokens"),
])
def test_wan_usage_errors_are_one_line(capsys, args, expected):
    code, err = run_main(capsys, "simulate", "--device", "cpu", *args)
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_the_a14b_stand_in_breaks_pp_at_the_expert_switch(here, tmp_path):
    """As generate does on the real model: 8 steps with A14B's boundary 0.9 switch at step 3, so pp2 is 3 + 5."""
    import json

    result = here("simulate", "--model", "wan2.2-i2v-a14b-random", "--gpus", "2", "--strategy", "pp", "--steps",
                  "8", "--samples", "2", "--latent-shape", "1", "16", "1", "4", "4", "--device", "cpu", "--json",
                  str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["steps_per_rank"] == [3, 5] and report["verified"] is True
    assert "the blocks break at step 3" in report["step_assignment"]


def test_the_ti2v_stand_in_runs_per_token_timesteps_under_sp_and_matches_one_rank(here, tmp_path):
    """TI2V-5B's stand-in (48 channels, 30 blocks, 24 heads; per-token timesteps, the image's latents as the first
    frame every step) on sp2 against one rank: 2 latent frames of 4 x 4 = 8 tokens."""
    import json

    result = here("simulate", "--model", "wan2.2-ti2v-5b-random", "--gpus", "2", "--strategy", "sp2", "--steps",
                  "3", "--samples", "1", "--latent-shape", "1", "48", "2", "4", "4", "--device", "cpu", "--json",
                  str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verified"] is True and report["verify_mode"].startswith("max abs diff"), report
