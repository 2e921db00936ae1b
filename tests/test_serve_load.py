"""The loopback load test (scripts/serve_load.py), briefly: submitters, pollers and event-stream followers against a
real server for a few seconds; every job submitted ends, no request fails, and the figures are reported (the note
gives a minute's run). No timed assertion: the latencies are printed, not judged, on a shared machine."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, vidpipe_env


def test_a_short_load_loses_no_job_and_every_request_answers(tmp_path):
    report_path = tmp_path / "load.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "serve_load.py"), "--seconds", "8", "--submitters", "2",
         "--pollers", "3", "--streamers", "3", "--max-requests", "3000", "--json", str(report_path)],
        capture_output=True, text=True, timeout=400, cwd=REPO, env=vidpipe_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    jobs = report["jobs"]
    assert jobs["submitted"] > 0 and jobs["lost"] == 0 and jobs["done"] == jobs["submitted"], jobs
    assert report["request_errors"] == [] and report["server_restarts"] == 0
    assert set(report["status_codes"]["health"]) == {"200"} and set(report["status_codes"]["job"]) == {"200"}
    assert report["latency"]["health"]["count"] > 50 and report["events_received"] > 0
    assert report["server_peak_rss_mb"] > 0
    print({route: report["latency"][route] for route in ("health", "job")})
