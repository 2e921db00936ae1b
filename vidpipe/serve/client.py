"""`vidpipe submit`: post jobs to a running `vidpipe serve`, follow them with the same kind of progress display as
`generate`, and download what they made. httpx for HTTP, the server's own event stream for progress."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vidpipe.errors import Interrupted, UsageError, VidpipeError
from vidpipe.media.atomic import atomic_output
from vidpipe.report import stderr_console

#: How long `submit` keeps posting a job the server's full queue refuses (429), or its unreachable job store (503),
#: waiting as `Retry-After` says.
QUEUE_FULL_WAIT_S = 600.0
#: Posts of a job whose answer never came (the connection broke): each is safe, the Idempotency-Key makes the server
#: return the job a lost answer had made instead of a second one.
POST_TRIES = 4


@dataclass(frozen=True)
class SubmitConfig:
    images: tuple[str, ...]
    server: str
    options: dict  # job options as generate names them (only those given)
    sweep: str | None = None  # JSON text
    out: str = "outputs"
    token: str | None = None
    overwrite: bool = False
    timeout_s: float = 30.0


def submit(config: SubmitConfig) -> list[dict]:
    """Post one job per image, follow them all to the end, download their files; returns their final states."""
    for image in config.images:
        if not Path(image).is_file():
            raise UsageError(f"{image}: no such file; give image files to submit")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    with httpx.Client(base_url=config.server.rstrip("/"), headers=headers, timeout=config.timeout_s) as client:
        jobs = [_post(client, image, config) for image in config.images]
        try:
            finals = _follow(client, jobs)
        except (KeyboardInterrupt, Interrupted):
            for job in jobs:  # what this command started, it stops
                _request(client, "DELETE", f"/v1/jobs/{job['id']}")
            stderr_console.print(f"cancelled {len(jobs)} job(s) on {config.server}")
            raise
        for state in finals:
            if state["status"] == "done":
                _download(client, state, out, config.overwrite)
    failed = [s for s in finals if s["status"] != "done"]
    for state in failed:
        stderr_console.print(f"job {state['id']} ({state['image']}): {state['status']}"
                             + (f": {state['error']}" if state.get("error") else ""), highlight=False)
    if failed:
        raise VidpipeError(f"{len(failed)} of {len(finals)} job(s) did not finish: see above")
    return finals


def _post(client: httpx.Client, image: str, config: SubmitConfig) -> dict:
    """Post one job. Every post of it carries the same Idempotency-Key, so posting again after a broken connection
    (a fleet's node that died, say) never makes a second job."""
    data = {name: str(value) for name, value in config.options.items()}
    if config.sweep:
        data["sweep"] = config.sweep
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    waited, tries = 0.0, 0
    while True:
        tries += 1
        try:
            with open(image, "rb") as handle:
                response = _request(client, "POST", "/v1/jobs", data=data, headers=headers, retry_on_full=True,
                                    files={"image": (Path(image).name, handle)})
        except VidpipeError as error:
            if isinstance(error, UsageError) or tries >= POST_TRIES:
                raise
            stderr_console.print(f"{image}: {error}; posting again in {tries} s", highlight=False, markup=False)
            time.sleep(tries)
            continue
        if response.status_code not in (429, 503):
            break
        # The queue, or this client's share of it, is full, or the job store is away: wait as the server asks.
        delay = max(1.0, float(response.headers.get("retry-after") or 10))
        if waited + delay > QUEUE_FULL_WAIT_S:
            raise VidpipeError(f"the server's queue stayed full for {waited:.0f} s: {_error_text(response)}")
        stderr_console.print(f"{image}: {_error_text(response)}; posting again in {delay:.0f} s", highlight=False)
        time.sleep(delay)
        waited += delay
    job = response.json()
    stderr_console.print(f"{image}: job {job['id']} {job['status']}", highlight=False)
    return {**job, "image_path": image}


def _request(client: httpx.Client, method: str, url: str, retry_on_full: bool = False, **kwargs) -> httpx.Response:
    try:
        response = client.request(method, url, **kwargs)
    except httpx.HTTPError as error:
        raise VidpipeError(f"cannot reach {client.base_url}: {error}; is `vidpipe serve` running there?") from None
    if response.status_code in (401, 413, 422):
        raise UsageError(f"the server refused the job ({response.status_code}): {_error_text(response)}")
    if response.status_code in (429, 503) and retry_on_full:
        return response
    if response.status_code >= 400:
        raise VidpipeError(f"the server answered {response.status_code}: {_error_text(response)}")
    return response


def _error_text(response: httpx.Response) -> str:
    try:
        return response.json().get("error") or response.text
    except ValueError:
        return response.text


def _follow(client: httpx.Client, jobs: list[dict]) -> list[dict]:
    """Each job's event stream in turn (they run in the server's order anyway), one progress bar per job."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=stderr_console)
    finals = []
    with progress:
        bars = {job["id"]: progress.add_task(f"{Path(job['image_path']).name} {job['id'][:8]}", total=None,
                                             status="queued") for job in jobs}
        for job in jobs:
            final = None
            for kind, state in _events(client, job["id"]):
                position = f" #{state['queue_position']}" if state.get("queue_position") else ""
                progress.update(bars[job["id"]], completed=state["progress"]["steps_done"],
                                total=state["progress"]["steps_total"], status=state["status"] + position)
                if kind == "end":
                    final = state
            finals.append(final or _request(client, "GET", f"/v1/jobs/{job['id']}").json())
    return finals


def _events(client: httpx.Client, job_id: str):
    """(event, data) pairs of a job's Server-Sent Events stream."""
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(30.0, read=None)) as stream:
            kind, data = None, []
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and kind and data:
                    yield kind, json.loads("\n".join(data))
                    kind, data = None, []
    except httpx.HTTPError as error:
        raise VidpipeError(f"lost the server while following job {job_id}: {error}") from None


def _download(client: httpx.Client, state: dict, out: Path, overwrite: bool) -> None:
    """Into `out/<image>_<job id prefix>/`: two jobs of the same image and seeds make files of the same names."""
    folder = out / f"{state['image']}_{state['id'][:8]}"
    for file in state["files"]:
        target = folder / file["name"]
        if target.exists() and not overwrite:
            raise UsageError(f"{target} already exists: pass --overwrite to replace it, or choose another --out")
        response = _request(client, "GET", file["url"])
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as temp:
            temp.write_bytes(response.content)
        stderr_console.print(f"  {target}", highlight=False)
