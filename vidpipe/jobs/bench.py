"""`bench`: the same job under every (strategy, rank count) asked for, each in fresh processes, then the ratios
between runs (design §7), a table, JSON, CSV and plots. A run that fails is reported and the bench goes on;
results are written after every run, so a stopped bench keeps what it measured."""

from __future__ import annotations

from pathlib import Path

from vidpipe.bench_output import print_bench, write_csv
from vidpipe.config import BASELINE, COMPILED, BenchConfig, SimulateConfig
from vidpipe.errors import Interrupted, UsageError, VidpipeError
from vidpipe.jobs.run import place, run_with_display
from vidpipe.models.base import Sample
from vidpipe.plots import bench_plots
from vidpipe.report import run_report, stderr_console, write_json
from vidpipe.runtime.devices import DTYPES, cuda_device_count, resolve_device_type
from vidpipe.runtime.launch import under_torchrun
from vidpipe.verify import compare_finals


def plan_runs(config: BenchConfig) -> list[tuple[str, int]]:
    """The baseline first (one device), then each strategy on each rank count, fewest ranks first: the 1-rank
    run of a strategy is the one its speed-up is measured against."""
    runs = [(label, 1) for label in config.labels(BASELINE)] if BASELINE in config.compare else []
    runs += [(label, gpus) for strategy in config.strategies for label in config.labels(strategy)
             for gpus in sorted(config.gpus)]
    return runs


def split_label(label: str) -> tuple[str, bool]:
    """'dp+compile' -> ('dp', True)."""
    return label.removesuffix(COMPILED), label.endswith(COMPILED)


def skip_reason(config: BenchConfig, label: str, gpus: int, device_type: str, frames: int) -> str | None:
    strategy, _compiled = split_label(label)
    if device_type == "cuda" and gpus > cuda_device_count():
        return f"{gpus} ranks need {gpus} GPUs; this machine has {cuda_device_count()}"
    if strategy == BASELINE:
        return None if gpus == 1 else "the stock pipeline runs on one device"
    try:
        config.run_options(strategy, gpus).plan(gpus).check_job(config.total_steps, frames, guidance=True)
    except UsageError as error:  # e.g. cfg2 on 1 rank, pp4 with 2 steps: not a failure, a plan that cannot be
        return str(error).removeprefix("--strategy ")
    return None


class ModelBench:
    """Runs for a real model (SVD or Wan, by its family): the input and sample plan shared by every run, the
    reference latents kept."""

    def __init__(self, config: BenchConfig):
        from vidpipe.models.registry import family_module, resolve_model

        self.config = config
        self.source = resolve_model(config.model, config.offline, Path(config.cache_dir) if config.cache_dir else None)
        self.family = family_module(self.source.family)
        self.size = self.family.resolve_size(self.source, config.frames, config.height, config.width)
        self.params = self.family.bench_params(config.total_steps, self.size)
        image = _input_image(config.image, self.size[1], self.size[2])
        name = Path(config.image).stem if config.image else "test-card"
        self.samples = tuple(Sample(i, config.seed + i, image, name) for i in range(config.samples))
        self.reference: tuple[str, dict] | None = None  # (run name, finals)

    def shape(self) -> dict:
        return {"frames": self.size[0], "height": self.size[1], "width": self.size[2]}

    def frames(self) -> int:
        return self.size[0]

    def measure(self, label: str, gpus: int) -> dict:
        from vidpipe.jobs.diffuse_only import DiffuseJob, DiffusersBaselineJob

        config = self.config
        strategy, compiled = split_label(label)
        run = config.run_options("dp" if strategy == BASELINE else strategy, gpus)
        frames = self.size[0] if self.source.family == "svd" else None  # Wan's sp splits tokens, not frames
        placement = place(run, config.total_steps, default_gpus=gpus, frames=frames)
        if strategy == BASELINE:
            job = DiffusersBaselineJob(self.source, self.params, placement.dtype, self.samples, config.warmup_samples,
                                       compiled)
        else:
            job = DiffuseJob(self.source, self.params, placement.plan, placement.dtype, self.samples,
                             config.warmup_samples, compiled)
        result = run_with_display(job, placement, len(self.samples), config.verbose)
        report = run_report(
            "bench", config.model, label, placement.plan, placement.spec, placement.dtype, config.total_steps,
            [s.seed for s in self.samples], config.warmup_samples, result["records"],
            expert_switch=self.family.expert_switch(self.source, config.total_steps), **self.shape(),
        )
        report["compiled"] = compiled
        report.update(self._verify(f"{label} x{gpus}", result["finals"], placement))
        report["split_comm_bytes_per_step_analytic"] = self.analytic_bytes(placement)
        return report

    def analytic_bytes(self, placement) -> list[int]:
        """The family's `cost.py` figure for every rank (groups repeat), beside the measured one."""
        per_group = self.family.bytes_per_step(self.source, placement.plan, self.size,
                                               DTYPES[placement.dtype].itemsize)
        return per_group * placement.plan.groups

    def _verify(self, name: str, finals: dict, placement) -> dict:
        """Against the first successful run (the baseline, or the 1-rank run): fp32 on CPU within 1e-4."""
        if self.reference is None:
            self.reference = (name, finals)
            return {"verified": True, "verify_mode": "reference run", "verify_max_abs_diff": 0.0,
                    "verified_against": name, "mismatched_samples": []}
        exact = placement.spec.device_type == "cpu" and placement.dtype == "fp32"
        checked = compare_finals(finals, self.reference[1], "fp32" if exact else "half")
        return {**checked, "verified_against": self.reference[0]}


class DummyBench:
    """Runs for the dummy model: `simulate`'s measured run, each verified bit for bit against 1 rank."""

    def __init__(self, config: BenchConfig):
        self.config = config

    def shape(self) -> dict:
        return {"latent_shape": list(self.config.latent_shape), "step_ms": self.config.step_ms}

    def frames(self) -> int:
        return self.config.latent_shape[2]

    def measure(self, strategy: str, gpus: int) -> dict:
        from vidpipe.jobs.simulate import run_simulation

        c = self.config
        report = run_simulation(SimulateConfig(
            c.run_options(strategy, gpus), c.total_steps, c.samples, c.warmup_samples, c.latent_shape, c.step_ms,
            c.seed,
        ))
        report["command"] = "bench"
        report["verified_against"] = "1-rank recomputation"
        return report


def _input_image(path: str | None, height: int, width: int):
    from vidpipe import media

    return media.load_image(Path(path)) if path else media.test_card(width, height)


def add_ratios(runs: list[dict]) -> None:
    """Speed-up over the same strategy on 1 rank and over the baseline, and scaling efficiency (speed-up / W),
    all from throughput = samples / makespan; and latency speed-up: mean per-sample latency of the 1-GPU
    reference (dp on 1 rank when measured, else the first 1-rank run) over this run's. All measured in this
    bench's own runs."""
    done = [r for r in runs if r["status"] == "ok"]
    baseline = next((r for r in done if r["strategy"] == BASELINE), None)
    for run in done:  # per-device speed: this run's median step against the (eager) stock pipeline's
        run["step_time_vs_baseline"] = (run["step_time_s"] / baseline["step_time_s"]
                                        if baseline and baseline["step_time_s"] else None)
    one_gpu = [r for r in done if r["world_size"] == 1 and r["strategy"] != BASELINE]
    latency_reference = next((r for r in one_gpu if r["strategy"] == "dp"), one_gpu[0] if one_gpu else baseline)
    for run in done:
        reference_latency = latency_reference["latency_mean_s"] if latency_reference else None
        run["latency_speedup"] = (reference_latency / run["latency_mean_s"]
                                  if reference_latency and run["latency_mean_s"] else None)
        run["latency_reference"] = (f"{latency_reference['strategy']} x{latency_reference['world_size']}"
                                    if latency_reference else None)
        one = next((r for r in done if r["strategy"] == run["strategy"] and r["world_size"] == 1), None)
        throughput = run["throughput_samples_per_s"]
        run["time_per_sample_s"] = run["makespan_s"] / run["num_samples"] if run["num_samples"] else None
        run["speedup"] = _ratio(throughput, one)
        run["scaling_efficiency"] = run["speedup"] / run["world_size"] if run["speedup"] else None
        run["speedup_vs_baseline"] = _ratio(throughput, baseline)


def _ratio(throughput: float | None, reference: dict | None) -> float | None:
    base = reference["throughput_samples_per_s"] if reference else None
    return throughput / base if throughput and base else None


def bench(config: BenchConfig) -> dict:
    """Run `vidpipe bench`; returns {"runs": [...], ...} as written to --json."""
    if under_torchrun():
        raise UsageError("bench starts fresh processes for every run: run it directly, not under torchrun")
    device_type = resolve_device_type(config.device, 1)
    runner = DummyBench(config) if config.is_dummy else ModelBench(config)
    plan = plan_runs(config)
    summary = {
        "command": "bench", "model": config.model, "compare": list(config.compare), "gpus": list(config.gpus),
        "total_steps": config.total_steps, "num_samples": config.samples,
        "warmup_samples": config.warmup_samples, "device_type": device_type, **runner.shape(), "runs": [],
    }
    # NOTE: repeats go round robin over the configurations, not one configuration N times in a row: a shared
    # machine drifts over minutes, and the drift must hit every configuration alike, not whichever ran then.
    measured: dict[tuple[str, int], list[dict]] = {key: [] for key in plan}
    for repeat in range(config.repeats):
        for number, (strategy, gpus) in enumerate(plan, start=1):
            label = f"[{number}/{len(plan)}] {strategy} on {gpus} rank{'s' if gpus > 1 else ''}"
            if config.repeats > 1:
                label += f" (repeat {repeat + 1}/{config.repeats})"
            reports = measured[(strategy, gpus)]
            if reports and reports[-1]["status"] != "ok":  # skipped, or failed in an earlier repeat
                continue
            reason = skip_reason(config, strategy, gpus, device_type, runner.frames())
            if reason:
                stderr_console.print(f"{label}: skipped: {reason}")
                reports.append({"strategy": strategy, "world_size": gpus, "status": "skipped", "reason": reason})
                continue
            stderr_console.print(f"{label}: starting fresh processes")
            try:
                report = runner.measure(strategy, gpus)
                report.update(status="ok", reason=None)
                report.pop("samples", None)
                stderr_console.print(
                    f"{label}: {report['throughput_samples_per_s']:.3f} samples/s, verified {report['verified']}"
                )
            except Interrupted:
                raise
            except VidpipeError as error:  # a failed run is a result too: report it and go on
                stderr_console.print(f"{label}: failed: {error}")
                report = {"strategy": strategy, "world_size": gpus, "status": "failed", "reason": str(error)}
            reports.append(report)
            _publish(summary, measured, config)  # after every run: a stopped bench keeps what it measured
    runs = _publish(summary, measured, config)

    print_bench(stderr_console, summary)
    if config.plot_dir:
        for path in bench_plots(summary, Path(config.plot_dir)):
            stderr_console.print(f"plot: {path}")
    if config.json_path == "-":
        write_json(summary, "-")
    bad = [f"{r['strategy']} x{r['world_size']}" for r in runs
           if r["status"] == "failed" or (r["status"] == "ok" and not r["verified"])]
    if bad:
        raise VidpipeError(f"{len(bad)} run(s) failed or did not verify ({', '.join(bad)}): see the table above")
    return summary


def _median(reports: list[dict]) -> dict:
    """The run with the median throughput stands for its repeats; every repeat must have verified."""
    if reports[-1]["status"] != "ok":
        return reports[-1]
    throughputs = [r["throughput_samples_per_s"] for r in reports]
    median = dict(sorted(reports, key=lambda r: r["throughput_samples_per_s"])[(len(reports) - 1) // 2])
    median.update(repeats=len(reports), throughput_per_repeat=throughputs,
                  verified=all(r["verified"] for r in reports))
    return median


def _publish(summary: dict, measured: dict, config: BenchConfig) -> list[dict]:
    """Each configuration's run (the median of its repeats so far) with its ratios, into `summary` and the files."""
    summary["runs"] = [_median(reports) for reports in measured.values() if reports]
    add_ratios(summary["runs"])
    if config.json_path not in (None, "-"):
        write_json(summary, config.json_path)
    if config.csv_path:
        write_csv(summary["runs"], Path(config.csv_path))
    return summary["runs"]
