"""The report's figures follow design §7 exactly; checked on hand-made timelines."""

import pytest

from vidpipe.metrics import RankRecord, memory_needed_gb, summarize
from vidpipe.strategies import dp, pp


def pipeline_records():
    """2 ranks, 2 steps each of 1 s, 3 samples, a perfect pipeline: sample i starts at i, ends at i + 4."""
    rank0 = RankRecord(0, steps=[(s, k, s * 2 + k, s * 2 + k + 1) for s in range(3) for k in range(2)])
    rank1 = RankRecord(1, steps=[(s, 2 + k, s * 2 + 2 + k, s * 2 + 3 + k) for s in range(3) for k in range(2)])
    return [rank0, rank1]


def test_latency_is_first_step_to_last_step_not_the_completion_interval():
    report = summarize(pipeline_records(), lambda step_s, n: pp.ideal_makespan(step_s, n, 4, 2))
    assert report["per_sample_latency_s"] == [4.0, 4.0, 4.0]
    assert report["steady_interval_s"] == 2.0  # completions at 4, 6, 8
    assert report["first_sample_time_s"] == 4.0
    assert report["makespan_s"] == 8.0
    assert report["throughput_samples_per_s"] == pytest.approx(3 / 8)
    assert report["step_time_s"] == 1.0
    assert report["ideal_makespan_s"] == 4 + 2 * 2  # all blocks once, then one slowest block per sample
    assert report["efficiency"] == pytest.approx(1.0)
    assert report["rank_busy_fraction"] == [pytest.approx(6 / 8), pytest.approx(6 / 8)]


def test_data_parallel_ideal_is_the_busiest_rank():
    assert dp.ideal_makespan(0.5, num_samples=5, total_steps=4, groups=2) == 3 * 4 * 0.5
    assert pp.ideal_makespan(1.0, num_samples=1, total_steps=30, groups=7) == 30.0


def test_one_sample_has_no_steady_interval():
    record = RankRecord(0, steps=[(0, 0, 0.0, 1.0)])
    report = summarize([record], lambda step_s, n: step_s * n)
    assert report["steady_interval_s"] is None
    assert report["per_sample_latency_s"] == [1.0]


def test_memory_needed_is_the_largest_figure_known():
    assert memory_needed_gb(2.0, None, None) == 2.0  # CPU: peak RSS only
    assert memory_needed_gb(2.0, 2.5, None) == 2.5  # CUDA without nvidia-smi: the reserved pool
    assert memory_needed_gb(2.0, 2.5, 3.1) == 3.1  # the driver's charge: context and NCCL buffers on top


def test_cpu_runs_report_no_reserved_or_driver_memory():
    record = RankRecord(0, steps=[(0, 0, 0.0, 1.0)], peak_memory_bytes={"diffuse": 2**30})
    report = summarize([record], lambda step_s, n: step_s * n)
    assert report["peak_memory_gb_per_rank"] == [1.0] and report["peak_memory_kind"] == "cpu_peak_rss"
    assert report["peak_reserved_gb_per_rank"] == [None] and report["driver_memory_gb_per_rank"] == [None]
