"""What the checks that are more than one command share: their children's environment, polling, and their JSON."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

CHILD = "VIDPIPE_GPU_CHECK_CHILD"  # marks the processes a serve or fault check starts (it carries MARKER too)


def child_env(marker: str, **extra: str) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", CHILD: marker, **extra}


def wait_for(condition, timeout_s: float, what: str, process: subprocess.Popen | None = None,
              every_s: float = 0.1):
    """Poll `condition()` until it returns something truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited ({process.returncode}) while waiting for {what}")
        time.sleep(every_s)
    raise TimeoutError(f"no {what} within {timeout_s:.0f} s")


def finish_check(result: dict, json_path: str) -> int:
    failed = [name for name, passed in result["checks"].items() if passed is not True]
    result["problems"] = ([f"failed checks: {', '.join(failed)}"] if failed else []) + \
        ([result["error"]] if result.get("error") else [])
    return write_check(result, json_path)


def write_check(result: dict, json_path: str) -> int:
    """Write a check's JSON, print it and, when it failed, one line saying why (the step's reason)."""
    Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if result["problems"]:
        print(f"gpu-check: failed: {'; '.join(result['problems'])}")
    return 1 if result["problems"] else 0
