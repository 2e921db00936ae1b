"""Throughput of a fleet: the same jobs through 1 node x 1 rank, then through 2 nodes x 1 rank on one Postgres
queue, each node warm before the clock starts. Reports jobs per minute of each and their ratio (2 nodes / 1 node).

    .venv/bin/python scripts/fleet_throughput.py [--jobs 12] [--steps 4] [--frames 4] [--size 128x128]
        [--model small] [--json report.json]

On a 2-core machine, each rank gets one thread (VIDPIPE_THREADS_PER_RANK=1), so two nodes are two equal devices
and the ratio is measured compute, not a model. It starts a throwaway Postgres (Debian's postgresql binaries, as
the tests do) unless given `--store DSN`; each run gets a database of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
IMAGE = REPO / "examples" / "sunset.png"


def start_node(name: str, dsn: str, out: Path, args) -> tuple[subprocess.Popen, str, Path]:
    log = out.parent / f"node-{name}.log"
    env = {**os.environ, "VIDPIPE_THREADS_PER_RANK": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "vidpipe", "serve", "--model", args.model, "--device", "cpu", "--gpus", "1",
               "--port", "0", "--out", str(out), "--store", dsn, "--node-name", name]
    if args.cache_dir:
        command += ["--cache-dir", args.cache_dir]
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    deadline = time.monotonic() + 300
    while not (match := re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"node {name} did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return process, f"http://127.0.0.1:{match.group(1)}", log


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 600
    while httpx.get(f"{url}/v1/health").json()["status"] != "ready":
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not get ready")
        time.sleep(0.2)


def run(nodes: int, dsn: str, args) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"vidpipe-fleet-{nodes}-")) / "out"
    started = [start_node(chr(ord("a") + i), dsn, out, args) for i in range(nodes)]
    try:
        for _process, url, _log in started:
            wait_ready(url)
        url = started[0][1]
        height, width = args.size.split("x")
        fields = {"steps": str(args.steps), "frames": str(args.frames), "height": height, "width": width,
                  "format": "mp4"}
        with httpx.Client(base_url=url, timeout=120) as client:
            client.post("/v1/jobs", data={**fields, "seed": "999"}, files={"image": IMAGE.open("rb")})  # warm-up
            warm = client.get("/v1/jobs").json()["jobs"][0]["id"]
            while client.get(f"/v1/jobs/{warm}").json()["status"] not in ("done", "failed"):
                time.sleep(0.1)
            t0 = time.perf_counter()
            ids = [client.post("/v1/jobs", data={**fields, "seed": str(i)}, files={"image": IMAGE.open("rb")})
                   .json()["id"] for i in range(args.jobs)]
            ends = []
            for job in ids:
                while (state := client.get(f"/v1/jobs/{job}").json())["status"] not in ("done", "failed",
                                                                                        "cancelled"):
                    time.sleep(0.05)
                ends.append(state)
            seconds = time.perf_counter() - t0
        assert all(e["status"] == "done" for e in ends), [e["error"] for e in ends if e["status"] != "done"]
        per_node = {}
        for end in ends:
            per_node[end["node"]] = per_node.get(end["node"], 0) + 1
        return {"nodes": nodes, "jobs": args.jobs, "seconds": round(seconds, 2),
                "jobs_per_minute": round(60 * args.jobs / seconds, 2), "jobs_per_node": per_node}
    finally:
        for process, _url, _log in started:
            process.terminate()
        for process, _url, _log in started:
            process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", default="128x128", help="HEIGHTxWIDTH of every video")
    parser.add_argument("--model", default="small")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--store", default=None, help="a postgresql:// DSN (default: a throwaway cluster)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cluster = None
    if args.store is None:
        from tests.postgres_cluster import start_cluster

        cluster, why = start_cluster()
        if cluster is None:
            raise SystemExit(why)
    try:
        database = (lambda: cluster.fresh_database()) if cluster else (lambda: args.store)
        one = run(1, database(), args)
        two = run(2, database(), args)
    finally:
        if cluster:
            cluster.stop()
    report = {"model": args.model, "steps": args.steps, "frames": args.frames, "size": args.size,
              "threads_per_rank": 1, "one_node": one, "two_nodes": two,
              "ratio": round(one["seconds"] / two["seconds"], 3)}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
