"""`vidpipe simulate` end to end, as a user runs it: subprocesses, gloo on CPU, 2-4 ranks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, read_json, vidpipe_env
from vidpipe.config import RunOptions, SimulateConfig
from vidpipe.jobs.simulate import SimulateJob
from vidpipe.runtime.launch import LaunchSpec, launch

SMALL = ["--latent-shape", "1", "4", "2", "8", "8", "--device", "cpu"]

REPORT_KEYS = {
    "strategy", "world_size", "total_steps", "steps_per_rank", "num_samples", "warmup_samples",
    "first_sample_time_s", "per_sample_latency_s", "steady_interval_s", "makespan_s",
    "throughput_samples_per_s", "ideal_makespan_s", "efficiency", "rank_busy_fraction", "comm_s_per_rank",
    "peak_memory_gb_per_rank", "device", "backend", "dtype", "versions", "verified",
}


def test_pipeline_with_uneven_blocks_reports_every_figure(here, tmp_path):
    out = tmp_path / "r.json"
    result = here("simulate", "--gpus", "3", "--strategy", "pp", "--steps", "7", "--samples", "4", *SMALL,
                 "--json", str(out), "--verbose")
    assert result.returncode == 0, result.stderr
    report = read_json(out)
    assert REPORT_KEYS <= report.keys()
    assert report["verified"] is True and report["verify_mode"] == "bit-identical"
    assert report["steps_per_rank"] == [3, 2, 2]
    assert report["world_size"] == 3 and report["backend"] == "gloo" and report["dtype"] == "fp32"
    assert len(report["per_sample_latency_s"]) == 4
    assert len(report["rank_busy_fraction"]) == 3 and all(0 < f <= 1 for f in report["rank_busy_fraction"])
    # latency is first step -> last step of one sample: never shorter than the sample's own steps
    assert min(report["per_sample_latency_s"]) >= 7 * report["step_time_s"] * 0.5
    assert "[rank=2] step 6 completed in" in result.stderr
    assert report["step_assignment"] == "7 steps on 3 ranks: rank 0 runs 3 steps, ranks 1-2 run 2"
    for title in ("Step assignment", "Samples", "Summary"):
        assert title in result.stderr


def test_data_parallel_writes_json_to_stdout(here):
    result = here("simulate", "--gpus", "2", "--strategy", "dp", "--steps", "3", "--samples", "3", *SMALL,
                 "--json", "-")
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout)  # stdout holds the report alone; tables went to stderr
    assert report["verified"] is True
    assert report["steps_per_rank"] == [3, 3]


@pytest.mark.parametrize("strategy", ["pp", "dp", "fsdp"])
def test_every_rank_count_gives_the_one_rank_latents(strategy):
    """Final latents of 2 and 4 ranks are bit-identical to 1 rank's (CPU fp32); fsdp's stand-in UNet holds
    parameters, so this also checks that sharding and all-gathering them changes nothing."""
    finals = {}
    for world in (1, 4) if strategy == "pp" else (1, 2):
        config = SimulateConfig(RunOptions(world, strategy, "cpu"), steps=5, samples=5, warmup_samples=0,
                                latent_shape=(1, 4, 2, 8, 8))
        job = SimulateJob(config, "fp32", config.run.plan(world))
        result = launch(job, LaunchSpec(world, "cpu", "gloo", 120.0), lambda e: None)
        finals[world] = result["finals"]
    one, many = finals[1], finals[max(finals)]
    assert sorted(one) == sorted(many) == list(range(5))
    for index in one:
        assert torch.equal(one[index], many[index])


def test_torchrun_starts_the_ranks(tmp_path):
    out = tmp_path / "t.json"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vidpipe",
         "simulate", "--steps", "4", "--samples", "3", *SMALL, "--json", str(out)],
        capture_output=True, text=True, timeout=240, env=vidpipe_env(), cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(out)
    assert report["world_size"] == 2 and report["verified"] is True


@pytest.mark.parametrize(("plan", "full", "calls", "share"), [
    ("cfg2.sp2", "dp1.cfg2.sp2", 122.0, 0.5 * 3 / 5), ("pp2.sp2", "pp2.sp2", 121.0, 3 / 5)])
def test_latency_plans_in_the_simulator_run_the_real_collectives(here, tmp_path, plan, full, calls, share):
    """4 ranks: the stand-in UNet carries SVD-XT's 22 temporal res blocks and 16 temporal attention blocks, so sp
    makes SVD-XT's 121 collectives a step (plus cfg's one); bytes as worked out; pp hands samples from one sp
    group to the next; the GPU model states its assumptions."""
    out = tmp_path / "r.json"
    result = here("simulate", "--gpus", "4", "--strategy", plan, "--steps", "2", "--samples", "2",
                 "--latent-shape", "1", "4", "5", "8", "8", "--step-ms", "30", "--device", "cpu", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(out)
    assert report["plan"] == full and report["verified"] is True and sorted(report["seeds"]) == [0, 1]
    assert report["split_comm_calls_per_step_per_rank"] == [calls] * 4
    assert report["split_comm_bytes_per_step_per_rank"] == report["split_comm_bytes_per_step_analytic"]
    model = report["gpu_model"]
    assert model["work_share"] == pytest.approx(share) and model["predicted_latency_speedup"] > 1
    assert "GPU model (a model, not a measurement)" in result.stderr
