"""`vidpipe memory-probe`: parameter bytes and peak memory per rank per phase, what fits, and the search."""

from __future__ import annotations

import pytest

from tests.conftest import read_json, run_main
from vidpipe.config import MemoryProbeConfig
from vidpipe.jobs.memory_probe import PHASES, Probe, Prober, memory_figures
from vidpipe.metrics import RankRecord

GIB = 1024**3


def test_fsdp_halves_the_unet_bytes_per_rank_and_pp_keeps_them(here, tmp_path, cache):
    """fsdp and sp2.fsdp over 1 and 2 ranks, then pp on 2 (pp on 1 rank would be fsdp's 1-rank run again)."""
    out, pp_out, cache = tmp_path / "probe.json", tmp_path / "pp.json", str(cache)
    result = here("memory-probe", "--model", "tiny", "--cache-dir", cache, "--strategy", "fsdp,sp2.fsdp", "--gpus",
                  "1,2", "--device", "cpu", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "memory-probe: tiny on cpu" in result.stderr and "peak RSS" in result.stderr
    rows = {(r["strategy"], r["world_size"]): r for r in read_json(out)["rows"]}
    assert sorted(rows) == [("fsdp", 1), ("fsdp", 2), ("sp2.fsdp", 1), ("sp2.fsdp", 2)]
    pipeline = here("memory-probe", "--model", "tiny", "--cache-dir", cache, "--strategy", "pp", "--gpus", "2",
                    "--device", "cpu", "--json", str(pp_out))
    assert pipeline.returncode == 0, pipeline.stderr[-3000:]
    [pp_row] = read_json(pp_out)["rows"]
    assert (pp_row["strategy"], pp_row["world_size"]) == ("pp", 2)
    rows[("pp", 2)] = pp_row
    # A plan that cannot run on a rank count is a row with the reason, not a failure.
    skipped = rows.pop(("sp2.fsdp", 1))
    assert skipped["status"] == "skipped" and "does not divide --gpus 1" in skipped["reason"]
    assert rows[("sp2.fsdp", 2)]["plan"] == "dp1.sp2.fsdp"
    assert rows[("sp2.fsdp", 2)]["unet_param_bytes_per_rank"] == rows[("fsdp", 2)]["unet_param_bytes_per_rank"]
    for row in rows.values():
        assert row["status"] == "ok" and row["fits"] is True
        assert row["peak_memory_kind"] == "cpu_peak_rss"
        assert sorted(row["peak_memory_gb_per_rank_by_phase"]) == sorted(PHASES)
        assert all(len(v) == row["world_size"] and min(v) > 0 for v in row["peak_memory_gb_per_rank_by_phase"].values())
    one = rows[("fsdp", 1)]["unet_param_bytes_per_rank"][0]
    assert max(rows[("fsdp", 2)]["unet_param_bytes_per_rank"]) <= 0.55 * one
    assert rows[("pp", 2)]["unet_param_bytes_per_rank"] == [one, one]


class FakeProber(Prober):
    """The search logic alone: memory grows linearly with frames (or pixels); no processes."""

    def __init__(self, search: str, budget_gb: float, limit: int = 256):
        self.config = MemoryProbeConfig(model="tiny", search=search, search_limit=limit, budget_gb=budget_gb)
        self.budget_gb = budget_gb
        self.multiple = 16
        self.probed: list[int] = []

    def measure(self, probe: Probe) -> dict:
        value = probe.frames if self.config.search == "frames" else probe.height
        self.probed.append(value)
        peak = 1.0 + 0.1 * (probe.frames if self.config.search == "frames" else probe.height * probe.width / 4096)
        return {"strategy": probe.strategy, "world_size": probe.gpus, "frames": probe.frames, "height": probe.height,
                "width": probe.width, "status": "ok", "fits": peak <= self.budget_gb, "peak_memory_gb": peak}


@pytest.mark.parametrize(("start", "budget", "largest"), [(14, 3.55, 25), (14, 1.05, 0), (4, 50.0, 256), (40, 2.0, 10)])
def test_frame_search_finds_the_largest_that_fits(start, budget, largest):
    prober = FakeProber("frames", budget)
    best, tried = prober.search("fsdp", 2, start, 64, 64)
    assert (best["frames"] if best else 0) == largest
    assert len(tried) == len(set(prober.probed))  # never probes the same value twice
    if largest:
        assert not any(r["fits"] for r in tried if r["frames"] > largest)


def test_size_search_keeps_the_aspect_ratio_and_the_multiple():
    prober = FakeProber("size", budget_gb=3.0)
    best, _tried = prober.search("pp", 1, 14, 64, 128)  # 1 + 0.1 * h * w / 4096 <= 3 -> h*w <= 81920
    assert best["height"] % 16 == 0 and best["width"] == 2 * best["height"]
    assert best["height"] * best["width"] <= 81920 < (best["height"] + 16) * (best["width"] + 32)



def _cuda_rank(rank: int, allocated_gb: float, reserved_gb: float, driver_gb: float | None) -> RankRecord:
    record = RankRecord(rank, memory_kind="cuda_max_allocated")
    record.peak_memory_bytes = {phase: int(allocated_gb * GIB) for phase in PHASES}
    record.peak_reserved_bytes = {phase: int(reserved_gb * GIB) for phase in PHASES}
    record.driver_memory_bytes = {} if driver_gb is None else {"decode": int(driver_gb * GIB)}
    return record


@pytest.mark.parametrize(("ranks", "needed", "fits"), [
    ([(6.0, 7.0, None)], 7.0, True),  # no driver figure (a container): the reserved pool decides
    ([(6.0, 9.0, None)], 9.0, False),  # allocated fits, the reserved pool does not
    ([(6.0, 7.0, 8.5)], 8.5, False),  # the pool fits, the context and NCCL buffers on top do not
    ([(6.0, 7.0, 7.5), (2.0, 3.0, 3.5)], 7.5, True),  # the busiest rank decides
])
def test_fits_uses_the_reserved_pool_and_the_driver_figure_not_allocated(ranks, needed, fits):
    row = memory_figures([_cuda_rank(i, *figures) for i, figures in enumerate(ranks)], budget_gb=8.0)
    assert row["needed_gb"] == pytest.approx(needed, abs=1e-3) and row["fits"] is fits
    assert row["peak_memory_gb"] == pytest.approx(max(r[0] for r in ranks), abs=1e-3)  # allocated stays reported
    assert row["peak_reserved_gb_per_rank"] == [pytest.approx(r[1], abs=1e-3) for r in ranks]


def test_fits_on_cpu_is_the_peak_rss_as_before():
    record = RankRecord(0, peak_memory_bytes={phase: GIB for phase in PHASES})
    row = memory_figures([record], budget_gb=0.5)
    assert row["fits"] is False and row["needed_gb"] == row["peak_memory_gb"] == 1.0
    assert row["peak_reserved_gb_per_rank"] == [None] and row["driver_memory_gb_per_rank"] == [None]
    assert memory_figures([record], budget_gb=None)["fits"] is True  # no budget: ran without running out


@pytest.mark.parametrize(("args", "expected"), [
    (["--search", "depth"], "--search 'depth': unknown; choose one of frames, size"),
    (["--size", "576x"], "--size '576x': not HEIGHTxWIDTH"),
    (["--size", "576by1024"], "--size '576by1024'"),
    (["--strategy", "pp,zz"], "--strategy zz: unknown axis 'zz'"),
    (["--gpus", ","], "--gpus ',': empty list"),
    (["--frames", "0"], "--frames 0"),
    (["--budget-gb", "-1"], "--budget-gb -1"),
    (["--model", "dummy"], "--model dummy has no weights"),
])
def test_bad_probe_input_is_one_line_and_exit_2(capsys, args, expected):
    code, err = run_main(capsys, "memory-probe", *args)
    assert code == 2
    assert err.count("\n") == 1 and expected in err


def test_search_on_cpu_needs_a_budget(here, cache):
    result = here("memory-probe", "--model", "tiny", "--cache-dir", str(cache), "--device", "cpu",
                 "--search", "frames")
    assert result.returncode == 2
    assert "--search frames on CPU needs --budget-gb" in result.stderr
