#!/usr/bin/env python3
"""The engine of `scripts/gpu-check.sh`: which steps to run on this many GPUs, running them with timeouts, and
one JSON file plus one markdown summary of what they showed.

    gpu_check.py run [OUT_DIR] [--quick] [--dry-run] [--gpus N] [--budget S] [--only REGEX] [--plan-json PATH]

A step is one command (a vidpipe command, nvidia-smi, torchrun, or one of this file's own checks below) with its
own timeout, log and, where it writes one, JSON report. A step that needs more GPUs than there are is skipped
with the reason; a failed step is recorded and the next one runs; the JSON and the markdown are rewritten after
every step, so a run stopped from outside keeps what it measured. The checks that are more than one command run
as this file's subcommands (in their own process, under the same timeout): `versions`, `compare-latents`,
`serve-check`, `fault-check`.

Only the standard library is imported to plan; psutil, httpx, torch and safetensors (the project's venv) are
imported by the steps that use them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE = "examples/sunset.png"
#: Set on every process a step starts (inherited by its children), so that what is left afterwards can be found.
MARKER = "VIDPIPE_GPU_CHECK"
QUICK_BUDGET_S = 480  # the quick run must end well inside a lent machine's 10-minute command limit
FULL_BUDGET_S = 4 * 3600
MIN_START_S = 20  # no step starts with less of the budget left than this
GRACE_S = 10  # after a step: how long its processes get to exit before they count as left behind
MEMORY_KEYS = ("peak_memory_gb_per_rank", "peak_reserved_gb_per_rank", "driver_memory_gb_per_rank")
RUN_KEYS = (
    "plan", "strategy", "world_size", "status", "reason", "device", "backend", "dtype", "verified",
    "verify_max_abs_diff", "first_sample_time_s", "latency_mean_s", "step_time_s", "step_time_vs_baseline",
    "throughput_samples_per_s", "speedup", "latency_speedup", "compiled", "compile_s_per_rank", "repeats",
    "throughput_per_repeat", "launch_to_first_step_s", "peak_memory_kind", *MEMORY_KEYS,
)

# (plan, GPUs it is run on, in --quick): `generate` end to end, each plan on the fewest GPUs that make it that plan.
GENERATE_PLANS = (
    ("dp", 1, True), ("pp2", 2, False), ("cfg2", 2, False), ("sp2", 2, True), ("fsdp", 2, False),
    ("fsdp.sp2", 2, False), ("cfg2.sp2", 4, True), ("pp2.cfg2", 4, False), ("sp4.fsdp", 4, False),
    ("pp2.cfg2.sp2", 8, False), ("cfg2.sp4", 8, False), ("dp2.cfg2.sp2", 8, False),
)
SERVE_PLANS = (("dp", 1, True), ("dp2", 2, False), ("pp2", 2, True), ("cfg2", 2, False))
# `simulate` over NCCL: every plan, on the most GPUs it fits (the stand-in UNet: no weights, real collectives).
SIMULATE_PLANS = ("dp", "pp", "fsdp", "cfg2", "sp2", "cfg2.sp2", "pp2.cfg2", "dp2.cfg2", "sp4.fsdp", "cfg2.sp4",
                  "pp2.cfg2.sp2")
TINY = ("--model", "tiny", "--steps", "4", "--frames", "8")
SVD_XT_SIZE = ("--frames", "25", "--height", "576", "--width", "1024")


# ---------------------------------------------------------------------------------------------------- the plan


def plan_fits(plan: str, gpus: int) -> bool:
    """Whether `plan` runs on `gpus` ranks, by vidpipe's rule (parallel/plan.py): a degree-less sample axis takes
    the ranks left over. fsdp alone needs 2 ranks here (on one it shards nothing)."""
    degrees = {axis: int(digits) if digits else None
               for axis, digits in (re.fullmatch(r"([a-z]+)(\d*)", part).groups() for part in plan.split("."))}
    cfg, sp = (2 if "cfg" in degrees else 1), degrees.get("sp") or 1
    sample = degrees.get("pp") or degrees.get("dp")
    if "fsdp" in degrees and cfg * sp == 1:
        shard = degrees["fsdp"]
        if shard is None:
            groups = sample or 1
            return gpus % groups == 0 and gpus // groups >= 2
        return gpus == (sample or 1) * shard if sample else gpus % shard == 0
    group = cfg * sp
    return gpus == sample * group if sample else gpus % group == 0


def min_gpus(plan: str) -> int:
    return next(n for n in range(1, 65) if plan_fits(plan, n))


def most_gpus(plan: str, gpus: int) -> int | None:
    """The most of `gpus` GPUs that `plan` runs on, or None."""
    return next((n for n in range(gpus, 0, -1) if plan_fits(plan, n)), None)


@dataclass
class Step:
    """One command of the check. `what` names it in a skip reason ("cfg2.sp2 needs 4 GPUs, 1 visible")."""

    name: str
    group: str
    gpus: int
    timeout_s: float
    argv: list[str]
    what: str = ""
    quick: bool = False
    env: dict[str, str] = field(default_factory=dict)
    report: str | None = None  # the JSON report the step writes
    stdout_to: str | None = None  # stdout goes here instead of the log
    vidpipe_commands: list[list[str]] = field(default_factory=list)  # every vidpipe command line it runs
    workdir: str | None = None  # its output folder, emptied before it runs
    expect_mp4: str | None = None  # a folder that must hold non-empty MP4 files afterwards
    skip_reason: str | None = None
    log: str = ""  # its output (set by build_steps: OUT/NAME.log)


@dataclass(frozen=True)
class Context:
    """What the plan depends on: the machine, the mode and the tools."""

    gpus: int
    quick: bool
    out: Path
    python: list[str]
    vidpipe: list[str]
    torchrun: list[str]
    device: str = "cuda"
    dist_timeout: bool = False  # `generate --help` shows --dist-timeout
    doctor_json_takes_path: bool = True

    def path(self, name: str) -> str:
        return rel(self.out / name)


def rel(path: Path | str) -> str:
    """`path` as the steps see it: relative to the repository (their working directory) when inside it."""
    path = Path(path)
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def needs(what: str, gpus: int, visible: int) -> str:
    return f"{what} needs {gpus} GPU{'s' if gpus != 1 else ''}, {visible} visible"


def build_steps(ctx: Context, only: str | None = None) -> list[Step]:
    """Every step, in the order they run, with the reason for each one that will not run. The order is the quick
    run's priority: the cheap essentials, then SVD-XT against the stock pipeline (the figure a GPU is lent for),
    then what a budget cut loses least; the full run's long steps last."""
    steps = [*version_steps(ctx), *generate_steps(ctx), *dtype_steps(ctx), *serve_steps(ctx), *fault_steps(ctx),
             *torchrun_steps(ctx), svd_xt_bench_step(ctx), nccl_debug_step(ctx), bench_repeats_step(ctx),
             *split_plan_steps(ctx), memory_probe_step(ctx), *simulate_steps(ctx)]
    for step in steps:
        step.log = ctx.path(f"{step.name}.log")
        if step.gpus > ctx.gpus:
            step.skip_reason = needs(step.what or step.name, step.gpus, ctx.gpus)
        elif ctx.quick and not step.quick:
            step.skip_reason = "full run only (not in --quick)"
        elif only and not re.search(only, step.name):
            step.skip_reason = f"not selected (--only {only})"
    names = [step.name for step in steps]
    assert len(names) == len(set(names)), "step names must be unique"
    return steps


def vidpipe_step(ctx: Context, name: str, group: str, gpus: int, timeout_s: float, args: list[str],
                 **kwargs) -> Step:
    return Step(name, group, gpus, timeout_s, [*ctx.vidpipe, *args], vidpipe_commands=[args], **kwargs)


def helper(ctx: Context, *args: str) -> list[str]:
    """A command line running one of this file's subcommands with the project's Python."""
    return [*ctx.python, rel(Path(__file__)), *args]


def version_steps(ctx: Context) -> list[Step]:
    report = ctx.path("doctor.json")
    doctor = ["doctor", "--json", report] if ctx.doctor_json_takes_path else ["doctor", "--json"]
    return [
        Step("versions", "versions", 0, 120, helper(ctx, "versions", "--device", ctx.device, "--json",
                                                        ctx.path("versions.json")),
             quick=True, report=ctx.path("versions.json")),
        Step("topology", "versions", 0, 30, ["nvidia-smi", "topo", "-m"], quick=True,
             stdout_to=ctx.path("topology.txt")),
        vidpipe_step(ctx, "doctor", "versions", 0, 120, doctor, quick=True, report=report,
                     stdout_to=None if ctx.doctor_json_takes_path else report),
    ]


def generate_args(ctx: Context, plan: str, gpus: int | None, out: str, *extra: str) -> list[str]:
    """`generate` of the test image into `out` (MP4 and latents) with its report at OUT.json; gpus None: under
    torchrun, whose world size is the rank count."""
    ranks = ["--gpus", str(gpus)] if gpus is not None else []
    return ["generate", IMAGE, *ranks, "--strategy", plan, "--device", ctx.device, "--seed", "0", "--format",
            "mp4", "--save-latents", "--overwrite", "--out", out, "--json", f"{out}.json", *extra]


def generate_steps(ctx: Context) -> list[Step]:
    """Every plan through diffusion, decode and MP4 files (tiny model), then each one's latents against 1 rank."""
    steps = []
    for plan, gpus, quick in GENERATE_PLANS:
        out = ctx.path(f"generate-{plan}")
        steps.append(vidpipe_step(ctx, f"generate-{plan}", "generate", gpus, 240,
                                  generate_args(ctx, plan, gpus, out, *TINY, "--samples", "2"),
                                  what=plan, quick=quick, report=f"{out}.json", workdir=out, expect_mp4=out))
    compared = [f"{plan}={ctx.path(f'generate-{plan}')}" for plan, gpus, quick in GENERATE_PLANS[1:]
                if gpus <= ctx.gpus and (quick or not ctx.quick)]
    steps.append(Step("generate-compare", "generate", 2, 120,
                      helper(ctx, "compare-latents", "--json", ctx.path("generate-compare.json"), "--tolerance",
                             "0.05", "--reference", ctx.path("generate-dp"), *compared),
                      what="comparing plans with 1 rank", quick=True, report=ctx.path("generate-compare.json")))
    return steps


def dtype_steps(ctx: Context) -> list[Step]:
    """fp32, fp16 and bf16 of the same sample (the 62 M-parameter small SVD), then their latents compared."""
    steps = []
    for dtype, quick in (("fp32", True), ("fp16", True), ("bf16", False)):
        out = ctx.path(f"dtype-{dtype}")
        steps.append(vidpipe_step(ctx, f"dtype-{dtype}", "dtype", 1, 240,
                                  generate_args(ctx, "dp", 1, out, "--model", "small", "--steps", "8", "--dtype",
                                                dtype),
                                  quick=quick, report=f"{out}.json", workdir=out, expect_mp4=out))
    compared = [f"{d}={ctx.path(f'dtype-{d}')}" for d in ("fp16", "bf16") if d == "fp16" or not ctx.quick]
    steps.append(Step("dtype-compare", "dtype", 1, 120,
                      helper(ctx, "compare-latents", "--json", ctx.path("dtype-compare.json"), "--reference",
                             ctx.path("dtype-fp32"), *compared),
                      quick=True, report=ctx.path("dtype-compare.json")))
    return steps


def serve_steps(ctx: Context) -> list[Step]:
    """A warm server per plan: one job cancelled while it runs, one submitted and finished, then SIGTERM."""
    steps = []
    for plan, gpus, quick in SERVE_PLANS:
        name = f"serve-{plan}{gpus if plan == 'dp' else ''}"
        out = ctx.path(name)
        serve = ["serve", "--model", "tiny", "--gpus", str(gpus), "--strategy", plan, "--device", ctx.device,
                 "--host", "127.0.0.1", "--port", "0", "--out", out]
        submit = ["submit", IMAGE, "--server", "{url}", "--steps", "4", "--frames", "8", "--samples", "1",
                  "--out", f"{out}/downloads"]
        argv = helper(ctx, "serve-check", "--json", f"{out}.json", "--vidpipe", shlex.join(ctx.vidpipe),
                      "--submit", json.dumps(submit), "--", *serve)
        steps.append(Step(name, "serve", gpus, 300, argv, what=f"serve {plan}", quick=quick,
                          report=f"{out}.json", vidpipe_commands=[serve, submit], workdir=out))
    return steps


def fault_steps(ctx: Context) -> list[Step]:
    """A rank that raises, or is SIGKILLed, in the middle of a step: the run must end soon, name it, leave
    nothing. Steps of the small SVD at 576 x 1024 last long enough on a GPU to be hit mid-run."""
    size = ["--height", "576", "--width", "1024"] if ctx.device == "cuda" else []  # the CPU: seconds per step
    extra = ["--model", "small", "--steps", "200", "--frames", "14", *size, "--samples", "1", "--verbose",
             "--stall-timeout", "60"]
    if ctx.dist_timeout:
        extra += ["--dist-timeout", "30"]
    steps = []
    for name, plan, gpus, kind, rank, quick in (("fault-raise-1rank", "dp", 1, "raise", 0, True),
                                                  ("fault-raise-sp2", "sp2", 2, "raise", 1, True),
                                                  ("fault-kill-sp2", "sp2", 2, "kill", 1, True)):
        out = ctx.path(name)
        run = generate_args(ctx, plan, gpus, out, *extra)
        run[run.index("--json") + 1] = f"{out}.run.json"
        argv = helper(ctx, "fault-check", "--json", f"{out}.json", "--kind", kind, "--rank", str(rank),
                      "--fault-step", "3", "--vidpipe", shlex.join(ctx.vidpipe), "--", *run)
        steps.append(Step(name, "faults", gpus, 240, argv, what=f"a fault in {plan}", quick=quick,
                          report=f"{out}.json", vidpipe_commands=[run], workdir=out))
    return steps


def torchrun_steps(ctx: Context) -> list[Step]:
    steps = []
    for gpus, plan, quick in ((1, "dp", True), (2, "sp2", True), (4, "cfg2.sp2", False)):
        out = ctx.path(f"torchrun-{gpus}")
        run = generate_args(ctx, plan, None, out, *TINY)
        argv = [*ctx.torchrun, "--standalone", "--nproc-per-node", str(gpus), "-m", "vidpipe", *run]
        steps.append(Step(f"torchrun-{gpus}", "torchrun", gpus, 240, argv, what=f"torchrun {plan}", quick=quick,
                          report=f"{out}.json", vidpipe_commands=[run], workdir=out, expect_mp4=out))
    return steps


def nccl_debug_step(ctx: Context) -> Step:
    gpus, plan = (2, "sp2") if ctx.gpus >= 2 else (1, "dp")
    report = ctx.path("nccl-debug.json")
    args = ["simulate", "--gpus", str(gpus), "--strategy", plan, "--steps", "8", "--samples", "4", "--device",
            ctx.device, "--json", report]
    return vidpipe_step(ctx, "nccl-debug", "nccl-debug", gpus, 240, args, quick=True, report=report,
                        env={"NCCL_DEBUG": "INFO"})


def gpu_list(ctx: Context, counts: tuple[int, ...] = (1, 2, 4, 8)) -> str:
    """The GPU counts a bench or probe compares: those of `counts` this machine has."""
    return ",".join(str(n) for n in counts if n <= max(ctx.gpus, 1))


def most(gpus: str, at_least: int = 1) -> int:
    """The GPUs a step given `--gpus LIST` uses (at least `at_least`: what it needs to be worth running)."""
    return max(at_least, *(int(n) for n in gpus.split(",")))


def bench_repeats_step(ctx: Context) -> Step:
    report = ctx.path("bench-repeats.json")
    gpus = "1" if ctx.quick else gpu_list(ctx)
    shape = ["--compare", "dp", "--samples", "2", "--steps", "10"] if ctx.quick else \
        ["--compare", "dp,pp", "--samples", "8", "--steps", "25"]
    args = ["bench", "--model", "small", *shape, "--gpus", gpus, "--warmup-samples", "1", "--repeats", "3",
            "--device", ctx.device, "--json", report, "--csv", ctx.path("bench-repeats.csv")]
    return vidpipe_step(ctx, "bench-repeats", "bench", most(gpus), 180 if ctx.quick else 1800, args,
                        quick=True, report=report)


def svd_xt_bench_step(ctx: Context) -> Step:
    """The full-size SVD-XT (random weights) on 1 GPU against the stock pipeline; the full run adds compiled."""
    report = ctx.path("svd-xt-bench.json")
    warmup, compile_mode = ("0", "off") if ctx.quick else ("1", "both")
    args = ["bench", "--model", "svd-xt-random", "--compare", "diffusers,dp", "--gpus", "1", *SVD_XT_SIZE,
            "--steps", "25", "--samples", "1", "--warmup-samples", warmup, "--compile", compile_mode, "--device",
            ctx.device, "--json", report, "--csv", ctx.path("svd-xt-bench.csv")]
    return vidpipe_step(ctx, "svd-xt-bench", "svd-xt", 1, 300 if ctx.quick else 2400, args, quick=True,
                        report=report)


def split_plan_steps(ctx: Context) -> list[Step]:
    """The latency plans, compiled (small SVD) and on SVD-XT, on as many GPUs as there are."""
    plans = ["dp", "cfg2", "sp2"] + (["cfg2.sp2"] if ctx.gpus >= 4 else []) + (["cfg2.sp4"] if ctx.gpus >= 8 else [])
    gpus, compiled_gpus = gpu_list(ctx), gpu_list(ctx, (1, 2, 4))
    compiled = ["bench", "--model", "small", "--compare", ",".join(plans[:4]), "--gpus", compiled_gpus,
                "--samples", "1", "--warmup-samples", "1", "--steps", "10", "--compile", "both", "--device",
                ctx.device, "--json", ctx.path("compile-split.json"), "--csv", ctx.path("compile-split.csv")]
    latency = ["bench", "--model", "svd-xt-random", "--compare", ",".join(plans), "--gpus", gpus, *SVD_XT_SIZE,
               "--steps", "10", "--samples", "1", "--warmup-samples", "1", "--device", ctx.device, "--json",
               ctx.path("svd-xt-latency.json"), "--csv", ctx.path("svd-xt-latency.csv"), "--plot",
               ctx.path("plots")]
    return [
        vidpipe_step(ctx, "compile-split", "compile", most(compiled_gpus, 2), 2400, compiled,
                     what="compiled cfg2/sp2", report=ctx.path("compile-split.json")),
        vidpipe_step(ctx, "svd-xt-latency", "svd-xt", most(gpus, 2), 2400, latency, what="SVD-XT on cfg2/sp2",
                     report=ctx.path("svd-xt-latency.json")),
    ]


def memory_probe_step(ctx: Context) -> Step:
    plans = "pp,fsdp,sp2,cfg2.sp2.fsdp" if ctx.gpus >= 2 else "pp,fsdp"
    report, gpus = ctx.path("memory-probe.json"), gpu_list(ctx, (1, 2, 4))
    args = ["memory-probe", "--model", "svd-xt-random", "--strategy", plans, "--gpus", gpus,
            "--frames", "14,25", "--size", "576x1024", "--device", ctx.device, "--json", report]
    return vidpipe_step(ctx, "memory-probe", "svd-xt", most(gpus), 2400, args, report=report)


def simulate_steps(ctx: Context) -> list[Step]:
    steps = []
    for plan in SIMULATE_PLANS:
        gpus = most_gpus(plan, ctx.gpus) or min_gpus(plan)
        report = ctx.path(f"simulate-{plan}.json")
        args = ["simulate", "--gpus", str(gpus), "--strategy", plan, "--steps", "8", "--samples", "8", "--device",
                ctx.device, "--json", report]
        steps.append(vidpipe_step(ctx, f"simulate-{plan}", "simulate", gpus, 300, args, what=plan,
                                  report=report))
    return steps


# ------------------------------------------------------------------------------------------ running the steps


def help_options(command: list[str]) -> dict[str, bool] | None:
    """`vidpipe SUBCOMMAND --help` -> {option: takes a value}, or None when the command fails (e.g. absent)."""
    try:
        done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO,
                              env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    options = {}
    for line in done.stdout.splitlines():
        row = re.match(r"^[^-\w]{1,3}(-[-\w]+(?:[ ,]+-[-\w]+)*)\s+(<[^>]+>|[A-Z]+)?", line)
        if not row:
            continue
        takes_value = bool(row.group(2)) and row.group(2).lower() not in ("<bool>", "")
        for name in re.findall(r"--[\w-]+", row.group(1)):
            options[name] = takes_value and not name.startswith("--no-")
    return options


def processes_marked(marker: str, variable: str = MARKER) -> list:
    """Live processes (no zombies) whose environment has `variable`=`marker`."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if (process.pid != os.getpid() and process.environ().get(variable) == marker
                    and process.status() != psutil.STATUS_ZOMBIE):
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def reap_leftovers(marker: str, variable: str = MARKER) -> list[str]:
    """'name (pid)' of each process still marked after GRACE_S; each is SIGKILLed (they are ours)."""
    try:
        import psutil
    except ImportError:
        return []
    deadline = time.monotonic() + GRACE_S
    left = processes_marked(marker, variable)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_marked(marker, variable)
    names = []
    for process in left:
        try:
            names.append(f"{process.name()} ({process.pid})")
            process.kill()
        except psutil.Error:  # it went away meanwhile
            continue
    psutil.wait_procs(left, timeout=5)
    return names


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the step's session, SIGKILL what is left after a few seconds."""
    for signum, wait_s in ((signal.SIGTERM, 8), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def record_of(step: Step) -> dict:
    return {"name": step.name, "group": step.group, "command": shlex.join(step.argv), "gpus": step.gpus,
            "timeout_s": step.timeout_s, "status": "skipped" if step.skip_reason else "planned",
            "reason": step.skip_reason, "seconds": None, "exit_code": None, "log": step.log, "report": step.report,
            "env": step.env or None, "figures": {}}


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _unblock_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def run_step(step: Step, timeout_s: float, run_id: str) -> dict:
    """Run one step under `timeout_s`; its record: status ok/failed, reason, seconds, exit code, figures."""
    record = record_of(step)
    log = REPO / step.log
    if step.workdir:
        shutil.rmtree(REPO / step.workdir, ignore_errors=True)
    if step.report:
        (REPO / step.report).unlink(missing_ok=True)
    marker = f"{run_id}-{step.name}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", MARKER: marker, **step.env}
    problems, started, process = [], time.monotonic(), None
    with log.open("w") as log_file:
        stdout = (REPO / step.stdout_to).open("w") if step.stdout_to else log_file
        try:
            # NOTE: SIGINT/SIGTERM wait until Popen has returned, so that the except below can stop what it started;
            # the child unblocks them before it runs the command (a signal mask is inherited, even across exec).
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                process = subprocess.Popen(step.argv, stdout=stdout, stderr=log_file if step.stdout_to else
                                           subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True,
                                           preexec_fn=_unblock_stop_signals)
            except OSError as error:
                problems = [f"cannot start {step.argv[0]}: {error.strerror or error}"]
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            code = process.wait(timeout_s) if process else 127
        except subprocess.TimeoutExpired:
            stop_group(process)
            code = 124
            problems.append(f"timed out after {timeout_s:.0f} s")
        except BaseException:  # Ctrl-C or SIGTERM: stop the step's processes, then let the run end
            if process is not None:
                stop_group(process)
            raise
        finally:
            if step.stdout_to:
                stdout.close()
    record["seconds"] = round(time.monotonic() - started, 2)
    record["exit_code"] = code
    left = reap_leftovers(marker)
    if left:
        problems.append(f"{len(left)} process(es) left behind: {', '.join(left)}")
    record["figures"] = step_figures(step, log)
    if step.expect_mp4:
        problems += mp4_problems(REPO / step.expect_mp4, record["figures"])
    if code not in (0, 124) and not any(p.startswith("cannot start") for p in problems):
        problems.insert(0, f"exit {code}: {last_error(log)}")
    record["status"] = "failed" if problems else "ok"
    record["reason"] = "; ".join(problems) or None
    return record


def last_error(log: Path) -> str:
    """The one-line error of a failed command: vidpipe's `vidpipe: error:` line, or this file's checks'
    `gpu-check: failed:` line, else its last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith(("vidpipe: error:", "gpu-check: failed:"))]
    return (errors or lines or ["no output"])[-1][:400]


def mp4_problems(folder: Path, figures: dict) -> list[str]:
    videos = sorted(folder.glob("**/*.mp4"))
    figures["mp4_files"] = len(videos)
    figures["mp4_bytes"] = [video.stat().st_size for video in videos]
    if not videos:
        return [f"no MP4 file in {rel(folder)}"]
    empty = [video.name for video in videos if video.stat().st_size == 0]
    return [f"empty MP4 file(s): {', '.join(empty)}"] if empty else []


# ------------------------------------------------------------------------------------ figures from the reports


def pick(source: dict, keys: tuple[str, ...]) -> dict:
    return {key: source[key] for key in keys if key in source}


def figures_from_report(report: dict) -> dict:
    """The figures worth a summary from a vidpipe JSON report (generate, simulate, bench, memory-probe); any other
    report (this file's checks, doctor) is kept whole."""
    command = report.get("command")
    if command == "bench":
        return {"runs": [pick(run, RUN_KEYS) for run in report.get("runs", [])]}
    if command == "memory-probe":
        keys = ("strategy", "world_size", "frames", "height", "width", "status", "fits", "peak_memory_gb",
                "peak_memory_kind", "reason", *MEMORY_KEYS)
        return {"rows": [pick(row, keys) for row in report.get("rows", [])], "search": report.get("search", [])}
    if command in ("generate", "simulate"):
        return pick(report, RUN_KEYS)
    return report


def nccl_lines(log_text: str, limit: int = 24) -> dict:
    """NCCL's version and how its ranks connect (transport lines), from an NCCL_DEBUG=INFO log."""
    version = re.search(r"NCCL version (\S+)", log_text)
    transport = []
    for line in log_text.splitlines():
        if "NCCL INFO" not in line:
            continue
        text = line.split("NCCL INFO", 1)[1].strip()
        if re.search(r" via |NET/|Using network|NVLS|CollNet|P2P plugin|Connected all", text) and \
                text not in transport:
            transport.append(text)
    return {"nccl_version_line": version.group(0) if version else None, "nccl_transport_lines": transport[:limit],
            "nccl_info_lines": sum("NCCL INFO" in line for line in log_text.splitlines())}


def step_figures(step: Step, log: Path) -> dict:
    figures: dict = {}
    if step.report and (REPO / step.report).is_file():
        try:
            figures = figures_from_report(json.loads((REPO / step.report).read_text()))
        except (OSError, ValueError) as error:
            figures = {"report_error": f"cannot read {step.report}: {error}"}
    if step.stdout_to and not step.report:
        figures["output"] = (REPO / step.stdout_to).read_text(errors="replace")[-4000:]
    if step.env.get("NCCL_DEBUG"):
        figures.update(nccl_lines(log.read_text(errors="replace")))
    return figures


# ---------------------------------------------------------------------------------------- the JSON and markdown


def new_results(ctx: Context, budget_s: float, dry_run: bool, gpus_source: str) -> dict:
    return {
        "gpu_check": 1, "started_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "finished_at": None, "host": socket.gethostname(), "mode": "quick" if ctx.quick else "full",
        "dry_run": dry_run, "device": ctx.device, "gpus_visible": ctx.gpus, "gpus_source": gpus_source,
        "budget_s": budget_s, "seconds": None, "out_dir": str(ctx.out), "environment": {}, "steps": [],
        "counts": {}, "exit_code": None,
    }


def finish_results(results: dict, seconds: float) -> dict:
    """Counts and the exit code: 0 when every step that ran passed (skipped ones do not count), else 1."""
    statuses = [step["status"] for step in results["steps"]]
    results["counts"] = {status: statuses.count(status) for status in ("ok", "failed", "skipped")}
    results["seconds"] = round(seconds, 1)
    results["finished_at"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    results["exit_code"] = 1 if "failed" in statuses or "planned" in statuses else 0
    versions = next((s for s in results["steps"] if s["name"] == "versions" and s["status"] == "ok"), None)
    if versions:
        results["environment"] = versions["figures"]
    return results


def write_results(results: dict, out: Path) -> tuple[Path, Path]:
    """gpu-check.json and summary.md in `out` (each written whole, then renamed into place)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "gpu-check.json", out / "summary.md"
    texts = json.dumps(results, indent=2, default=str) + "\n", render_markdown(results)
    for path, text in zip(paths, texts, strict=True):
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text)
        temporary.replace(path)
    return paths


def _num(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value else f"{value:.{digits}f}"
    return str(value)


def _max(values) -> float | None:
    values = [v for v in values or [] if isinstance(v, (int, float))]
    return max(values) if values else None


def _run_line(run: dict) -> str:
    label = f"{run.get('strategy') or run.get('plan')} x{run.get('world_size')}"  # bench: 'dp+compile'
    if run.get("status") not in (None, "ok"):
        return f"{label}: {run['status']}" + (f" ({run['reason']})" if run.get("reason") else "")
    parts = [f"step {_num(run.get('step_time_s'), 3)} s"]
    if run.get("step_time_vs_baseline") is not None:
        parts.append(f"{_num(run['step_time_vs_baseline'])}x stock's step")
    if run.get("latency_mean_s") is not None:
        parts.append(f"latency {_num(run['latency_mean_s'])} s")
    if run.get("throughput_samples_per_s") is not None:
        parts.append(f"{_num(run['throughput_samples_per_s'], 3)} samples/s")
    if run.get("verified") is not None:
        parts.append(f"verified {_num(run['verified'])}")
    if run.get("verify_max_abs_diff") is not None:
        parts.append(f"max diff {_num(run['verify_max_abs_diff'], 2)}")
    if run.get("repeats", 1) > 1:
        parts.append(f"{run['repeats']} repeats")
    return f"{label}: " + ", ".join(parts)


def short_figures(record: dict) -> str:
    """A step's figures in one table cell."""
    figures = record.get("figures") or {}
    name = record["name"]
    if name == "versions":
        gpus = figures.get("gpus") or []
        return (f"{len(gpus)} x {gpus[0]['name'] if gpus else '?'}, driver {figures.get('driver')}, torch "
                f"{figures.get('torch')}, CUDA {figures.get('torch_cuda')}, NCCL {figures.get('nccl')}, diffusers "
                f"{figures.get('diffusers')}")
    if "runs" in figures:
        return "; ".join(_run_line(run) for run in figures["runs"])
    if "rows" in figures:
        fits = sum(row.get("fits") is True for row in figures["rows"])
        return f"{fits} of {len(figures['rows'])} configurations fit"
    if "compared" in figures:
        compared = {key: c for key, c in figures["compared"].items() if c.get("files")}
        text = "; ".join(f"{key}: max diff {_num(c['max_abs_diff'], 2)} (relative {_num(c['relative_diff'], 2)}), "
                         f"NaN {c['nan']}" for key, c in compared.items())
        missing = [key for key in figures["compared"] if key not in compared]
        return text + (f"; no latents from {', '.join(missing)}" if missing else "")
    if "checks" in figures and isinstance(figures["checks"], dict):  # this file's serve and fault checks
        failed = [key for key, passed in figures["checks"].items() if passed is not True]
        scalars = [f"{key} {_num(value)}" for key, value in figures.get("summary", {}).items()
                   if isinstance(value, (int, float, str))]
        return ", ".join(scalars + [f"failed checks: {', '.join(failed)}"] * bool(failed))
    if "checks" in figures and isinstance(figures["checks"], list):  # vidpipe doctor
        statuses = [check.get("status") for check in figures["checks"] if isinstance(check, dict)]
        return ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    parts = []
    if "plan" in figures:
        parts.append(_run_line(figures))
    if "mp4_files" in figures:
        parts.append(f"{figures['mp4_files']} MP4 ({sum(figures.get('mp4_bytes', []))} B)")
    if (record.get("env") or {}).get("NCCL_DEBUG"):
        parts.append(figures.get("nccl_version_line") or "no NCCL version line in the log")
    return "; ".join(parts)


def memory_rows(results: dict) -> list[tuple]:
    """(step, plan, GPUs, allocated, reserved, driver): the max over ranks of each, where a report has them."""
    rows = []
    for record in results["steps"]:
        figures = record.get("figures") or {}
        for run in figures.get("runs") or ([figures] if "peak_memory_gb_per_rank" in figures else []):
            if "peak_memory_gb_per_rank" not in run:
                continue
            rows.append((record["name"], run.get("strategy") or run.get("plan"), run.get("world_size"),
                         *(_max(run.get(key)) for key in MEMORY_KEYS), run.get("peak_memory_kind")))
    return rows


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(results: dict) -> str:
    env = results.get("environment") or {}
    gpus = env.get("gpus") or []
    counts = results.get("counts") or {}
    lines = [
        f"# gpu-check {results['started_at'][:10]} ({results['mode']}, {results['gpus_visible']} GPU(s) visible)",
        "",
        f"Host {results['host']}; {len(gpus)} x {gpus[0]['name'] if gpus else 'GPU ?'}; driver "
        f"{env.get('driver', '?')}; torch {env.get('torch', '?')}, CUDA {env.get('torch_cuda', '?')}, NCCL "
        f"{env.get('nccl', '?')}, diffusers {env.get('diffusers', '?')}.",
        f"{len(results['steps'])} steps: {counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed, "
        f"{counts.get('skipped', 0)} skipped, in {_num(results.get('seconds'), 1)} s (budget "
        f"{results['budget_s']:.0f} s). Every figure and command: `gpu-check.json`; each step's log beside it.",
        "",
        "| # | step | GPUs | status | s | figures, or why not |",
        "|---|---|---|---|---|---|",
    ]
    skipped: dict[str, list[str]] = {}
    for number, record in enumerate(results["steps"], start=1):
        if record["status"] == "skipped":
            skipped.setdefault(record["reason"] or "", []).append(record["name"])
            continue
        status = {"failed": "**FAILED**"}.get(record["status"], record["status"])
        detail = record["reason"] if record["status"] != "ok" else short_figures(record)
        if record["status"] == "failed" and short_figures(record):
            detail = f"{record['reason']} ({short_figures(record)})"
        lines.append(f"| {number} | {record['name']} | {record['gpus']} | {status} | {_num(record['seconds'], 1)} "
                     f"| {_cell(detail or '')} |")
    if skipped:
        lines += ["", "Skipped:"] + [f"- {', '.join(names)}: {reason}" for reason, names in skipped.items()]
    memory = memory_rows(results)
    if memory:
        lines += ["", "## Peak memory per rank (GB, the largest rank)", "",
                  "| step | plan | GPUs | allocated | reserved | driver | kind |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {' | '.join(_cell(_num(v)) for v in row)} |" for row in memory]
    nccl = next((r["figures"] for r in results["steps"] if (r.get("figures") or {}).get("nccl_info_lines")), None)
    if nccl:
        lines += ["", "## NCCL (NCCL_DEBUG=INFO)", "", f"- {nccl.get('nccl_version_line') or 'no version line'}"]
        lines += [f"- `{line}`" for line in nccl.get("nccl_transport_lines", [])]
    topology = next((r["figures"].get("output") for r in results["steps"]
                     if r["name"] == "topology" and r["status"] == "ok"), None)
    if topology:
        lines += ["", "## nvidia-smi topo -m", "", "```", topology.rstrip(), "```"]
    failed = [r for r in results["steps"] if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed", ""]
        lines += [f"- {r['name']}: {r['reason']} (log `{r['log']}`)" for r in failed]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ the run


def visible_gpus() -> int:
    """GPUs nvidia-smi lists, narrowed by CUDA_VISIBLE_DEVICES; 0 without a driver."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    count = sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip()]))
    return count


def default_out() -> Path:
    return REPO / "docs" / "results" / f"gpu-{datetime.date.today().isoformat()}"


def tools() -> tuple[list[str], list[str], list[str]]:
    """(python, vidpipe, torchrun) command prefixes: the venv's, or $PYTHON / $VIDPIPE / $TORCHRUN."""
    venv = REPO / ".venv" / "bin"
    python = shlex.split(os.environ.get("PYTHON", "")) or [rel(venv / "python") if (venv / "python").exists()
                                                           else sys.executable]
    vidpipe = shlex.split(os.environ.get("VIDPIPE", "")) or [rel(venv / "vidpipe")]
    torchrun = shlex.split(os.environ.get("TORCHRUN", "")) or [rel(venv / "torchrun")]
    return python, vidpipe, torchrun


def make_context(args) -> tuple[Context, str]:
    python, vidpipe, torchrun = tools()
    gpus, source = (args.gpus, "--gpus") if args.gpus is not None else (visible_gpus(), "nvidia-smi")
    out = Path(args.out_dir).absolute() if args.out_dir else default_out()
    generate = help_options([*vidpipe, "generate"]) or {}
    doctor = help_options([*vidpipe, "doctor"])
    ctx = Context(gpus=gpus, quick=args.quick, out=out, python=python, vidpipe=vidpipe, torchrun=torchrun,
                  device=args.device, dist_timeout="--dist-timeout" in generate,
                  doctor_json_takes_path=doctor is None or doctor.get("--json", True))
    return ctx, source


def print_plan(ctx: Context, steps: list[Step], budget_s: float, source: str) -> None:
    mode = "quick" if ctx.quick else "full"
    print(f"gpu-check plan ({mode}): {ctx.gpus} GPU(s) ({source}), device {ctx.device}, budget {budget_s:.0f} s, "
          f"results in {rel(ctx.out)}")
    for step in steps:
        if step.skip_reason:
            print(f"[skip] {step.group:<10} {step.name}: {step.skip_reason}")
        else:
            env = "".join(f"{key}={value} " for key, value in step.env.items())
            print(f"[run ] {step.group:<10} {step.name} ({step.gpus} GPU(s), timeout {step.timeout_s:.0f} s)\n"
                  f"         {env}{shlex.join(step.argv)}")
    running = [step for step in steps if not step.skip_reason]
    print(f"{len(running)} steps to run (timeouts add up to {sum(s.timeout_s for s in running):.0f} s; the budget "
          f"of {budget_s:.0f} s stops what is left), {len(steps) - len(running)} skipped")


def command_run(args) -> int:
    ctx, source = make_context(args)
    if not args.dry_run and ctx.device == "cuda":
        visible = visible_gpus() if source == "--gpus" else ctx.gpus
        if visible == 0:
            print("gpu-check: no CUDA GPU visible (nvidia-smi); nothing to check here (--dry-run --gpus N shows "
                  "the plan)", file=sys.stderr)
            return 2
        if ctx.gpus > visible:
            print(f"gpu-check: --gpus {ctx.gpus}, but {visible} visible; use --gpus {visible} or fewer (or "
                  "--dry-run to see the plan)", file=sys.stderr)
            return 2
    budget_s = args.budget or (QUICK_BUDGET_S if ctx.quick else FULL_BUDGET_S)
    steps = build_steps(ctx, args.only)
    if args.plan_json:
        plan = {"gpus": ctx.gpus, "mode": "quick" if ctx.quick else "full", "budget_s": budget_s,
                "steps": [{**asdict(step), "command": shlex.join(step.argv)} for step in steps]}
        Path(args.plan_json).write_text(json.dumps(plan, indent=2) + "\n")
    if args.dry_run:
        print_plan(ctx, steps, budget_s, source)
        return 0
    return run_all(ctx, steps, budget_s, source)


class Terminated(Exception):
    """SIGTERM to the check (a command limit ran out): stop the running step and keep what was measured."""


def _terminate(signum, frame):
    raise Terminated


def run_all(ctx: Context, steps: list[Step], budget_s: float, source: str) -> int:
    results = new_results(ctx, budget_s, False, source)
    run_id, started = uuid.uuid4().hex[:12], time.monotonic()
    ctx.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check ({results['mode']}): {ctx.gpus} GPU(s), budget {budget_s:.0f} s, results in {rel(ctx.out)}",
          flush=True)
    signal.signal(signal.SIGTERM, _terminate)  # the steps run in sessions of their own: nothing else stops them
    step = None
    try:
        for number, step in enumerate(steps, start=1):
            remaining = budget_s - (time.monotonic() - started)
            if step.skip_reason is None and remaining < MIN_START_S:
                step.skip_reason = f"the time budget of {budget_s:.0f} s was spent"
            if step.skip_reason:
                record = record_of(step)
            else:
                print(f"[{number}/{len(steps)}] {step.name}: {shlex.join(step.argv)}", flush=True)
                record = run_step(step, min(step.timeout_s, remaining), run_id)
            results["steps"].append(record)
            print(f"[{number}/{len(steps)}] {step.name}: {record['status']}"
                  + (f" ({record['reason']})" if record["reason"] else "")
                  + (f" in {record['seconds']} s" if record["seconds"] is not None else ""), flush=True)
            write_results(finish_results(results, time.monotonic() - started), ctx.out)
    except (KeyboardInterrupt, Terminated) as stop:
        results["interrupted"] = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
        if step is not None and all(record["name"] != step.name for record in results["steps"]):
            results["steps"].append({**record_of(step), "status": "failed",
                                     "reason": f"interrupted by {results['interrupted']} while it ran"})
        finish_results(results, time.monotonic() - started)
        results["exit_code"] = 143 if isinstance(stop, Terminated) else 130
        json_path, md_path = write_results(results, ctx.out)
        print(f"gpu-check: interrupted ({results['interrupted']}); results so far: {rel(json_path)}, "
              f"{rel(md_path)}", file=sys.stderr)
        return results["exit_code"]
    json_path, md_path = write_results(finish_results(results, time.monotonic() - started), ctx.out)
    counts = results["counts"]
    print(f"gpu-check: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped in "
          f"{results['seconds']} s")
    print(f"JSON: {rel(json_path)}\nmarkdown: {rel(md_path)}")
    return results["exit_code"]


# ------------------------------------------------------------------------- the checks that are not one command


def command_versions(args) -> int:
    """nvidia-smi, driver, torch, CUDA, cuDNN, NCCL, diffusers and the GPUs, as JSON."""
    import platform

    info: dict = {"host": socket.gethostname(), "python": platform.python_version(), "gpus": []}
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version,pci.bus_id",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
        for line in query.stdout.strip().splitlines():
            index, name, memory, driver, bus = (part.strip() for part in line.split(","))
            info["gpus"].append({"index": int(index), "name": name, "memory_total_mib": float(memory), "bus": bus})
            info["driver"] = driver
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        smi = re.search(r"NVIDIA-SMI ([\d.]+)", header)
        cuda = re.search(r"CUDA Version: ([\d.]+)", header)
        info["nvidia_smi"], info["driver_cuda"] = smi and smi.group(1), cuda and cuda.group(1)
    except (OSError, subprocess.TimeoutExpired) as error:
        info["nvidia_smi_error"] = str(error)
    problems = []
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                    cuda_devices=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                    cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None)
        try:
            nccl = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except Exception as error:  # noqa: BLE001 - a CPU build has no NCCL
            info["nccl"], info["nccl_error"] = None, str(error)
        if args.device == "cuda" and not info["cuda_available"]:
            problems.append("torch sees no CUDA device")
    except ImportError as error:
        problems.append(f"torch: {error}")
    for package in ("diffusers", "transformers", "vidpipe"):
        try:
            info[package] = __import__(package).__version__
        except Exception as error:  # noqa: BLE001
            problems.append(f"{package}: {error}")
    info["problems"] = problems
    return _write_check(info, args.json)


def _latent_files(path: Path) -> dict[str, Path]:
    if path.is_dir():
        return {file.name: file for file in sorted(path.glob("*.latents.safetensors"))}
    return {path.name: path} if path.is_file() else {}


def command_compare_latents(args) -> int:
    """Each NAME=PATH's latents (files, or the .latents.safetensors in a folder) against the reference's of the
    same names: the max abs difference, scaled by the reference's magnitude above 1 (as vidpipe's own
    verification), and NaN/Inf counts. Fails on NaN/Inf, on a shape mismatch, or beyond --tolerance if given."""
    import torch
    from safetensors.torch import load_file

    def load(file: Path) -> torch.Tensor:
        return load_file(str(file))["latents"].float()

    reference = _latent_files(REPO / args.reference)
    result = {"reference": args.reference, "reference_files": len(reference), "tolerance": args.tolerance,
              "compared": {}}
    bad = [] if reference else [f"no latents in {args.reference}"]
    for item in args.items:
        name, _, path = item.partition("=")
        entry = {"path": path, "files": 0, "max_abs_diff": None, "relative_diff": None, "nan": 0, "inf": 0,
                 "missing": []}
        for file_name, ref_file in reference.items():
            other = _latent_files(REPO / path).get(file_name)
            if other is None:
                entry["missing"].append(file_name)
                continue
            expected, actual = load(ref_file), load(other)
            entry["nan"] += int(torch.isnan(actual).sum())
            entry["inf"] += int(torch.isinf(actual).sum())
            if expected.shape != actual.shape:
                bad.append(f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
                continue
            diff = float((actual - expected).abs().nan_to_num(float("inf")).max())
            scale = max(1.0, float(expected.abs().max()))
            entry["files"] += 1
            entry["max_abs_diff"] = max(entry["max_abs_diff"] or 0.0, diff)
            entry["relative_diff"] = max(entry["relative_diff"] or 0.0, diff / scale)
        if entry["nan"] or entry["inf"]:
            bad.append(f"{name}: {entry['nan']} NaN, {entry['inf']} Inf")
        if args.tolerance is not None and entry["relative_diff"] is not None:
            entry["within_tolerance"] = entry["relative_diff"] <= args.tolerance
            if not entry["within_tolerance"]:
                bad.append(f"{name}: relative difference {entry['relative_diff']:.3g} > {args.tolerance}")
        result["compared"][name] = entry
    result["reference_nan"] = sum(int(torch.isnan(load(f)).sum()) for f in reference.values())
    if result["reference_nan"]:
        bad.append(f"the reference has {result['reference_nan']} NaN")
    result["problems"] = bad
    return _write_check(result, args.json)


CHILD = "VIDPIPE_GPU_CHECK_CHILD"  # marks the processes a serve or fault check starts (it carries MARKER too)


def _child_env(marker: str, **extra: str) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", CHILD: marker, **extra}


def _wait_for(condition, timeout_s: float, what: str, process: subprocess.Popen | None = None,
              every_s: float = 0.1):
    """Poll `condition()` until it returns something truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited ({process.returncode}) while waiting for {what}")
        time.sleep(every_s)
    raise TimeoutError(f"no {what} within {timeout_s:.0f} s")


def _finish_check(result: dict, json_path: str) -> int:
    failed = [name for name, passed in result["checks"].items() if passed is not True]
    result["problems"] = ([f"failed checks: {', '.join(failed)}"] if failed else []) + \
        ([result["error"]] if result.get("error") else [])
    return _write_check(result, json_path)


def _write_check(result: dict, json_path: str) -> int:
    """Write a check's JSON, print it and, when it failed, one line saying why (the step's reason)."""
    Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if result["problems"]:
        print(f"gpu-check: failed: {'; '.join(result['problems'])}")
    return 1 if result["problems"] else 0


def command_serve_check(args) -> int:
    """Start the server (port 0), wait until ready, cancel a running job, finish one with `vidpipe submit`, stop
    it with SIGTERM: it must exit 0 and leave no process."""
    import httpx

    vidpipe, serve = shlex.split(args.vidpipe), args.command
    log_path = Path(args.json).with_suffix(".server.log")
    marker = uuid.uuid4().hex
    result: dict = {"command": shlex.join([*vidpipe, *serve]), "checks": {}, "summary": {}, "error": None}
    checks, summary = result["checks"], result["summary"]
    started = time.monotonic()
    with log_path.open("w") as log:
        server = subprocess.Popen([*vidpipe, *serve], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                  env=_child_env(marker))
    try:
        port = _wait_for(lambda: re.search(r"http://127\.0\.0\.1:(\d+)/", log_path.read_text()), 120,
                         "URL in the server's output", server)
        url = f"http://127.0.0.1:{port.group(1)}"
        client = httpx.Client(base_url=url, timeout=30)
        _wait_for(lambda: client.get("/v1/health").json().get("status") == "ready", 180, "ready server", server,
                  every_s=0.5)
        summary["ready_s"] = round(time.monotonic() - started, 2)
        checks["ready"] = True
        _cancel_a_running_job(client, checks, summary)
        _submit_a_job(vidpipe, args, url, marker, client, checks, summary)
    except Exception as error:  # noqa: BLE001 - recorded; the server is stopped below either way
        result["error"] = f"{type(error).__name__}: {error}"
        checks.setdefault("ready", False)
    finally:
        _stop_server(server, checks, summary)
        left = reap_leftovers(marker, CHILD)
        summary["processes_left"] = len(left)
        checks["no_process_left"] = not left
        if left:
            result["left"] = left
    return _finish_check(result, args.json)


def _job(client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def _cancel_a_running_job(client, checks: dict, summary: dict) -> None:
    with (REPO / IMAGE).open("rb") as image:
        answer = client.post("/v1/jobs", files={"image": (Path(IMAGE).name, image, "image/png")},
                             data={"steps": "1000", "samples": "2", "frames": "8"})
    checks["long_job_accepted"] = answer.status_code == 202
    job_id = answer.json()["id"]
    status = _wait_for(lambda: _job(client, job_id)["status"] in ("running", "done", "failed")
                       and _job(client, job_id)["status"], 120, "running job")
    checks["job_ran_until_cancelled"] = status == "running"
    asked = time.monotonic()
    client.delete(f"/v1/jobs/{job_id}")
    final = _wait_for(lambda: _job(client, job_id)["status"] in ("cancelled", "done", "failed")
                      and _job(client, job_id)["status"], 90, "cancelled job")
    summary["cancel_s"] = round(time.monotonic() - asked, 2)
    checks["cancelled"] = final == "cancelled"


def _submit_a_job(vidpipe: list[str], args, url: str, marker: str, client, checks: dict, summary: dict) -> None:
    submit = [part.replace("{url}", url) for part in json.loads(args.submit)]
    started = time.monotonic()
    with Path(args.json).with_suffix(".submit.log").open("w") as log:
        done = subprocess.run([*vidpipe, *submit], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, timeout=180,
                              env=_child_env(marker))
    summary["submit_s"] = round(time.monotonic() - started, 2)
    summary["submit_exit_code"] = done.returncode
    checks["submit_exit_0"] = done.returncode == 0
    downloads = REPO / submit[submit.index("--out") + 1]
    videos = sorted(downloads.glob("**/*.mp4"))
    summary["mp4_bytes"] = [video.stat().st_size for video in videos]
    checks["mp4_downloaded"] = bool(videos) and all(video.stat().st_size > 0 for video in videos)
    listing = client.get("/v1/jobs", params={"limit": 5}).json()
    jobs = listing.get("jobs", []) if isinstance(listing, dict) else listing
    if jobs:
        summary["last_job_status"] = jobs[0].get("status")
        summary["last_job_timings"] = jobs[0].get("timings")
        checks["last_job_done"] = jobs[0].get("status") == "done"


def _stop_server(server: subprocess.Popen, checks: dict, summary: dict) -> None:
    asked = time.monotonic()
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(45)
    except subprocess.TimeoutExpired:
        server.kill()
        code = server.wait()
    summary["stop_s"] = round(time.monotonic() - asked, 2)
    summary["exit_code"] = code
    checks["exit_0_on_sigterm"] = code == 0


def command_fault_check(args) -> int:
    """Run the command with a fault in rank --rank at step --fault-step (raise: VIDPIPE_TEST_FAULT; kill: SIGKILL
    to the process named vidpipe-rankN once it steps). The run must exit 1 with one `vidpipe: error:` line that
    names the rank, no traceback, and no process left; the seconds from the fault to the exit are the figure."""
    vidpipe, command = shlex.split(args.vidpipe), args.command
    log_path = Path(args.json).with_suffix(".run.log")
    marker = uuid.uuid4().hex
    extra = {"VIDPIPE_TEST_FAULT": f"raise:{args.rank}:{args.fault_step}"} if args.kind == "raise" else {}
    result: dict = {"command": shlex.join([*vidpipe, *command]), "kind": args.kind, "rank": args.rank,
                    "checks": {}, "summary": {}, "error": None}
    checks, summary = result["checks"], result["summary"]
    started = time.monotonic()
    with log_path.open("w") as log:
        run = subprocess.Popen([*vidpipe, *command], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                               env=_child_env(marker, **extra))
    step = str(args.fault_step) if args.kind == "raise" else r"\d+"
    stepping = re.compile(rf"\[rank={args.rank}\] step {step}\b")
    try:
        _wait_for(lambda: stepping.search(log_path.read_text(errors="replace")), 180, f"rank {args.rank} stepping",
                  run if args.kind == "kill" else None, every_s=0.05)
        fault_at = time.monotonic()
        if args.kind == "kill":
            victim = _wait_for(lambda: _rank_process(marker, args.rank), 10, f"vidpipe-rank{args.rank}")
            victim.kill()
        code = run.wait(120)
        summary["seconds_fault_to_exit"] = round(time.monotonic() - fault_at, 2)
    except Exception as error:  # noqa: BLE001 - recorded; the run is stopped below
        result["error"] = f"{type(error).__name__}: {error}"
        run.kill()
        code = run.wait()
    summary["seconds_total"] = round(time.monotonic() - started, 2)
    summary["exit_code"] = code
    text = log_path.read_text(errors="replace")
    errors = [line.strip() for line in text.splitlines() if line.startswith("vidpipe: error:")]
    summary["error_line"] = errors[-1] if errors else None
    checks["exit_1"] = code == 1
    checks["one_error_line"] = len(errors) == 1
    checks["rank_named"] = bool(errors) and re.search(rf"\brank {args.rank}\b", errors[-1]) is not None
    checks["no_traceback"] = "Traceback" not in text
    left = reap_leftovers(marker, CHILD)
    summary["processes_left"] = len(left)
    checks["no_process_left"] = not left
    return _finish_check(result, args.json)


def _rank_process(marker: str, rank: int):
    for process in processes_marked(marker, CHILD):
        try:
            if process.name() == f"vidpipe-rank{rank}":
                return process
        except Exception:  # noqa: BLE001 - it went away meanwhile
            continue
    return None


# ------------------------------------------------------------------------------------------------ the CLI


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    sub = main.add_subparsers(dest="subcommand", required=True)
    run = sub.add_parser("run", help="plan and run the steps (what scripts/gpu-check.sh calls)")
    run.add_argument("out_dir", nargs="?", help="results folder (default docs/results/gpu-<date>/)")
    run.add_argument("--quick", action="store_true", help=f"the essentials (budget {QUICK_BUDGET_S} s)")
    run.add_argument("--dry-run", action="store_true", help="print the plan; run nothing (no GPU needed)")
    run.add_argument("--gpus", type=int, help="GPUs to plan for (default: the visible ones)")
    run.add_argument("--budget", type=float, help=f"seconds for all steps (default {QUICK_BUDGET_S} with --quick, "
                                                  f"{FULL_BUDGET_S} otherwise)")
    run.add_argument("--only", help="run only the steps whose name matches this regular expression")
    run.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                     help="cpu: try the script's own machinery on a CPU (gloo; slow; with --only)")
    run.add_argument("--plan-json", help="also write the plan (every step, its command and skip reason) here")
    run.set_defaults(handler=command_run)
    versions = sub.add_parser("versions")
    versions.add_argument("--json", required=True)
    versions.add_argument("--device", default="cuda")
    versions.set_defaults(handler=command_versions)
    compare = sub.add_parser("compare-latents")
    compare.add_argument("--json", required=True)
    compare.add_argument("--reference", required=True)
    compare.add_argument("--tolerance", type=float)
    compare.add_argument("items", nargs="*", metavar="NAME=PATH")
    compare.set_defaults(handler=command_compare_latents)
    serve = sub.add_parser("serve-check")
    serve.add_argument("--json", required=True)
    serve.add_argument("--vidpipe", required=True)
    serve.add_argument("--submit", required=True, help="submit's arguments as a JSON list; {url} is replaced")
    serve.add_argument("command", nargs=argparse.REMAINDER)
    serve.set_defaults(handler=command_serve_check)
    fault = sub.add_parser("fault-check")
    fault.add_argument("--json", required=True)
    fault.add_argument("--vidpipe", required=True)
    fault.add_argument("--kind", choices=("raise", "kill"), required=True)
    fault.add_argument("--rank", type=int, required=True)
    fault.add_argument("--fault-step", type=int, default=3)
    fault.add_argument("command", nargs=argparse.REMAINDER)
    fault.set_defaults(handler=command_fault_check)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
