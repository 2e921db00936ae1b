"""Per-sample latency on a warm `vidpipe serve` against the same samples inside one `vidpipe generate` run, and the
time from POST to the job's first step. Not a test: a measurement, run by hand (both on this machine, one after
the other, never at once).

    .venv/bin/python scripts/serve_overhead.py [--model small] [--steps 4] [--jobs 3] [--gpus 1]

Latency is defined as everywhere in vidpipe: a sample's first step began -> its last step ended. The server
reports it per sample (`timings.sample_latency_s`), generate in its JSON (`per_sample_latency_s`). One warm-up
job (and one warm-up sample in generate) runs first, unmeasured.
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
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "sunset.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    env = {**os.environ, "VIDPIPE_THREADS_PER_RANK": os.environ.get("VIDPIPE_THREADS_PER_RANK", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        served, first_steps = serve_latencies(args, Path(tmp), env)
        generated = generate_latencies(args, Path(tmp), env)
    s, g = statistics.median(served), statistics.median(generated)
    print(f"model {args.model}, {args.steps} steps, {args.gpus} rank(s), {args.device}, {args.jobs} samples each")
    print(f"warm server, per-sample latency s: {', '.join(f'{x:.3f}' for x in served)} (median {s:.3f})")
    print(f"one generate run, per-sample latency s: {', '.join(f'{x:.3f}' for x in generated)} (median {g:.3f})")
    print(f"server overhead on latency: {100 * (s - g) / g:+.1f} %")
    print(f"POST -> first step on the warm server s: {', '.join(f'{x:.3f}' for x in first_steps)} "
          f"(median {statistics.median(first_steps):.3f})")


def serve_latencies(args, tmp: Path, env: dict) -> tuple[list[float], list[float]]:
    log = tmp / "serve.log"
    command = [sys.executable, "-m", "vidpipe", "serve", "--model", args.model, "--gpus", str(args.gpus),
               "--device", args.device, "--port", "0", "--out", str(tmp / "serve")]
    with log.open("w") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        while not (match := re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())):
            time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{match.group(1)}", timeout=600) as client:
            while client.get("/v1/health").json()["status"] != "ready":
                time.sleep(0.2)
            latencies, first_steps = [], []
            for number in range(args.jobs + 1):
                with IMAGE.open("rb") as image:
                    job = client.post("/v1/jobs", data={"steps": str(args.steps), "seed": str(number)},
                                      files={"image": (IMAGE.name, image)}).json()
                while (state := client.get(f"/v1/jobs/{job['id']}").json())["status"] not in ("done", "failed"):
                    time.sleep(0.05)
                if number > 0:  # job 0 warms up
                    latencies += state["timings"]["sample_latency_s"]
                    first_steps.append(state["timings"]["submit_to_first_step_s"])
            return latencies, first_steps
    finally:
        server.terminate()
        server.wait(timeout=60)


def generate_latencies(args, tmp: Path, env: dict) -> list[float]:
    report = tmp / "generate.json"
    subprocess.run([sys.executable, "-m", "vidpipe", "generate", str(IMAGE), "--model", args.model, "--gpus",
                    str(args.gpus), "--strategy", "dp", "--device", args.device, "--steps", str(args.steps),
                    "--samples", str(args.jobs), "--warmup-samples", "1", "--out", str(tmp / "generate"),
                    "--json", str(report)], check=True, env=env, cwd=REPO, capture_output=True)
    return json.loads(report.read_text())["per_sample_latency_s"]


if __name__ == "__main__":
    main()
