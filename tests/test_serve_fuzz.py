"""One real `vidpipe serve --model tiny` on a local port, fuzzed then loaded. Schemathesis sends requests for every
route, generated from the OpenAPI schema the server publishes (its multipart form included, with the limits as
bounds): none may end in a 5xx or an undocumented status or content type, none may hang, and the server must be
healthy after. Then the loopback load test (scripts/serve_load.py), briefly: submitters, pollers and event-stream
followers for a few seconds; every job submitted ends and no request fails (the note gives a minute's figures; no
timed assertion: the latencies are printed, not judged, on a shared machine)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, vidpipe_env
from tests.test_serve import Server
from vidpipe.models.registry import resolve_model

#: Per operation; about 200 requests in all over the seven routes (the note gives a longer run's figures).
MAX_EXAMPLES = 5


def schemathesis_command() -> list[str] | None:
    cli = Path(sys.executable).with_name("st")
    return [str(cli)] if cli.is_file() else ([shutil.which("st")] if shutil.which("st") else None)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzzed")
    resolve_model("tiny", cache_dir=folder / "cache")
    instance = Server(folder / "out", folder / "cache", "--gpus", "1", "--max-queue", "3", "--max-steps", "40",
                      "--max-samples-per-job", "7", env_extra={"VIDPIPE_THREADS_PER_RANK": "1"})
    with instance.client() as client:
        instance.wait_ready(client)
    yield instance
    assert instance.stop() == 0
    log = instance.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


@pytest.mark.skipif(schemathesis_command() is None, reason="schemathesis is not installed (pip install -e .[dev])")
def test_fuzzing_every_route_finds_no_server_error(server, tmp_path):
    with server.client() as client:
        schema = client.get("/v1/openapi.json").json()
    # What the fuzzer works from: POST /v1/jobs declares its multipart fields, bounded by the server's limits.
    form = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    fields = form["properties"]
    assert form["required"] == ["image"] and fields["image"]["format"] == "binary"
    assert fields["steps"]["maximum"] == 40 and fields["samples"]["maximum"] == 7
    assert fields["frames"]["maximum"] == 16 and fields["height"]["multipleOf"] == 16
    assert fields["seed"]["minimum"] == -(2**63) and fields["seed"]["maximum"] == 2**64 - 1
    assert "motion_bucket_id" in fields and "prompt" not in fields  # the served family's fields only
    assert set(schema["paths"]["/v1/jobs"]["post"]["responses"]) >= {"202", "401", "413", "422", "429"}

    report = tmp_path / "fuzz.json"
    run = subprocess.run(
        [*schemathesis_command(), "run", f"{server.url}/v1/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance",
         "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--request-timeout", "20", "--workers", "1",
         "--generation-database", "none", "--no-color", "--report", "json", "--report-json-path", str(report)],
        capture_output=True, text=True, timeout=420, cwd=tmp_path)
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    generated = int(re.search(r"(\d+) generated", run.stdout).group(1))
    assert generated >= 100, summary
    print(f"schemathesis: {generated} test cases, no failure")
    with server.client() as client:
        health = client.get("/v1/health", timeout=5).json()
    assert health["status"] in ("ready", "busy") and health["restarts"] == 0, health
    log = server.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]

    # Whatever the fuzzer got accepted (a valid image happens) is cancelled: the load below starts on an empty queue.
    with server.client() as client:
        for job in client.get("/v1/jobs", params={"limit": 500}).json()["jobs"]:
            client.delete(f"/v1/jobs/{job['id']}")


def test_a_short_load_loses_no_job_and_every_request_answers(server, tmp_path):
    report_path = tmp_path / "load.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "serve_load.py"), "--server", server.url, "--server-pid",
         str(server.process.pid), "--seconds", "4", "--submitters", "2", "--pollers", "3", "--streamers", "3",
         "--max-requests", "3000", "--json", str(report_path)],
        capture_output=True, text=True, timeout=400, cwd=REPO, env=vidpipe_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    jobs = report["jobs"]
    assert jobs["submitted"] > 0 and jobs["lost"] == 0 and jobs["done"] == jobs["submitted"], jobs
    assert report["request_errors"] == [] and report["server_restarts"] == 0
    assert set(report["status_codes"]["health"]) == {"200"} and set(report["status_codes"]["job"]) == {"200"}
    assert set(report["status_codes"]["submit"]) <= {"202", "429"}  # --max-queue 3: some are refused, then retried
    assert report["latency"]["health"]["count"] > 50 and report["events_received"] > 0
    assert report["server_peak_rss_mb"] > 0
    print({route: report["latency"][route] for route in ("health", "job")})
