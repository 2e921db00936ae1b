"""Schemathesis against a real `vidpipe serve --model tiny` on a local port: requests for every route, generated
from the OpenAPI schema the server publishes (its multipart form included, with the limits as bounds). None may
end in a 5xx or an undocumented status or content type, none may hang, and the server must be healthy after."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_serve import Server
from vidpipe.models.registry import resolve_model

#: Per operation; about 250 requests in all over the seven routes (the note gives a longer run's figures).
MAX_EXAMPLES = 8


def schemathesis_command() -> list[str] | None:
    cli = Path(sys.executable).with_name("st")
    return [str(cli)] if cli.is_file() else ([shutil.which("st")] if shutil.which("st") else None)


@pytest.mark.skipif(schemathesis_command() is None, reason="schemathesis is not installed (pip install -e .[dev])")
def test_fuzzing_every_route_finds_no_server_error(tmp_path):
    cache = tmp_path / "cache"
    resolve_model("tiny", cache_dir=cache)
    server = Server(tmp_path / "out", cache, "--gpus", "1", "--max-queue", "3", "--max-steps", "40",
                    "--max-samples-per-job", "7", env_extra={"VIDPIPE_THREADS_PER_RANK": "1"})
    try:
        with server.client() as client:
            server.wait_ready(client)
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
    finally:
        assert server.stop() == 0

