"""Running one step: in a session of its own, under its timeout, then what it left behind and what it showed."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .context import REPO, Step, rel
from .figures import step_figures

#: Set on every process a step starts (inherited by its children), so that what is left afterwards can be found.
MARKER = "VIDPIPE_GPU_CHECK"
GRACE_S = 10  # after a step: how long its processes get to exit before they count as left behind


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
    """The one-line error of a failed command: vidpipe's `vidpipe: error:` line, or the checks'
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
