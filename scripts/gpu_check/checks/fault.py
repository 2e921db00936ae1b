"""The `fault-check` check: a rank that raises, or is SIGKILLed, mid-run; the run must end soon, name it, leave
nothing."""

from __future__ import annotations

import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

from ..context import REPO
from ..steps import processes_marked, reap_leftovers
from .common import CHILD, child_env, finish_check, wait_for


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
                               env=child_env(marker, **extra))
    step = str(args.fault_step) if args.kind == "raise" else r"\d+"
    stepping = re.compile(rf"\[rank={args.rank}\] step {step}\b")
    try:
        wait_for(lambda: stepping.search(log_path.read_text(errors="replace")), 180, f"rank {args.rank} stepping",
                  run if args.kind == "kill" else None, every_s=0.05)
        fault_at = time.monotonic()
        if args.kind == "kill":
            victim = wait_for(lambda: _rank_process(marker, args.rank), 10, f"vidpipe-rank{args.rank}")
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
    return finish_check(result, args.json)


def _rank_process(marker: str, rank: int):
    for process in processes_marked(marker, CHILD):
        try:
            if process.name() == f"vidpipe-rank{rank}":
                return process
        except Exception:  # noqa: BLE001 - it went away meanwhile
            continue
    return None
