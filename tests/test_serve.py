"""`vidpipe serve` as users meet it: a real server process on a free local port, a real HTTP client (httpx), the
files it writes opened as videos."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import imageio.v2 as imageio
import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_main, vidpipe_env

IMAGE = REPO / "examples" / "sunset.png"


class Server:
    """`vidpipe serve ARGS` in a subprocess; `url` once it listens, `wait_ready` once its ranks have loaded."""

    def __init__(self, out: Path, cache: Path, *args: str, env_extra: dict | None = None, log: Path | None = None):
        self.out = out
        self.log = log or out.parent / f"{out.name}.log"
        command = [sys.executable, "-m", "vidpipe", "serve", "--model", "tiny", "--device", "cpu", "--port", "0",
                   "--out", str(out), "--cache-dir", str(cache), *args]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                            env={**vidpipe_env(), **(env_extra or {})})
        self.url = self._wait_for_url()
        self.token = None

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", self.log.read_text())
            if match:
                return f"http://127.0.0.1:{match.group(1)}"
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError("the server did not start: " + self.log.read_text())

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def wait_ready(self, client: httpx.Client) -> dict:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            health = client.get("/v1/health").json()
            if health["status"] == "ready":
                return health
            time.sleep(0.1)
        raise AssertionError(f"not ready: {health}")

    def stop(self, signum=signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=60)


def post(client: httpx.Client, image: Path = IMAGE, **fields) -> httpx.Response:
    with image.open("rb") as handle:
        return client.post("/v1/jobs", data={k: str(v) for k, v in fields.items()},
                           files={"image": (image.name, handle, "image/png")})


def wait_for(client: httpx.Client, job_id: str, statuses=("done", "failed", "cancelled"), timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/v1/jobs/{job_id}").json()
        # NOTE: a job is "running" from the moment a node claims it; waiting for it to run means its first step.
        if state["status"] in statuses and (state["status"] != "running" or state["progress"]["steps_done"] > 0):
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {state['status']}: {state}")



@pytest.fixture(scope="module")
def server(tmp_path_factory, cache):
    """One warm 2-rank dp server shared by the tests that do not stop it."""
    instance = Server(tmp_path_factory.mktemp("serve") / "out", cache, "--gpus", "2", "--strategy", "dp",
                      "--max-upload-mb", "1", env_extra={"VIDPIPE_THREADS_PER_RANK": "1"})
    with instance.client() as client:
        instance.wait_ready(client)
    yield instance
    instance.stop()


def test_submit_follow_over_sse_and_download_playable_videos(server, tmp_path):
    with server.client() as client:
        response = post(client, steps=4, samples=2, seed=3, format="mp4,gif")
        assert response.status_code == 202
        job = response.json()
        assert re.fullmatch(r"[0-9a-f]{32}", job["id"]) and job["url"] == f"/v1/jobs/{job['id']}"
        events = []
        with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    events.append((kind, json.loads(line[5:])))
        assert events[-1][0] == "end" and events[-1][1]["status"] == "done"
        steps = [state["progress"]["steps_done"] for _kind, state in events]
        assert steps == sorted(steps) and steps[-1] == 8  # 2 samples x 4 steps
        final = events[-1][1]
        assert final["progress"] == {"steps_done": 8, "steps_total": 8, "samples_done": 2, "samples_total": 2}
        assert len(final["timings"]["sample_latency_s"]) == 2 and final["timings"]["submit_to_first_step_s"] > 0
        names = sorted(f["name"] for f in final["files"])
        assert names == ["sunset_input.png", "sunset_s0_seed3.gif", "sunset_s0_seed3.mp4", "sunset_s1_seed4.gif",
                         "sunset_s1_seed4.mp4"]
        for file in final["files"]:
            (tmp_path / file["name"]).write_bytes(client.get(file["url"]).content)
    video = imageio.get_reader(tmp_path / "sunset_s0_seed3.mp4", "ffmpeg")
    frames = list(video.iter_data())
    assert len(frames) == 4 and frames[0].shape == (64, 64, 3)


def test_a_sweep_gives_the_latents_of_separate_generate_runs(server, tmp_path, capsys, cache, monkeypatch):
    """Three motion values in one job = three generate runs with those values, bit for bit (same thread count)."""
    motions = [30, 127, 220]
    sweep = json.dumps([{"motion_bucket_id": m} for m in motions])
    with server.client() as client:
        job = post(client, steps=3, seed=11, sweep=sweep, save_latents="true").json()
        final = wait_for(client, job["id"])
        assert final["status"] == "done" and final["progress"]["samples_total"] == 3
        served = {}
        for index, _motion in enumerate(motions):
            name = f"sunset_s{index}_seed{11 + index}.latents.safetensors"
            (tmp_path / name).write_bytes(client.get(f"/v1/files/{job['id']}/{name}").content)
            served[index] = load_file(tmp_path / name)["latents"]
    monkeypatch.setenv("VIDPIPE_THREADS_PER_RANK", "1")
    for index, motion in enumerate(motions):
        out = tmp_path / f"generate-{motion}"
        code, err = run_main(capsys, "generate", str(IMAGE), "--model", "tiny", "--cache-dir", str(cache),
                             "--device", "cpu", "--gpus", "1", "--steps", "3", "--seed", str(11 + index),
                             "--motion-bucket-id", str(motion), "--save-latents", "--format", "gif", "--out", str(out))
        assert code == 0, err
        expected = load_file(out / f"sunset_s0_seed{11 + index}.latents.safetensors")["latents"]
        assert torch.equal(served[index], expected), motion


def test_cancel_a_queued_and_a_running_job(server):
    with server.client() as client:
        # 2 dp groups, each running one sample and holding the next: the 5th job waits in the parent's queue.
        long_jobs = [post(client, steps=400).json()["id"] for _ in range(4)]
        queued = post(client, steps=400).json()["id"]
        wait_for(client, long_jobs[0], statuses=("running",))
        states = [client.get(f"/v1/jobs/{job}").json() for job in [*long_jobs, queued]]
        waiting = [s["queue_position"] for s in states if s["status"] == "queued"]
        assert waiting == list(range(1, len(waiting) + 1)) and states[-1]["queue_position"] == len(waiting)
        cancelled = client.delete(f"/v1/jobs/{queued}").json()
        assert cancelled["status"] == "cancelled" and cancelled["progress"]["steps_done"] == 0

        running = wait_for(client, long_jobs[0], statuses=("running",))
        client.delete(f"/v1/jobs/{running['id']}")
        stopped = wait_for(client, running["id"])
        assert stopped["status"] == "cancelled"
        assert 0 < stopped["progress"]["steps_done"] < 400 and stopped["files"] == []
        for job_id in long_jobs[1:]:  # the ranks stay up: free them for the next tests
            client.delete(f"/v1/jobs/{job_id}")
        for job_id in long_jobs[1:]:
            assert wait_for(client, job_id)["status"] == "cancelled"
        assert client.get("/v1/health").json()["status"] == "ready"


def test_twenty_jobs_submitted_at_once_all_finish(server):
    ids, errors = [], []

    def submit_one() -> None:
        with server.client() as client:
            response = post(client, steps=2)
            (ids if response.status_code == 202 else errors).append(response.json().get("id", response.text))

    threads = [threading.Thread(target=submit_one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(ids)) == 20
    with server.client() as client:
        finals = [wait_for(client, job_id) for job_id in ids]
        assert [f["status"] for f in finals] == ["done"] * 20
        assert all(len(f["files"]) == 2 for f in finals)  # the video and the input as the model saw it
        listed = {job["id"] for job in client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]}
        assert set(ids) <= listed


@pytest.mark.parametrize(("fields", "status", "message"), [
    ({"steps": "abc"}, 422, "steps 'abc': not a whole number"),
    ({"colour": "red"}, 422, "unknown option 'colour'"),
    ({"height": "72"}, 422, "height 72: must be a positive multiple of 16"),
    ({"sweep": "[{"}, 422, "sweep: not JSON"),
    ({"sweep": '[{"format": "gif"}]'}, 422, "'format' cannot vary per sample"),
])
def test_bad_fields_get_422_with_one_line(server, fields, status, message):
    with server.client() as client:
        response = post(client, **fields)
    assert response.status_code == status and message in response.json()["error"], response.text


def test_bad_uploads_and_file_requests(server, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (2 * 1024 * 1024))  # the fixture's limit is 1 MB
    with server.client() as client:
        response = post(client, text)
        assert response.status_code == 422 and "'notes.png'" in response.json()["error"]
        assert "not an image" in response.json()["error"] or "Pillow" in response.json()["error"]
        response = post(client, big)
        assert response.status_code == 413 and "limit" in response.json()["error"]
        response = client.post("/v1/jobs", data={"steps": "2"})
        assert response.status_code == 422 and "image" in response.json()["error"]
        job = post(client, steps=2).json()["id"]
        wait_for(client, job)
        for name in ("../../jobs.sqlite3", "..%2F..%2Fjobs.sqlite3", "%2e%2e/%2e%2e/jobs.sqlite3", "/etc/passwd",
                     "nothing.mp4"):
            assert client.get(f"/v1/files/{job}/{name}").status_code == 404, name
        assert client.get("/v1/jobs/0123456789abcdef0123456789abcdef").status_code == 404
        assert client.get("/v1/jobs/../../etc").status_code == 404
    # nothing the server did not write is reachable, and no rejected upload stayed on disk
    assert len(list((server.out / "jobs").glob("*/input/notes.png"))) == 0


def test_a_token_guards_every_route_but_health_and_pp_does_not_drain_between_jobs(tmp_path, cache):
    server = Server(tmp_path / "out", cache, "--gpus", "2", "--strategy", "pp", env_extra={"VIDPIPE_TOKEN": "s3cret"})
    try:
        with server.client() as anonymous, server.client("s3cret") as client:
            assert anonymous.get("/v1/health").status_code == 200
            server.wait_ready(anonymous)
            assert anonymous.get("/v1/jobs").status_code == 401
            assert post(anonymous, steps=2).status_code == 401
            assert post(server.client("wrong"), steps=2).status_code == 401
            job = post(client, steps=2).json()["id"]
            final = wait_for(client, job)
            url = final["files"][0]["url"]
            assert anonymous.get(url).status_code == 401
            assert anonymous.get(url, params={"token": "s3cret"}).status_code == 200  # a <video src> can do this

            # Two jobs with different sizes on a 2-stage pipeline: the second enters stage 0 while the first is
            # still on stage 1 (its steps, its decode): the pipeline does not drain between jobs.
            first = post(client, steps=8, frames=3).json()["id"]
            second = post(client, steps=6, frames=5, height=48).json()["id"]
            first, second = wait_for(client, first), wait_for(client, second)
            assert first["status"] == second["status"] == "done"
            assert second["started_at"] < first["finished_at"]
            frames = list(imageio.get_reader(client.get(second["files"][0]["url"]).content, "mp4").iter_data())
            assert len(frames) == 5 and frames[0].shape == (48, 64, 3)
    finally:
        server.stop()


def test_binding_beyond_this_machine_needs_a_token(capsys):
    code, err = run_main(capsys, "serve", "--model", "tiny", "--host", "0.0.0.0")
    assert code == 2 and "--token" in err and len(err.strip().splitlines()) == 1


def test_a_killed_rank_fails_its_job_the_next_succeeds_and_a_restart_keeps_and_reruns(tmp_path, cache):
    """One server lifetime: a rank SIGKILLed mid-job fails that job with the reason, the ranks restart and the
    next job succeeds; then a SIGTERM with a job running and one queued, and a restart: finished jobs and their
    files are still there, the unfinished ones run again to the end."""
    out = tmp_path / "out"
    server = Server(out, cache, "--gpus", "1", "--stall-timeout", "20", "--max-queue", "1")
    with server.client() as client:
        server.wait_ready(client)
        doomed = post(client, steps=400).json()["id"]
        wait_for(client, doomed, statuses=("running",))
        rank = next(p for p in psutil.Process(server.process.pid).children(recursive=True)
                    if p.name() == "vidpipe-rank0")
        rank.kill()
        failed = wait_for(client, doomed)
        assert failed["status"] == "failed" and "died unexpectedly (killed by SIGKILL)" in failed["error"]
        server.wait_ready(client)
        health = client.get("/v1/health").json()
        assert health["restarts"] == 1 and "SIGKILL" in health["last_error"]
        finished = post(client, steps=2).json()["id"]
        assert wait_for(client, finished)["status"] == "done"

        running = post(client, steps=400).json()["id"]
        wait_for(client, running, statuses=("running",))
        queued = post(client, steps=3).json()["id"]
        full = post(client, steps=3)  # --max-queue 1: one job already waits
        assert full.status_code == 429 and "queue is full" in full.json()["error"]
    assert server.stop(signal.SIGTERM) == 0
    assert "stopped (SIGTERM)" in server.log.read_text()

    server = Server(out, cache, "--gpus", "1")
    try:
        with server.client() as client:
            kept = client.get(f"/v1/jobs/{finished}").json()
            assert kept["status"] == "done"
            assert client.get(kept["files"][0]["url"]).status_code == 200
            assert client.get(f"/v1/jobs/{doomed}").json()["status"] == "failed"
            client.delete(f"/v1/jobs/{running}")  # re-queued at the restart; 400 steps need not run again here
            assert wait_for(client, running)["status"] == "cancelled"
            assert wait_for(client, queued)["status"] == "done"
    finally:
        server.stop()
    assert not [p for p in psutil.process_iter(["name"]) if p.info["name"] and
                p.info["name"].startswith("vidpipe-rank") and _under(p, server.process.pid)]


def _under(process: psutil.Process, pid: int) -> bool:
    try:
        return any(parent.pid == pid for parent in process.parents())
    except psutil.NoSuchProcess:
        return False


def test_the_ranks_are_named_and_stay_warm(server):
    pid = server.process.pid
    assert psutil.pid_exists(pid)
    # the ranks are the server's grandchildren (through the worker server), named for ps and top
    names = sorted(p.name() for p in psutil.Process(pid).children(recursive=True) if p.name().startswith("vidpipe"))
    assert names == ["vidpipe-rank0", "vidpipe-rank1"]
    assert os.environ.get("VIDPIPE_TOKEN") is None


def test_submit_posts_follows_and_downloads(server, tmp_path):
    """The command-line client, as a user runs it: exit 0 and the videos on disk; a refused field: one line, 2."""
    command = [sys.executable, "-m", "vidpipe", "submit", str(IMAGE), "--server", server.url, "--steps", "3",
               "--samples", "2", "--format", "mp4,gif", "--out", str(tmp_path / "videos")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=vidpipe_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = next((tmp_path / "videos").iterdir())
    assert folder.name.startswith("sunset_")
    assert sorted(p.name for p in folder.iterdir()) == [
        "sunset_input.png", "sunset_s0_seed0.gif", "sunset_s0_seed0.mp4", "sunset_s1_seed1.gif", "sunset_s1_seed1.mp4"]
    assert len(list(imageio.get_reader(folder / "sunset_s1_seed1.mp4", "ffmpeg").iter_data())) == 4
    refused = subprocess.run([*command[:7], "--steps", "0"], capture_output=True, text=True, timeout=60,
                             env=vidpipe_env(), cwd=REPO)
    assert refused.returncode == 2 and "steps 0: must be at least 1" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
