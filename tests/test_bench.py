"""`vidpipe bench` end to end, as a user runs it (subprocesses, gloo on CPU, tiny runs), plus its bad input and
the arithmetic between runs. No timing assertions: a shared CPU makes "faster than" a coin toss."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import read_json, run_main
from vidpipe.config import BenchConfig
from vidpipe.jobs.bench import add_ratios, plan_runs

SMALL = ["--device", "cpu", "--latent-shape", "1", "4", "2", "8", "8", "--samples", "3", "--warmup-samples", "0"]

RUN_KEYS = {
    "first_sample_time_s", "per_sample_latency_s", "latency_mean_s", "latency_p50_s", "latency_max_s",
    "steady_interval_s", "makespan_s", "throughput_samples_per_s", "efficiency", "peak_memory_gb_per_rank",
    "comm_s_per_rank", "speedup", "scaling_efficiency", "world_size", "strategy", "device", "backend", "dtype",
    "total_steps", "num_samples", "seeds",
}

PLOTS = ("throughput_vs_gpus.png", "latency_vs_gpus.png", "scaling_efficiency.png", "peak_memory_per_rank.png")


def test_dummy_bench_writes_json_csv_table_and_plots(here, tmp_path):
    """Two strategies on one and two ranks (bench measures every strategy the same way: a dp run would take pp's
    path again); fsdp's shards are checked on top."""
    json_path, csv_path, plot_dir = tmp_path / "bench.json", tmp_path / "bench.csv", tmp_path / "plots"
    result = here("bench", "--compare", "pp,fsdp", "--gpus", "1,2", "--steps", "4", *SMALL,
                 "--json", str(json_path), "--csv", str(csv_path), "--plot", str(plot_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bench: dummy" in result.stderr

    summary = read_json(json_path)
    runs = summary["runs"]
    plan = [(s, w) for s in ("pp", "fsdp") for w in (1, 2)]
    assert [(r["strategy"], r["world_size"]) for r in runs] == plan
    for run in runs:
        name = f"{run['strategy']} x{run['world_size']}"
        assert run["status"] == "ok", name
        assert run["verified"] is True, name
        assert RUN_KEYS <= run.keys(), f"{name} lacks {sorted(RUN_KEYS - run.keys())}"
        assert run["device"].startswith("cpu") and run["backend"] == "gloo" and run["dtype"] == "fp32"
        assert run["host_malloc"].startswith("kept:"), name  # CPU ranks keep freed memory (host_memory.py)
        assert run["total_steps"] == 4 and run["num_samples"] == 3 and run["seeds"] == [0, 1, 2]
        assert len(run["per_sample_latency_s"]) == 3
        assert len(run["peak_memory_gb_per_rank"]) == len(run["comm_s_per_rank"]) == run["world_size"]
        if run["world_size"] == 1:
            assert run["speedup"] == 1.0, name
        assert run["scaling_efficiency"] == pytest.approx(run["speedup"] / run["world_size"], rel=1e-12), name
        assert run["speedup_vs_baseline"] is None  # no diffusers run in a dummy bench

    fsdp = {r["world_size"]: r["unet_param_bytes_per_rank"] for r in runs if r["strategy"] == "fsdp"}
    assert len(fsdp[1]) == 1 and len(fsdp[2]) == 2
    assert max(fsdp[2]) < fsdp[1][0] <= sum(fsdp[2])  # each rank holds a shard; the shards cover the UNet

    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["strategy"], int(row["world_size"])) for row in rows] == plan
    assert all(row["status"] == "ok" and row["verified"] == "True" for row in rows)

    from PIL import Image

    assert sorted(p.name for p in plot_dir.iterdir()) == sorted(PLOTS)
    for name in PLOTS:
        with Image.open(plot_dir / name) as image:
            assert image.format == "PNG"
            assert image.width >= 300, name


def test_svd_bench_verifies_every_strategy_against_the_stock_pipeline(here, tmp_path, cache):
    """The real-model path: the diffusers baseline runs first, and each plan's latents must match its; the
    latency axes report their latency speed-up and the bytes they sent, measured and worked out. (One plan of
    whole steps: bench treats pp and fsdp alike, and tests/test_generate.py holds every plan to diffusers.)"""
    out = tmp_path / "tiny.json"
    result = here("bench", "--model", "tiny", "--cache-dir", str(cache), "--compare", "diffusers,pp,cfg2,sp2",
                  "--gpus", "2", "--steps", "2", "--samples", "2", "--warmup-samples", "0", "--frames", "3",
                  "--device", "cpu", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    runs = read_json(out)["runs"]
    assert [(r["strategy"], r["world_size"]) for r in runs] == [("diffusers", 1), ("pp", 2), ("cfg2", 2), ("sp2", 2)]
    assert [r["plan"] for r in runs[1:]] == ["pp2", "dp1.cfg2", "dp1.sp2"]
    for run in runs[2:]:
        assert run["latency_speedup"] > 0 and run["latency_reference"] == "diffusers x1"
        measured = run["split_comm_bytes_per_step_per_rank"]
        assert min(measured) > 0 and measured == run["split_comm_bytes_per_step_analytic"]
    assert "KB/step" in result.stderr
    assert runs[0]["verify_mode"] == "reference run"
    for run in runs[1:]:
        assert run["status"] == "ok" and run["verified"] is True
        assert run["verified_against"] == "diffusers x1"
        assert run["verify_mode"] == "max abs diff <= 0.0001 x max(1, max |reference|)"
        assert run["speedup_vs_baseline"] > 0 and run["speedup"] is None  # no 1-rank run of pp/fsdp here
        assert run["frames"] == 3 and run["height"] == 64
    assert runs[0]["steps_per_rank"] == [2] and "stock diffusers pipeline" in runs[0]["step_assignment"]


def test_pipeline_with_more_ranks_than_steps_is_skipped_not_failed(here):
    result = here("bench", "--compare", "pp", "--gpus", "1,4", "--steps", "2", *SMALL, "--json", "-")
    assert result.returncode == 0, result.stderr[-3000:]
    one, four = json.loads(result.stdout)["runs"]  # stdout holds the JSON alone; the table went to stderr
    assert (one["strategy"], one["world_size"], one["status"], one["verified"]) == ("pp", 1, "ok", True)
    assert one["speedup"] == 1.0
    assert (four["strategy"], four["world_size"], four["status"]) == ("pp", 4, "skipped")
    assert "step" in four["reason"]
    assert "skipped" in result.stderr


def test_skipped_runs_reach_the_json_and_csv_files(tmp_path):
    """In process and nothing measured (every run skipped), so no worker starts."""
    from vidpipe.jobs.bench import bench

    json_path, csv_path = tmp_path / "bench.json", tmp_path / "bench.csv"
    config = BenchConfig(compare=("pp",), gpus=(4,), steps=2, samples=3, warmup_samples=0,
                         latent_shape=(1, 4, 2, 8, 8), device="cpu", json_path=str(json_path),
                         csv_path=str(csv_path))
    summary = bench(config)
    assert [r["status"] for r in summary["runs"]] == ["skipped"]  # returned, and printed, but:
    assert [r["status"] for r in read_json(json_path)["runs"]] == ["skipped"]
    with csv_path.open(newline="") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["skipped"]



# Small, valid settings first: the flag under test comes last and wins, so a check that stops working gives a
# short run (and a failed assertion) rather than a default-sized bench.
VALID = ["--compare", "pp", "--gpus", "1", "--steps", "4", *SMALL]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--compare", "pp,xx"], "--compare xx: unknown axis 'xx'"),
        (["--gpus", ""], "--gpus '': empty list"),
        (["--gpus", ","], "--gpus ',': empty list"),
        (["--gpus", "0"], "--gpus 0: must be at least 1"),
        (["--gpus", "1,a"], "'a' is not a whole number"),
        (["--gpus", "a"], "--gpus 'a'"),
        (["--compare", "diffusers"], "--compare diffusers: the stock-pipeline baseline needs an SVD model"),
        (["--repeats", "0"], "--repeats 0"),
    ],
)
def test_bench_usage_errors(capsys, args, expected):
    code, err = run_main(capsys, "bench", *VALID, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vidpipe: error:") and expected in lines[0]
    assert "Traceback" not in err


def _run(strategy: str, world_size: int, throughput: float | None, num_samples: int = 4,
         latency: float = 1.0, step: float = 0.1) -> dict:
    makespan = num_samples / throughput if throughput else 0.0
    return {"strategy": strategy, "world_size": world_size, "status": "ok", "num_samples": num_samples,
            "throughput_samples_per_s": throughput, "makespan_s": makespan, "latency_mean_s": latency,
            "step_time_s": step}


def test_add_ratios_against_one_rank_and_the_baseline():
    runs = [
        _run("diffusers", 1, 2.0, step=0.2),
        _run("pp", 1, 4.0, step=0.15),
        _run("pp", 2, 6.0),
        _run("pp", 4, 8.0),
        {"strategy": "pp", "world_size": 8, "status": "skipped", "reason": "too few steps"},
        {"strategy": "dp", "world_size": 1, "status": "failed", "reason": "boom"},
        _run("dp", 2, 5.0),
    ]
    add_ratios(runs)
    base, pp1, pp2, pp4, skipped, failed, dp2 = runs
    assert base["speedup"] == 1.0 and base["speedup_vs_baseline"] == 1.0
    assert pp1["speedup"] == 1.0 and pp1["scaling_efficiency"] == 1.0
    assert pp2["speedup"] == pytest.approx(1.5) and pp2["scaling_efficiency"] == pytest.approx(0.75)
    assert pp4["speedup"] == pytest.approx(2.0) and pp4["scaling_efficiency"] == pytest.approx(0.5)
    assert pp2["speedup_vs_baseline"] == pytest.approx(3.0) and pp4["speedup_vs_baseline"] == pytest.approx(4.0)
    assert pp4["time_per_sample_s"] == pytest.approx(1 / 8)
    assert base["step_time_vs_baseline"] == 1.0 and pp1["step_time_vs_baseline"] == pytest.approx(0.75)
    # dp's 1-rank run failed: nothing to measure the speed-up against, but the baseline is still there
    assert dp2["speedup"] is None and dp2["scaling_efficiency"] is None
    assert dp2["speedup_vs_baseline"] == pytest.approx(2.5)
    # runs that did not finish get no figures
    assert "speedup" not in skipped and "speedup" not in failed


def test_latency_speedup_is_over_dp_on_one_gpu():
    """One sample's latency: the 1-GPU dp run is the reference of every plan, whatever its own name."""
    runs = [_run("cfg2", 2, 1.0, 1, latency=2.1), _run("dp", 1, 0.25, 1, latency=4.0), _run("dp", 2, 0.25, 1,
            latency=4.0), _run("sp2", 2, 1.0, 1, latency=2.5)]
    add_ratios(runs)
    cfg2, dp1, dp2, sp2 = runs
    assert dp1["latency_speedup"] == 1.0 and dp2["latency_speedup"] == 1.0
    assert cfg2["latency_speedup"] == pytest.approx(4.0 / 2.1) and sp2["latency_speedup"] == pytest.approx(1.6)
    assert cfg2["latency_reference"] == "dp x1"
    assert cfg2["speedup"] is None  # no 1-rank cfg2 run: no throughput speed-up of its own


def test_add_ratios_without_a_baseline():
    runs = [_run("fsdp", 1, 3.0), _run("fsdp", 2, 3.0)]
    add_ratios(runs)
    assert [r["speedup"] for r in runs] == [1.0, 1.0]
    assert runs[1]["scaling_efficiency"] == pytest.approx(0.5)
    assert all(r["speedup_vs_baseline"] is None for r in runs)


def test_plan_runs_puts_the_baseline_first_and_rank_counts_in_order():
    config = BenchConfig(model="tiny", compare=("fsdp", "diffusers", "pp"), gpus=(4, 1, 2))
    assert plan_runs(config) == [
        ("diffusers", 1), ("fsdp", 1), ("fsdp", 2), ("fsdp", 4), ("pp", 1), ("pp", 2), ("pp", 4),
    ]
    assert plan_runs(BenchConfig(compare=("dp",), gpus=(2,))) == [("dp", 2)]
