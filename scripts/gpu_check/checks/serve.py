"""The `serve-check` check: a warm server, one job cancelled while it runs, one finished with `vidpipe submit`, then
SIGTERM; nothing may be left."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path

from ..context import IMAGE, REPO
from ..steps import reap_leftovers
from .common import CHILD, child_env, finish_check, wait_for


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
                                  env=child_env(marker))
    try:
        port = wait_for(lambda: re.search(r"http://127\.0\.0\.1:(\d+)/", log_path.read_text()), 120,
                         "URL in the server's output", server)
        url = f"http://127.0.0.1:{port.group(1)}"
        client = httpx.Client(base_url=url, timeout=30)
        wait_for(lambda: client.get("/v1/health").json().get("status") == "ready", 180, "ready server", server,
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
    return finish_check(result, args.json)


def _job(client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def _cancel_a_running_job(client, checks: dict, summary: dict) -> None:
    with (REPO / IMAGE).open("rb") as image:
        answer = client.post("/v1/jobs", files={"image": (Path(IMAGE).name, image, "image/png")},
                             data={"steps": "1000", "samples": "2", "frames": "8"})
    checks["long_job_accepted"] = answer.status_code == 202
    job_id = answer.json()["id"]
    status = wait_for(lambda: _job(client, job_id)["status"] in ("running", "done", "failed")
                       and _job(client, job_id)["status"], 120, "running job")
    checks["job_ran_until_cancelled"] = status == "running"
    asked = time.monotonic()
    client.delete(f"/v1/jobs/{job_id}")
    final = wait_for(lambda: _job(client, job_id)["status"] in ("cancelled", "done", "failed")
                      and _job(client, job_id)["status"], 90, "cancelled job")
    summary["cancel_s"] = round(time.monotonic() - asked, 2)
    checks["cancelled"] = final == "cancelled"


def _submit_a_job(vidpipe: list[str], args, url: str, marker: str, client, checks: dict, summary: dict) -> None:
    submit = [part.replace("{url}", url) for part in json.loads(args.submit)]
    started = time.monotonic()
    with Path(args.json).with_suffix(".submit.log").open("w") as log:
        done = subprocess.run([*vidpipe, *submit], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, timeout=180,
                              env=child_env(marker))
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
