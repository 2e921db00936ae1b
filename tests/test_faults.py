"""Faults injected into real runs: a rank raises, dies, stalls, or the user interrupts. Each run must end with
the right exit code and message, leave no process behind, and keep finished files (no partial ones).

Faults of a rank (it raises, hangs, is killed or frozen) hit runs in this process, their ranks forked from the
test session's warm worker server (no interpreter start, no preload): the launcher must stop every rank, so none
of the server's children is left. What happens to the launcher or the worker server themselves (the user
interrupts the parent, the server freezes) happens to a `vidpipe` process of its own, and every process it
started must be gone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import psutil
import pytest

from tests.conftest import REPO, run_here, vidpipe_env

SLOW = ["--steps", "4", "--samples", "400", "--step-ms", "100", "--latent-shape", "1", "4", "2", "8", "8",
        "--device", "cpu", "--warmup-samples", "0"]


def start(*args: str) -> tuple[subprocess.Popen, str]:
    """Start `vidpipe ARGS`; every process of the run carries a marker in its environment. Its stderr is read as
    it comes (`process.stderr_lines`); `process.stepping` is set at its first "[rank=N] step K completed" line
    (printed with --verbose)."""
    marker = uuid.uuid4().hex
    env = {**vidpipe_env(), "VIDPIPE_TEST_RUN": marker}
    process = subprocess.Popen([sys.executable, "-m", "vidpipe", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    process.stderr_lines, process.stepping = [], threading.Event()

    def read() -> None:
        for line in process.stderr:
            process.stderr_lines.append(line)
            if line.startswith("[rank=") and " completed in " in line:
                process.stepping.set()

    process.reader = threading.Thread(target=read, daemon=True)
    process.reader.start()
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


def finish(process: subprocess.Popen, marker: str) -> tuple[int, str]:
    process.wait(timeout=120)  # a guard against hangs, not a speed target
    process.reader.join(timeout=60)
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with(marker) == [], "processes left behind"
    return process.returncode, "".join(process.stderr_lines)


@pytest.fixture
def in_process(here):
    """`here` for runs whose faults hit a rank; afterwards no rank of the worker server may be left."""
    from vidpipe.runtime.forkserver import start_worker_server

    # NOTE: the server must exist before a fault is set: it keeps the environment it starts with, and ranks get
    # the launcher's VIDPIPE_* settings of each run on top of it.
    start_worker_server()
    yield here
    deadline = time.monotonic() + 10
    while server_ranks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server_ranks() == [], "ranks left behind"


def server_ranks() -> list[psutil.Process]:
    """The ranks forked by this process's worker server (named vidpipe-rankN), in rank order."""
    from vidpipe.runtime.forkserver import worker_server_pid

    pid = worker_server_pid()
    if pid is None:
        return []
    ranks = []
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    for process in children:
        try:
            if process.name().startswith("vidpipe-rank") and process.status() != psutil.STATUS_ZOMBIE:
                ranks.append(process)
        except psutil.NoSuchProcess:
            continue
    return sorted(ranks, key=lambda p: int(p.name().removeprefix("vidpipe-rank")))


class SignalRank(threading.Thread):
    """Sends `signum` to rank `index` of the next in-process run once its `count` ranks are up and, after
    `settle_s`, stepping; `sent_at` is when."""

    def __init__(self, count: int, index: int, signum: int, settle_s: float):
        super().__init__(daemon=True)
        self.count, self.index, self.signum, self.settle_s = count, index, signum, settle_s
        self.sent_at: float | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ranks = server_ranks()
            if len(ranks) == self.count:
                time.sleep(self.settle_s)
                ranks[self.index].send_signal(self.signum)
                self.sent_at = time.monotonic()
                return
            time.sleep(0.05)


@pytest.mark.parametrize("strategy", ["pp", "fsdp"])  # pipeline hand-offs; lockstep all-gathers
def test_a_rank_that_raises_ends_the_run(in_process, monkeypatch, strategy):
    monkeypatch.setenv("VIDPIPE_TEST_FAULT", "raise:1:3")
    result = in_process("simulate", "--gpus", "2", "--strategy", strategy, *SLOW)
    assert result.returncode == 1
    assert "rank 1 failed: InjectedFault: injected fault at step 3" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("strategy", ["dp"])  # dp: the peers keep working and the queue busy
def test_a_rank_killed_by_sigkill_ends_the_run(in_process, strategy):
    killer = SignalRank(3, 1, signal.SIGKILL, settle_s=1.0)
    killer.start()
    result = in_process("simulate", "--gpus", "3", "--strategy", strategy, *SLOW)
    killer.join()
    assert killer.sent_at is not None, "the ranks did not start"
    assert result.returncode == 1
    assert "died unexpectedly (killed by SIGKILL)" in result.stderr


@pytest.mark.parametrize("strategy", ["dp"])  # heartbeats do not depend on the plan; dp's peers never wait for it
def test_a_stopped_rank_is_named_within_the_stall_timeout(in_process, strategy):
    """A rank frozen (SIGSTOP) 1 s after it started, while the others may still be starting or working (a dp
    peer never waits for it): its heartbeats stop, it is named, and the run ends within --stall-timeout + 10 s
    (a liveness bound the issue sets, with seconds of margin; not a speed target)."""
    freezer = SignalRank(2, 0, signal.SIGSTOP, settle_s=1.0)
    freezer.start()
    result = in_process("simulate", "--gpus", "2", "--strategy", strategy, "--stall-timeout", "4", *SLOW)
    ended_at = time.monotonic()
    freezer.join()
    assert freezer.sent_at is not None, "the ranks did not start"
    assert ended_at - freezer.sent_at <= 4 + 10, result.stderr
    assert result.returncode == 1
    assert "rank 0 stopped responding: no heartbeat for 4 s" in result.stderr


def test_a_run_where_no_rank_progresses_is_stopped(in_process, monkeypatch):
    """Every rank alive (heartbeats go on) but none moves: the run-wide progress clock ends it and names the
    rank silent longest."""
    monkeypatch.setenv("VIDPIPE_TEST_FAULT", "hang:1:2")
    result = in_process("simulate", "--gpus", "2", "--strategy", "pp", "--stall-timeout", "3", *SLOW)
    assert result.returncode == 1
    assert "no progress from any rank for 3 s" in result.stderr and "silent longest" in result.stderr


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
    --stall-timeout + 10 s (a liveness bound from the issue, with seconds of margin; not a speed target). The
    silence it names is at least the timeout: more when the launcher's own imports, still under way, check late."""
    process, marker = start("simulate", "--gpus", "2", "--steps", "28", "--samples", "400", "--step-ms", "20",
                            "--device", "cpu", "--stall-timeout", "5")
    server = worker_server_of(marker)
    time.sleep(0.5)
    server.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    code, err = finish(process, marker)
    assert time.monotonic() - stopped_at <= 5 + 10, err
    assert code == 1
    named = re.search(rf"the worker server \(pid {server.pid}\) made no progress for (\d+) s while preloading "
                      r"\(process [a-z-]+; --stall-timeout 5\)", err)
    assert named and int(named.group(1)) >= 5, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_interrupting_the_parent_stops_every_rank():
    """SIGINT to an fsdp run and SIGTERM to a pp run, started at the same moment (two runs, each with its own
    launcher and worker server, so also: each parent gets a rendezvous port of its own, no race between
    simultaneous runs): each parent, interrupted while its ranks step, exits 128 + the signal and stops them all."""
    runs = {signal.SIGINT: (130, start("simulate", "--gpus", "2", "--strategy", "fsdp", *SLOW, "--verbose")),
            signal.SIGTERM: (143, start("simulate", "--gpus", "2", "--strategy", "pp", *SLOW, "--verbose"))}
    for signum, (_code, (process, marker)) in runs.items():
        assert process.stepping.wait(timeout=120), f"{signum.name}: no rank stepped"
        assert len(ranks_of(marker)) == 2
        os.kill(process.pid, signum)
    for signum, (expected_code, (process, marker)) in runs.items():
        code, err = finish(process, marker)
        assert code == expected_code, (signum.name, err[-2000:])
        assert f"interrupted by {signum.name}" in err


def test_interrupted_generate_keeps_finished_files_and_no_partial_one(tmp_path, capsys, cache):
    import numpy as np
    import PIL.Image

    image = tmp_path / "still.png"
    PIL.Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(image)
    out = tmp_path / "out"
    process, marker = start("generate", str(image), "--model", "tiny", "--cache-dir", str(cache),
                            "--steps", "2", "--samples", "12", "--device", "cpu", "--format", "gif,png",
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
    rerun = run_here(capsys, "generate", str(image), "--model", "tiny", "--cache-dir", str(cache),
                     "--steps", "2", "--samples", "12", "--device", "cpu", "--format", "gif,png", "--out", str(out),
                     "--gpus", "2", "--strategy", "dp", "--resume", "--json", str(tmp_path / "r.json"))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(list(out.glob("*.gif"))) == 12
