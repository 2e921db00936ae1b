"""How figures are measured on CUDA (design §12), checked on a CPU: fake CUDA events and streams, fake allocator
counters and a fake nvidia-smi stand in for the device. What they pin down: clocks wait for the compute stream
only (never `torch.cuda.synchronize`, which also waits for NCCL), waits and collectives are timed by events
resolved when read (no host sync per span), memory carries reserved and driver figures, the launcher reads GPU
names and memory from nvidia-smi without touching torch.cuda, and the CPU paths are unchanged."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from vidpipe.metrics import RankRecord, StepRecorder, mark_memory, summarize
from vidpipe.parallel.comm import CommStats
from vidpipe.runtime import gpus, timing
from vidpipe.runtime.events import EventSink
from vidpipe.runtime.timing import DeviceTimer, span_start

CUDA0 = torch.device("cuda", 0)
GIB = 1024**3

SMI_GPUS = """0, GPU-aaaa, NVIDIA H200, 143771, 100000, 43771
1, GPU-bbbb, NVIDIA H200, 143771, 140000, 3771
2, GPU-cccc, NVIDIA L4, 23034, 20000, 3034
"""


class FakeStream:
    """A CUDA stream on which each recorded event takes the next `tick_ms` of device time."""

    def __init__(self, tick_ms: float = 5.0):
        self.tick_ms, self.clock_ms, self.synchronized = tick_ms, 0.0, 0

    def synchronize(self) -> None:
        self.synchronized += 1


class FakeEvent:
    """The documented surface of `torch.cuda.Event`: record on a stream, query, synchronize, elapsed_time."""

    created: list[FakeEvent] = []

    def __init__(self, enable_timing: bool = False):
        assert enable_timing, "a timing event needs enable_timing=True"
        self.at_ms: float | None = None
        self.done = False
        self.synchronized = False
        FakeEvent.created.append(self)

    def record(self, stream: FakeStream) -> None:
        stream.clock_ms += stream.tick_ms
        self.at_ms = stream.clock_ms

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.synchronized = True
        self.done = True

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.done and end.done, "elapsed_time on an event that has not completed"
        return end.at_ms - self.at_ms


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as a rank on a GPU sees it, for what the figures use; `synchronize` (device-wide) refuses."""
    stream = FakeStream()
    FakeEvent.created = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)

    def device_wide_sync(device=None):
        raise AssertionError("torch.cuda.synchronize also waits for NCCL's streams")

    monkeypatch.setattr(torch.cuda, "synchronize", device_wide_sync)
    return stream


@pytest.fixture
def no_cuda_context(monkeypatch):
    """Every torch.cuda call that would create a context (or start the driver) in the launcher fails the test."""
    def creates_a_context(*args, **kwargs):
        raise AssertionError("the launcher must not create a CUDA context")

    for name in ("get_device_name", "get_device_properties", "mem_get_info", "is_available", "init", "_lazy_init",
                 "synchronize", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, creates_a_context)


@pytest.fixture
def fake_smi(monkeypatch):
    """nvidia-smi on a 3-GPU machine; the test sets CUDA_VISIBLE_DEVICES. Returns the compute-apps rows to fill."""
    apps: list[str] = []

    def nvidia_smi(*args: str) -> str | None:
        if args[0].startswith("--query-gpu=index"):
            return SMI_GPUS
        if args[0].startswith("--query-compute-apps"):
            return "\n".join(apps)
        return None

    monkeypatch.setattr(gpus, "nvidia_smi", nvidia_smi)
    return apps


# 1. Clocks and spans


def test_step_clock_waits_for_the_compute_stream_not_the_whole_device(fake_cuda):
    recorder = StepRecorder(CUDA0, EventSink(0), rank=0)
    recorder.start_clock()
    recorder.now()
    assert fake_cuda.synchronized == 2  # the compute stream, each time; the device-wide sync would have raised


def test_cpu_step_clock_never_touches_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: pytest.fail("CPU clock asked for a CUDA stream"))
    recorder = StepRecorder(torch.device("cpu"), EventSink(0), rank=0)
    recorder.start_clock()
    assert recorder.now() >= 0.0


def test_cpu_spans_are_host_clock_readings(monkeypatch):
    clock = iter([10.0, 10.25, 20.0, 20.5])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    timer = DeviceTimer()
    for _ in range(2):
        with timer.span(torch.device("cpu")):
            pass
    assert timer.seconds() == pytest.approx(0.75)


def test_cuda_spans_are_events_on_the_compute_stream_resolved_only_when_read(fake_cuda):
    timer = DeviceTimer()
    with timer.span(CUDA0):  # start at 5 ms, end at 10 ms of the stream's time
        pass
    assert len(FakeEvent.created) == 2 and not any(e.synchronized for e in FakeEvent.created)  # no host sync yet
    assert timer.seconds() == pytest.approx(0.005)
    assert FakeEvent.created[1].synchronized  # reading the total waited for the end event


def test_finished_spans_resolve_without_waiting_so_a_server_holds_few_events(fake_cuda):
    timer = DeviceTimer()
    for _ in range(timing.RESOLVE_FINISHED_AT - 1):
        with timer.span(CUDA0):
            pass
    for event in FakeEvent.created[:20]:  # the first ten spans have finished on the device
        event.done = True
    with timer.span(CUDA0):
        pass
    assert len(timer._pending) == timing.RESOLVE_FINISHED_AT - 10  # noqa: SLF001 - the bound is the point
    assert not any(e.synchronized for e in FakeEvent.created)  # resolved by query(), no host sync
    assert timer.seconds() == pytest.approx(timing.RESOLVE_FINISHED_AT * 0.005)


def test_hand_off_waits_and_encodes_are_device_spans_in_the_record(fake_cuda):
    recorder = StepRecorder(CUDA0, EventSink(0), rank=0)
    with recorder.waiting():
        pass
    with recorder.waiting():
        pass
    with recorder.encoding():
        pass
    record = recorder.record
    assert record.comm_s == pytest.approx(0.010) and record.encode_s == pytest.approx(0.005)
    assert recorder.record.comm_s == pytest.approx(0.010)  # reading it twice adds nothing


def test_comm_stats_time_collectives_on_the_stream_and_keep_the_old_call(fake_cuda, monkeypatch):
    stats = CommStats()
    stats.add(100, span_start(CUDA0))  # a collective on CUDA tensors: events
    clock = iter([1.0, 1.5])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    stats.add(50, span_start(torch.device("cpu")))  # a gloo collective on CPU tensors: the host clock
    assert not any(e.synchronized for e in FakeEvent.created)
    assert stats.snapshot() == (150, 2, pytest.approx(0.005 + 0.5))


def test_comm_stats_still_take_a_perf_counter_start(monkeypatch):
    clock = iter([3.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    stats = CommStats()
    stats.add(8, 2.0)
    assert stats.snapshot() == (8, 1, pytest.approx(1.0))


# 2. Memory


def test_cuda_marks_record_allocated_reserved_and_the_driver_figure(fake_cuda, monkeypatch):
    peaks = {"allocated": 3 * GIB, "reserved": 4 * GIB}
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: peaks["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: peaks["reserved"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: peaks.update(allocated=0, reserved=0))
    monkeypatch.setattr("vidpipe.metrics.driver_memory_mib", lambda pid: 5 * 1024.0)
    record = RankRecord(0)
    mark_memory(CUDA0, record, "load")
    monkeypatch.setattr("vidpipe.metrics.driver_memory_mib", lambda pid: None)  # nvidia-smi cannot tell
    mark_memory(CUDA0, record, "diffuse")
    assert record.memory_kind == "cuda_max_allocated"
    assert record.peak_memory_bytes == {"load": 3 * GIB, "diffuse": 0}
    assert record.peak_reserved_bytes == {"load": 4 * GIB, "diffuse": 0}
    assert record.driver_memory_bytes == {"load": 5 * GIB}


def test_driver_memory_is_what_nvidia_smi_charges_this_process(fake_smi):
    fake_smi += ["4242, GPU-aaaa, 1000", "4242, GPU-bbbb, 24", "77, GPU-aaaa, 9000"]
    assert gpus.driver_memory_mib(4242) == 1024.0
    assert gpus.driver_memory_mib(5) is None


def cuda_record(rank: int, reserved_gb: float, driver_gb: float | None) -> RankRecord:
    record = RankRecord(rank, steps=[(0, rank, rank, rank + 1.0)], memory_kind="cuda_max_allocated")
    record.peak_memory_bytes = {"load": 1 * GIB, "diffuse": 2 * GIB}
    record.peak_reserved_bytes = {"load": 1 * GIB, "diffuse": int(reserved_gb * GIB)}
    if driver_gb is not None:
        record.driver_memory_bytes = {"diffuse": int(driver_gb * GIB)}
    return record


def test_summary_carries_reserved_and_driver_per_rank_none_where_unknown():
    report = summarize([cuda_record(1, 3.0, None), cuda_record(0, 2.5, 3.5)], lambda step_s, n: step_s * n)
    assert report["peak_memory_gb_per_rank"] == [2.0, 2.0]
    assert report["peak_reserved_gb_per_rank"] == [2.5, 3.0]
    assert report["driver_memory_gb_per_rank"] == [3.5, None]
    cpu = summarize([RankRecord(0, steps=[(0, 0, 0.0, 1.0)], peak_memory_bytes={"diffuse": GIB})],
                    lambda step_s, n: step_s * n)
    assert cpu["peak_reserved_gb_per_rank"] == [None] and cpu["driver_memory_gb_per_rank"] == [None]


# 3. Tables: CUDA shows the new figures, CPU output is as it was


def _render(table) -> str:
    console = Console(record=True, width=400)
    console.print(table)
    return console.export_text()


def _report(records: list[RankRecord], device: str) -> dict:
    return {"plan": "dp2", "strategy": "dp", "world_size": len(records), "device": device, "backend": "nccl",
            "dtype": "fp16", **summarize(records, lambda step_s, n: step_s * n)}


def test_summary_table_shows_reserved_and_driver_on_cuda_only():
    from vidpipe.report import summary_table

    cuda = _render(summary_table(_report([cuda_record(0, 2.5, 3.5), cuda_record(1, 3.0, None)], "NVIDIA H200")))
    assert "peak GPU GB/rank (allocated)" in cuda
    assert "peak reserved GB/rank" in cuda and "2.50 3.00" in cuda
    assert "driver GB/rank (nvidia-smi" in cuda and "3.50 -" in cuda
    cpu_record = RankRecord(0, steps=[(0, 0, 0.0, 1.0)], peak_memory_bytes={"diffuse": GIB})
    cpu = _render(summary_table(_report([cpu_record], "cpu (x86)")))
    assert "peak RSS GB/rank" in cpu and "reserved" not in cpu and "driver" not in cpu


def _bench_summary(runs: list[dict], device_type: str) -> dict:
    return {"runs": runs, "model": "tiny", "frames": 3, "height": 64, "width": 64, "total_steps": 2,
            "num_samples": 2, "device_type": device_type}


def _bench_run(report: dict) -> dict:
    return {**report, "status": "ok", "verified": True, "speedup": 1.0, "speedup_vs_baseline": None,
            "scaling_efficiency": 1.0}


def test_bench_table_and_csv_show_reserved_and_driver_on_cuda_only(tmp_path):
    from vidpipe.bench_output import bench_table, write_csv

    cuda_run = _bench_run(_report([cuda_record(0, 2.5, 3.5), cuda_record(1, 3.0, None)], "NVIDIA H200"))
    cuda = _render(bench_table(_bench_summary([cuda_run], "cuda")))
    assert "rsv GB" in cuda and "drv GB" in cuda and "3.00" in cuda and "3.50" in cuda
    cpu_record = RankRecord(0, steps=[(0, 0, 0.0, 1.0)], peak_memory_bytes={"diffuse": GIB})
    cpu_run = _bench_run(_report([cpu_record], "cpu (x86)"))
    cpu = _render(bench_table(_bench_summary([cpu_run], "cpu")))
    assert "rsv GB" not in cpu and "drv GB" not in cpu and "RSS GB" in cpu

    import csv

    write_csv([cuda_run, cpu_run], tmp_path / "bench.csv")
    with (tmp_path / "bench.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["peak_reserved_gb_per_rank"] == "2.5 3" and rows[0]["driver_memory_gb_per_rank"] == "3.5 -"
    assert rows[1]["peak_reserved_gb_per_rank"] == "" and rows[1]["driver_memory_gb_per_rank"] == ""


def test_probe_table_shows_reserved_and_driver_on_cuda_only():
    from vidpipe.jobs.memory_probe import memory_figures
    from vidpipe.probe_output import probe_table

    def summary(records, device_type):
        for record in records:
            record.peak_memory_bytes = {p: GIB for p in ("load", "encode", "denoise", "decode")}
        row = {"strategy": "dp", "world_size": len(records), "frames": 3, "height": 64, "width": 64,
               "status": "ok", **memory_figures(records, 80.0)}
        return {"model": "tiny", "device_type": device_type, "budget_gb": 80.0, "budget_source": "test",
                "rows": [row]}

    cuda = _render(probe_table(summary([cuda_record(0, 2.5, 3.5)], "cuda")))
    assert "reserved" in cuda and "driver" in cuda and "2.50" in cuda and "3.50" in cuda
    cpu = _render(probe_table(summary([RankRecord(0)], "cpu")))
    assert "reserved" not in cpu and "driver" not in cpu


# 4. The launcher: names and memory from nvidia-smi, no CUDA context


def test_run_conditions_name_the_visible_gpus_without_a_cuda_context(fake_smi, no_cuda_context, monkeypatch):
    from vidpipe.report import conditions

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert conditions("cuda", "nccl", "fp16", 1)["device"] == "NVIDIA L4"
    assert conditions("cuda", "nccl", "fp16", 2)["device"] == "1 x NVIDIA L4 + 1 x NVIDIA H200"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert conditions("cuda", "nccl", "fp16", 2)["device"] == "NVIDIA H200"


def test_run_conditions_without_nvidia_smi_still_say_cuda(monkeypatch, no_cuda_context):
    from vidpipe.report import conditions

    monkeypatch.setattr(gpus, "nvidia_smi", lambda *args: None)
    assert conditions("cuda", "nccl", "fp16", 2)["device"].startswith("cuda")


def test_probe_budget_is_the_smallest_visible_gpu_read_with_nvidia_smi(fake_smi, no_cuda_context, monkeypatch):
    from vidpipe.jobs.memory_probe import gpu_memory_budget

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    budget, source = gpu_memory_budget()
    assert budget == pytest.approx(143771 / 1024) and source == "NVIDIA H200 memory"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-cccc,0")
    assert gpu_memory_budget() == (pytest.approx(23034 / 1024), "NVIDIA L4 memory")
    monkeypatch.setattr(gpus, "nvidia_smi", lambda *args: None)
    assert gpu_memory_budget() == (None, None)


def test_device_count_asks_nvml_first_not_the_cuda_runtime(monkeypatch, no_cuda_context):
    from vidpipe.runtime.devices import cuda_device_count

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert cuda_device_count() == 3  # is_available() (the runtime's cudaGetDeviceCount) would have raised
