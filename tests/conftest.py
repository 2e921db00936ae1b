"""Shared test helpers: run the CLI as a user would, in a subprocess, and read what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def vidpipe_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "160"
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def run_cli(*args: str, timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m vidpipe ARGS` in a subprocess; the timeout guards against hangs, it is no speed target."""
    return subprocess.run(
        [sys.executable, "-m", "vidpipe", *args],
        capture_output=True, text=True, timeout=timeout, env=vidpipe_env(), cwd=cwd or REPO,
    )


def run_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """`vidpipe ARGS` in this process, as `run_cli` returns it: its ranks are forked from this test process's worker
    server, started once and warm, so a run costs no interpreter start and no preload (about 8 s each here). For
    runs whose point is not the process boundary (signals, a killed parent, torchrun keep `run_cli`)."""
    from vidpipe.cli import main

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exit_info:
        # As wide as a subprocess's console where rich reads COLUMNS (not everywhere: under pytest-xdist lines may
        # still wrap, so tests match messages with their whitespace normalised).
        patch.setenv("COLUMNS", vidpipe_env()["COLUMNS"])
        main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["vidpipe", *args], exit_info.value.code, captured.out, captured.err)


@pytest.fixture
def here(capsys):
    """`run_here` bound to this test's capsys: `here("simulate", ...)` -> CompletedProcess."""
    return lambda *args: run_here(capsys, *args)


def run_main(capsys, *args: str) -> tuple[int, str]:
    """`vidpipe ARGS` in this process (for errors raised before any worker starts): (exit code, stderr)."""
    from vidpipe.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture
def cli():
    return run_cli


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


#: The test files that take the longest (seconds of a serial run, `--durations`), run first: `make test` runs two
#: workers that take one file at a time, so the long files start early and the short ones fill in at the end,
#: instead of one long file running alone last.
LONGEST_FIRST = ("test_fleet.py", "test_serve.py", "test_faults.py", "test_generate.py", "test_serve_limits.py",
                 "test_wan_fidelity.py", "test_serve_fuzz.py", "test_multinode.py", "test_plans.py", "test_page.py",
                 "test_doctor.py", "test_simulate.py", "test_serve_wan.py", "test_gpu_readiness.py",
                 "test_memory_probe.py", "test_bench.py", "test_gpu_check.py")


def pytest_collection_modifyitems(session, config, items):
    order = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: a file keeps its tests' order


def pytest_sessionstart(session):
    """Start the worker server that in-process runs fork their ranks from (`run_here`) before the tests are
    collected: its preload (torch and diffusers, seconds of CPU) then runs on the other core while collection
    imports the same modules here, instead of in the first test that runs a command."""
    if not session.config.option.collectonly:
        from vidpipe.runtime.forkserver import start_worker_server

        start_worker_server()


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway Postgres for the session (tests/postgres_cluster.py); skipped, with the reason, without one."""
    from tests.postgres_cluster import start_cluster

    cluster, why = start_cluster()
    if cluster is None:
        pytest.skip(why)
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_dsn(postgres_cluster) -> str:
    """A DSN of a database of this test's own."""
    return postgres_cluster.fresh_database()


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """A model cache with the tiny SVD model built in it (random weights, real diffusers architectures), once for the
    session (seconds each time; no test writes into it)."""
    from vidpipe.models.registry import resolve_model

    cache_dir = tmp_path_factory.mktemp("cache")
    resolve_model("tiny", cache_dir=cache_dir)
    return cache_dir
