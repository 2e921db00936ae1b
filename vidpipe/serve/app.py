"""The HTTP API of `vidpipe serve` (FastAPI): a thin shell around the engine. Routes validate, enqueue and return;
the work runs on the warm ranks. Every route is documented in docs/serve.md.

Conventions follow cog and ComfyUI: `202` and an unguessable id on submission, status with queue position and
progress, Server-Sent Events, cancel, results that stay retrievable, `/v1/health`. Errors are `{"error": "one
line"}` with the HTTP status that says whose fault it is (422 a field, 413 too large, 429 queue full, 404, 401).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import shutil
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile

from vidpipe import __version__, media
from vidpipe.errors import UsageError
from vidpipe.jobspec import expand, parse_options, parse_sweep
from vidpipe.serve.engine import Engine, QueueFull
from vidpipe.serve.store import FINISHED, JobRecord, now

#: Seconds between two looks at a job's progress for its event stream, and between two keep-alive comments.
EVENTS_POLL_S = 0.2
KEEPALIVE_S = 15.0
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class ApiSettings:
    token: str | None
    max_upload_bytes: int
    source: object  # ModelSource: its family builds each sample's parameters, sizes resolve against it
    base: object  # GenerateConfig: what a job starts from (`jobspec.job_base`)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(engine: Engine, settings: ApiSettings) -> FastAPI:
    app = FastAPI(title="vidpipe", version=__version__, docs_url="/v1/docs", openapi_url="/v1/openapi.json")

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)

    def authorized(request: Request) -> None:
        """Every route but health and the page needs the token when the server has one: `Authorization: Bearer
        TOKEN`, or `?token=TOKEN` where a header cannot be set (a <video src>)."""
        if settings.token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            raise ApiError(401, "missing or wrong bearer token: send Authorization: Bearer <token>")

    @app.get("/v1/health")
    def health() -> dict:
        return {**engine.health(), "version": __version__, "auth": settings.token is not None}

    @app.post("/v1/jobs", status_code=202, dependencies=[Depends(authorized)])
    async def create_job(request: Request):
        job_id = uuid.uuid4().hex  # unguessable, never a timestamp
        folder = engine.job_dir(job_id)
        try:
            record = await _accept(request, job_id, folder, engine, settings)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return {"id": job_id, "status": record.status, "url": f"/v1/jobs/{job_id}"}

    @app.get("/v1/jobs", dependencies=[Depends(authorized)])
    def list_jobs(limit: int = 50) -> dict:
        records = engine.store.recent(max(1, min(limit, 500)))
        return {"jobs": [snapshot(engine, engine.record(r.id) or r) for r in records]}

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(authorized)])
    def get_job(job_id: str) -> dict:
        return snapshot(engine, _record(engine, job_id))

    @app.delete("/v1/jobs/{job_id}", dependencies=[Depends(authorized)])
    def cancel_job(job_id: str) -> dict:
        _record(engine, job_id)
        engine.cancel(job_id)
        return snapshot(engine, _record(engine, job_id))

    @app.get("/v1/jobs/{job_id}/events", dependencies=[Depends(authorized)])
    async def job_events(job_id: str):
        _record(engine, job_id)
        return StreamingResponse(_events(engine, job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/files/{job_id}/{name:path}", dependencies=[Depends(authorized)])
    def get_file(job_id: str, name: str):
        record = _record(engine, job_id)
        folder = engine.job_dir(record.id).resolve()
        path = (folder / name).resolve()
        # NOTE: nothing outside the job's folder is ever served, whatever `..` or symlink the name holds.
        if not path.is_relative_to(folder) or not path.is_file() or path.name.startswith("."):
            raise ApiError(404, f"no file '{name}' in job {job_id}")
        return FileResponse(path)

    static = Path(str(resources.files("vidpipe.serve") / "static"))
    if (static / "index.html").is_file():

        @app.get("/", include_in_schema=False)
        def page():
            return FileResponse(static / "index.html")

        @app.get("/static/{name}", include_in_schema=False)
        def static_file(name: str):
            path = (static / name).resolve()
            if not path.is_relative_to(static.resolve()) or not path.is_file():
                raise ApiError(404, f"no static file '{name}'")
            return FileResponse(path)

    return app


async def _accept(request: Request, job_id: str, folder: Path, engine: Engine, settings: ApiSettings) -> JobRecord:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_upload_bytes + 65536:
        raise ApiError(413, f"upload of {int(length)} bytes: larger than the server's limit of "
                            f"{settings.max_upload_bytes} bytes (--max-upload-mb)")
    try:
        form = await request.form(max_files=1, max_fields=64)
    except Exception as error:  # noqa: BLE001 - a malformed body is the client's
        raise ApiError(422, f"could not read the form: {error}; send multipart/form-data with a file field "
                            "'image'") from None
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "image: an image file is required (multipart field 'image')")
    name = _safe_stem(upload.filename or "image")
    image_path = folder / "input" / f"{name}{Path(upload.filename or '').suffix.lower()[:8]}"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with image_path.open("wb") as handle:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            if size > settings.max_upload_bytes:
                raise ApiError(413, f"image: larger than the server's limit of {settings.max_upload_bytes} bytes "
                                    "(--max-upload-mb)")
            handle.write(chunk)
    try:
        media.load_image(image_path)  # the same checks as generate's
        fields = {k: v for k, v in form.items() if k not in ("image", "sweep")}
        options = parse_options(fields)
        sweep = parse_sweep(form["sweep"]) if form.get("sweep") else None
        specs, formats = expand(options, sweep, settings.source, engine.plan, settings.base)
    except UsageError as error:
        message = str(error).replace(str(image_path), f"'{upload.filename or 'image'}'")
        raise ApiError(422, message) from None
    record = JobRecord(
        id=job_id, seq=engine.store.next_seq(), status="queued", created_at=now(),
        request={**options, **({"sweep": sweep} if sweep else {})}, image_path=str(image_path), image_name=name,
        samples_total=len(specs), steps_total=sum(spec.params.steps for spec in specs),
    )
    try:
        engine.submit(record, specs, formats)
    except QueueFull as error:
        raise ApiError(429, str(error)) from None
    return record


def _safe_stem(filename: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(filename).stem).strip("-._")
    return stem[:64] or "image"


def _record(engine: Engine, job_id: str) -> JobRecord:
    record = engine.record(job_id) if _JOB_ID.match(job_id) else None
    if record is None:
        raise ApiError(404, f"no job {job_id}")
    return record


def snapshot(engine: Engine, record: JobRecord) -> dict:
    """A job as the API shows it."""
    started, finished = record.started_at, record.finished_at
    return {
        "id": record.id,
        "status": record.status,
        "queue_position": engine.queue_position(record.id) if record.status == "queued" else None,
        "progress": {"steps_done": record.steps_done, "steps_total": record.steps_total,
                     "samples_done": record.samples_done, "samples_total": record.samples_total},
        "files": [{"name": name, "url": f"/v1/files/{record.id}/{name}"} for name in record.files],
        "error": record.error,
        "image": record.image_name,
        "input_url": f"/v1/files/{record.id}/input/{Path(record.image_path).name}",
        "options": {k: v for k, v in record.request.items() if not k.startswith("_")},
        "created_at": record.created_at,
        "started_at": started,
        "finished_at": finished,
        "timings": {
            "queued_s": round((started or finished or now()) - record.created_at, 3),
            "run_s": round((finished or now()) - started, 3) if started else None,
            "submit_to_first_step_s": round(record.first_step_at - record.created_at, 3)
            if record.first_step_at else None,
            "sample_latency_s": record.latencies_s,
        },
    }


async def _events(engine: Engine, job_id: str):
    """`progress` events whenever the job changes, then one `end` event with its final state."""
    last, quiet = None, 0.0
    while True:
        record = engine.record(job_id)
        state = snapshot(engine, record)
        comparable = {k: v for k, v in state.items() if k != "timings"}
        if comparable != last:
            last, quiet = comparable, 0.0
            yield f"event: progress\ndata: {json.dumps(state)}\n\n"
        if record.status in FINISHED:
            yield f"event: end\ndata: {json.dumps(state)}\n\n"
            return
        await asyncio.sleep(EVENTS_POLL_S)
        quiet += EVENTS_POLL_S
        if quiet >= KEEPALIVE_S:
            quiet = 0.0
            yield ": keep-alive\n\n"
