"""A bounded loopback load test of `vidpipe serve`: some clients submit small jobs, others poll their status and
/v1/health, others follow their event streams, for a while; then every submitted job is waited for. Reports the
p50 / p99 / max latency of `GET /v1/jobs/{id}` and `/v1/health` under that load, jobs submitted against jobs
finished (nothing may be lost), and the server process's peak memory. A measurement, not a test (the test runs it
briefly: tests/test_serve_load.py).

    .venv/bin/python scripts/serve_load.py [--seconds 60] [--gpus 2] [--json report.json]

It starts its own server (`--model tiny --device cpu`, 127.0.0.1, a free port) unless given `--server URL`, which
must be a loopback address: this never loads anyone else's machine. Requests are capped (`--max-requests`) as
well as the time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "sunset.png"
FINISHED = ("done", "failed", "cancelled")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Load:
    """What the clients share: the jobs submitted so far, every request's latency by route, and a request budget."""

    def __init__(self, url: str, seconds: float, max_requests: int):
        self.url, self.deadline, self.budget = url, time.monotonic() + seconds, max_requests
        self.lock = threading.Lock()
        self.jobs: list[str] = []
        self.latency: dict[str, list[float]] = {"health": [], "job": [], "submit": []}
        self.statuses: dict[str, dict[int, int]] = {route: {} for route in self.latency}
        self.refused = 0
        self.errors: list[str] = []
        self.events = 0

    def running(self) -> bool:
        with self.lock:
            return time.monotonic() < self.deadline and self.budget > 0

    def request(self, client: httpx.Client, route: str, method: str, path: str, **kwargs) -> httpx.Response | None:
        with self.lock:
            self.budget -= 1
        start = time.perf_counter()
        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            with self.lock:
                self.errors.append(f"{route}: {error!r}")
            return None
        with self.lock:
            self.latency[route].append(time.perf_counter() - start)
            counts = self.statuses[route]
            counts[response.status_code] = counts.get(response.status_code, 0) + 1
        return response


def submitter(load: Load, number: int) -> None:
    with httpx.Client(base_url=load.url, timeout=30) as client:
        while load.running():
            with IMAGE.open("rb") as image:
                response = load.request(client, "submit", "POST", "/v1/jobs",
                                        data={"steps": str(2 + number % 3), "seed": str(number)},
                                        files={"image": (IMAGE.name, image, "image/png")})
            if response is not None and response.status_code == 202:
                with load.lock:
                    load.jobs.append(response.json()["id"])
            elif response is not None and response.status_code == 429:
                with load.lock:
                    load.refused += 1
                time.sleep(float(response.headers.get("retry-after", "1")) / 10)
            time.sleep(0.3)


def poller(load: Load, number: int) -> None:
    with httpx.Client(base_url=load.url, timeout=30) as client:
        turn = number
        while load.running():
            load.request(client, "health", "GET", "/v1/health")
            with load.lock:
                job = load.jobs[turn % len(load.jobs)] if load.jobs else None
            if job is not None:
                load.request(client, "job", "GET", f"/v1/jobs/{job}")
            turn += 1
            time.sleep(0.02)


def streamer(load: Load, number: int) -> None:
    with httpx.Client(base_url=load.url, timeout=60) as client:
        followed = number
        while load.running():
            with load.lock:
                job = load.jobs[followed % len(load.jobs)] if load.jobs else None
            if job is None:
                time.sleep(0.1)
                continue
            followed += 1
            try:
                with client.stream("GET", f"/v1/jobs/{job}/events") as stream:
                    for line in stream.iter_lines():
                        if line.startswith("event:"):
                            with load.lock:
                                load.events += 1
                        if line.startswith("event: end") or not load.running():
                            break
            except httpx.HTTPError as error:
                with load.lock:
                    load.errors.append(f"events: {error!r}")


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {"count": len(ordered), "p50_ms": round(1000 * statistics.median(ordered), 2),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
            "max_ms": round(1000 * ordered[-1], 2), "over_100_ms": sum(1 for v in ordered if v > 0.1)}


def run(url: str, server_pid: int | None, args) -> dict:
    load = Load(url, args.seconds, args.max_requests)
    memory = {"peak_rss": 0}
    stop = threading.Event()

    def watch_memory():
        if server_pid is None:
            return
        process = psutil.Process(server_pid)
        while not stop.wait(0.2):
            memory["peak_rss"] = max(memory["peak_rss"], process.memory_info().rss)

    roles = ([(submitter, n) for n in range(args.submitters)] + [(poller, n) for n in range(args.pollers)]
             + [(streamer, n) for n in range(args.streamers)])
    threads = [threading.Thread(target=role, args=(load, n), daemon=True) for role, n in roles]
    threads.append(threading.Thread(target=watch_memory, daemon=True))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads[:-1]:
        thread.join(timeout=args.seconds + 120)
    load_s = time.monotonic() - started
    # Every job submitted must end: wait for them all (the ranks work through the queue after the load stops).
    ends: dict[str, str] = {}
    deadline = time.monotonic() + args.drain_timeout
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < deadline and len(ends) < len(load.jobs):
            for job in load.jobs:
                if job not in ends:
                    status = client.get(f"/v1/jobs/{job}").json()["status"]
                    if status in FINISHED:
                        ends[job] = status
            time.sleep(0.5)
        health = client.get("/v1/health").json()
    stop.set()
    ended = {status: sum(1 for s in ends.values() if s == status) for status in FINISHED}
    return {
        "url": url, "seconds": round(load_s, 1), "clients": {"submitters": args.submitters,
                                                             "pollers": args.pollers, "streamers": args.streamers},
        "requests": sum(len(v) for v in load.latency.values()), "request_errors": load.errors[:10],
        "status_codes": {route: {str(k): v for k, v in counts.items()} for route, counts in load.statuses.items()},
        "latency": {route: percentiles(values) for route, values in load.latency.items()},
        "jobs": {"submitted": len(load.jobs), "refused_429": load.refused, **ended,
                 "lost": len(load.jobs) - len(ends)},
        "events_received": load.events,
        "server_peak_rss_mb": round(memory["peak_rss"] / 2**20, 1) if server_pid else None,
        "server_restarts": health["restarts"],
    }


def start_server(args, folder: Path) -> tuple[subprocess.Popen, str]:
    log = folder / "serve.log"
    command = [sys.executable, "-m", "vidpipe", "serve", "--model", "tiny", "--device", "cpu", "--gpus",
               str(args.gpus), "--port", "0", "--out", str(folder / "serve"), "--max-queue", str(args.max_queue)]
    env = {**os.environ, "VIDPIPE_THREADS_PER_RANK": os.environ.get("VIDPIPE_THREADS_PER_RANK", "1")}
    with log.open("w") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.monotonic() + 120
    while not (match := re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())):
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start: " + log.read_text())
        time.sleep(0.1)
    url = f"http://127.0.0.1:{match.group(1)}"
    with httpx.Client(base_url=url, timeout=10) as client:
        while client.get("/v1/health").json()["status"] != "ready":
            time.sleep(0.2)
    return server, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the clients load the server")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop earlier after this many")
    parser.add_argument("--submitters", type=int, default=2)
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument("--streamers", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=2, help="ranks of the server this starts")
    parser.add_argument("--max-queue", type=int, default=100)
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="seconds to wait for the jobs to end")
    parser.add_argument("--server", help="a running server's URL (loopback only) instead of starting one")
    parser.add_argument("--server-pid", type=int, help="with --server: its process, for its peak memory")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()
    if args.server:
        if urlparse(args.server).hostname not in LOOPBACK:
            raise SystemExit(f"--server {args.server}: loopback addresses only (127.0.0.1, localhost)")
        report = run(args.server.rstrip("/"), args.server_pid, args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            server, url = start_server(args, Path(tmp))
            try:
                report = run(url, server.pid, args)
            finally:
                server.terminate()
                server.wait(timeout=60)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    sys.exit(0 if report["jobs"]["lost"] == 0 and not report["request_errors"] else 1)


if __name__ == "__main__":
    main()
