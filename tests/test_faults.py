"""Faults injected into real runs: a rank raises, dies, stalls, or the user interrupts. Each run must end with
the right exit code and message, leave no process behind, and keep finished files (no partial ones)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from tests.conftest import REPO, run_here, vidpipe_env

SLOW = ["--steps", "4", "--samples", "400", "--step-ms", "100", "--latent-shape", "1", "4", "2", "8", "8",
        "--device", "cpu", "--warmup-samples", "0"]


def start(*args: str, env_extra: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start `vidpipe ARGS`; every process of the run carries a marker in its environment."""
    marker = uuid.uuid4().hex
    env = {**vidpipe_env(), "VIDPIPE_TEST_RUN": marker, **(env_extra or {})}
    process = subprocess.Popen([sys.executable, "-m", "vidpipe", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    return process, marker


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("VIDPIPE_TEST_RUN") == marker and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def ranks_of(marker: str) -> list[psutil.Process]:
    """The run's rank processes (forked by the worker server, named vidpipe-rankN), in rank order."""
    ranks = []
    for process in processes_with(marker):
        try:
            if process.name().startswith("vidpipe-rank"):
                ranks.append(process)
        except psutil.NoSuchProcess:
            continue
    return sorted(ranks, key=lambda p: int(p.name().removeprefix("vidpipe-rank")))


def workers_of(marker: str, count: int, timeout: float = 120, settle_s: float = 3.0) -> list[psutil.Process]:
    """The rank processes, once all `count` are up (and, after `settle_s`, stepping)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ranks = ranks_of(marker)
        if len(ranks) == count:
            time.sleep(settle_s)
            return ranks
        time.sleep(0.05)
    raise AssertionError("workers did not start")


def finish(process: subprocess.Popen, marker: str) -> tuple[int, str]:
    _out, err = process.communicate(timeout=120)  # a guard against hangs, not a speed target
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with(marker) == [], "processes left behind"
    return process.returncode, err


@pytest.mark.parametrize("strategy", ["pp", "fsdp"])  # pipeline hand-offs; lockstep all-gathers
def test_a_rank_that_raises_ends_the_run(strategy):
    process, marker = start("simulate", "--gpus", "2", "--strategy", strategy, *SLOW,
                            env_extra={"VIDPIPE_TEST_FAULT": "raise:1:3"})
    code, err = finish(process, marker)
    assert code == 1
    assert "rank 1 failed: InjectedFault: injected fault at step 3" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("strategy", ["dp"])  # dp: the peers keep working and the queue busy
def test_a_rank_killed_by_sigkill_ends_the_run(strategy):
    process, marker = start("simulate", "--gpus", "3", "--strategy", strategy, *SLOW)
    victim = workers_of(marker, 3)[1]
    victim.send_signal(signal.SIGKILL)
    code, err = finish(process, marker)
    assert code == 1
    assert "died unexpectedly (killed by SIGKILL)" in err


@pytest.mark.parametrize("strategy", ["dp"])  # heartbeats do not depend on the plan; dp's peers never wait for it
def test_a_stopped_rank_is_named_within_the_stall_timeout(strategy):
    """A rank frozen (SIGSTOP) 1 s after it started, while the others may still be starting or working (a dp
    peer never waits for it): its heartbeats stop, it is named, and the run ends within --stall-timeout + 10 s
    (a liveness bound the issue sets, with seconds of margin; not a speed target)."""
    process, marker = start("simulate", "--gpus", "2", "--strategy", strategy, "--stall-timeout", "4", *SLOW)
    workers = workers_of(marker, 2, settle_s=1.0)
    workers[0].send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    code, err = finish(process, marker)
    assert time.monotonic() - stopped_at <= 4 + 10, err
    assert code == 1
    assert "rank 0 stopped responding: no heartbeat for 4 s" in err


def worker_server_of(marker: str, timeout: float = 60) -> psutil.Process:
    """The run's worker server (the forkserver process), as soon as it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes_with(marker):
            try:
                if "forkserver" in " ".join(process.cmdline()):
                    return process
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.02)
    raise AssertionError("the worker server did not start")


def test_a_stopped_worker_server_is_named_and_nothing_is_left():
    """The worker server frozen (SIGSTOP) 0.5 s after it appears, while it preloads torch and diffusers: the
    launcher, waiting on it, sees it make no progress, names it in one line, stops it and exits 1 within
    --stall-timeout + 10 s (a liveness bound from the issue, with seconds of margin; not a speed target)."""
    process, marker = start("simulate", "--gpus", "2", "--steps", "28", "--samples", "400", "--step-ms", "20",
                            "--device", "cpu", "--stall-timeout", "10")
    server = worker_server_of(marker)
    time.sleep(0.5)
    server.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    code, err = finish(process, marker)
    assert time.monotonic() - stopped_at <= 10 + 10, err
    assert code == 1
    assert f"the worker server (pid {server.pid}) made no progress for 10 s while preloading" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_run_where_no_rank_progresses_is_stopped():
    """Every rank alive (heartbeats go on) but none moves: the run-wide progress clock ends it and names the
    rank silent longest."""
    process, marker = start("simulate", "--gpus", "2", "--strategy", "pp", "--stall-timeout", "3", *SLOW,
                            env_extra={"VIDPIPE_TEST_FAULT": "hang:1:2"})
    code, err = finish(process, marker)
    assert code == 1
    assert "no progress from any rank for 3 s" in err and "silent longest" in err


@pytest.mark.parametrize(("signum", "expected_code", "strategy"), [
    (signal.SIGINT, 130, "fsdp"), (signal.SIGTERM, 143, "pp"),
])
def test_interrupting_the_parent_stops_every_rank(signum, expected_code, strategy):
    process, marker = start("simulate", "--gpus", "2", "--strategy", strategy, *SLOW)
    workers_of(marker, 2)
    os.kill(process.pid, signum)
    code, err = finish(process, marker)
    assert code == expected_code
    assert "interrupted" in err


def test_interrupted_generate_keeps_finished_files_and_no_partial_one(tmp_path, capsys):
    import numpy as np
    import PIL.Image

    image = tmp_path / "still.png"
    PIL.Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(image)
    out = tmp_path / "out"
    process, marker = start("generate", str(image), "--model", "tiny", "--cache-dir", str(tmp_path / "cache"),
                            "--steps", "3", "--samples", "16", "--device", "cpu", "--format", "gif,png",
                            "--out", str(out), "--gpus", "2", "--strategy", "dp")
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (manifest.exists() and manifest.read_text().count("\n") >= 2):
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGINT)
    code, _err = finish(process, marker)
    assert code == 130
    finished = [line for line in manifest.read_text().splitlines() if line]
    assert len(finished) >= 2
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    for gif in out.glob("*.gif"):
        assert PIL.Image.open(gif).n_frames >= 1  # every file there is whole

    # --resume finishes the job without redoing what is there (in this process: the point is the files)
    rerun = run_here(capsys, "generate", str(image), "--model", "tiny", "--cache-dir", str(tmp_path / "cache"),
                     "--steps", "3", "--samples", "16", "--device", "cpu", "--format", "gif,png", "--out", str(out),
                     "--gpus", "2", "--strategy", "dp", "--resume", "--json", str(tmp_path / "r.json"))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(list(out.glob("*.gif"))) == 16
