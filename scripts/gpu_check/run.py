"""The `run` subcommand (what scripts/gpu-check.sh calls): the machine and the tools, the plan, then every step
within the budget, the results rewritten after each one."""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from .context import REPO, Context, Step, rel
from .plan import build_steps
from .report import finish_results, new_results, write_results
from .steps import record_of, run_step

QUICK_BUDGET_S = 480  # the quick run must end well inside a lent machine's 10-minute command limit
FULL_BUDGET_S = 4 * 3600
MIN_START_S = 20  # no step starts with less of the budget left than this


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
