"""The HTTP API of `vidpipe serve` (FastAPI): a thin shell around the engine. Routes validate, enqueue and return;
the work runs on the warm ranks. Every route is documented in docs/serve.md.

Conventions follow cog and ComfyUI: `202` and an unguessable id on submission, status with queue position and
progress, Server-Sent Events, cancel, results that stay retrievable, `/v1/health`. Errors are `{"error": "one
line"}` with the HTTP status that says whose fault it is (422 a field, 413 too large, 429 queue full, 404, 401,
503 the job store unreachable).

Any node of a fleet answers every route for every job: a job this node runs is read from its memory, any other
from the store's row.

The event loop never does work that grows with a job's size or waits for the engine's lock: checking a job runs in
the thread pool (and builds only its distinct samples), health is read from what the engine last published, a job
list is one page of summaries.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import shutil
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile

from vidpipe import __version__, media
from vidpipe.errors import UsageError
from vidpipe.jobspec import parse_options, parse_sweep
from vidpipe.serve.engine import Engine, QueueFull
from vidpipe.serve.schema import ERROR_RESPONSES, JOB_LINKS, job_form_schema
from vidpipe.serve.store import FINISHED, JobRecord, StoreUnavailable, now

#: Seconds between two looks at a job's progress for its event stream, and between two keep-alive comments.
EVENTS_POLL_S = 0.2
KEEPALIVE_S = 15.0
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
#: An Idempotency-Key: what a client may send (a UUID fits well).
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


#: What a job's files are served as (videos, GIFs, PNG frames, latents, the upload).
FILE_TYPES = {kind: {} for kind in ("video/mp4", "image/gif", "image/png", "image/jpeg", "image/webp",
                                    "application/octet-stream")}
#: The most jobs one page of `GET /v1/jobs` holds.
MAX_PAGE = 500


@dataclass(frozen=True)
class ApiSettings:
    tokens: tuple[str, ...]  # each a client's; none: no token needed (a client is then its address)
    max_upload_bytes: int


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def create_app(engine: Engine, settings: ApiSettings) -> FastAPI:
    app = FastAPI(title="vidpipe", version=__version__, docs_url="/v1/docs", openapi_url="/v1/openapi.json")

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else error.headers
        return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(_request: Request, error: StoreUnavailable):
        return JSONResponse({"error": f"the job store is unreachable ({error}); nothing was changed: try again"},
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": f"{where} {first.get('input')!r}: {first.get('msg', 'invalid').lower()}"},
                            status_code=422)

    def client_of(request: Request) -> str:
        """Who is asking: a digest of their token (never the token), or their address where the server has no
        token. Every route but health and the page needs a token when the server has any: `Authorization: Bearer
        TOKEN`, or `?token=TOKEN` where a header cannot be set (a <video src>)."""
        if not settings.tokens:
            return f"address {request.client.host if request.client else 'unknown'}"
        header = request.headers.get("authorization", "")
        given = (header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")).encode()
        # NOTE: every token is compared, whichever matches, so the time taken says nothing about which one.
        matches = [hmac.compare_digest(given, token.encode()) for token in settings.tokens]
        if not any(matches):
            raise ApiError(401, "missing or wrong bearer token: send Authorization: Bearer <token>")
        return "token " + hashlib.sha256(given).hexdigest()[:12]

    authorized = Depends(client_of)

    @app.get("/v1/health")
    async def health() -> dict:
        return {**engine.health(), "version": __version__, "auth": bool(settings.tokens)}

    @app.post("/v1/jobs", status_code=202, responses={202: {"description": "queued", "links": JOB_LINKS},
                                                      **ERROR_RESPONSES},
              openapi_extra={"requestBody": job_form_schema(engine)})
    async def create_job(request: Request, client: str = authorized):
        """Answers 202 once the job is committed to the store. A retried POST with the same `Idempotency-Key`
        header (from the same client) returns the job the first one made."""
        key = request.headers.get("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.match(key):
            raise ApiError(422, "Idempotency-Key: 1 to 200 printable ASCII characters (a UUID, say)")
        job_id = uuid.uuid4().hex  # unguessable, never a timestamp
        folder = engine.job_dir(job_id)
        try:
            record = await _accept(request, job_id, folder, engine, settings, client, key)
        except BaseException:
            await run_in_threadpool(shutil.rmtree, folder, True)
            raise
        if record.id != job_id:  # the key's first POST made the job: this upload is not needed
            await run_in_threadpool(shutil.rmtree, folder, True)
        return {"id": record.id, "status": record.status, "url": f"/v1/jobs/{record.id}"}

    @app.get("/v1/jobs", dependencies=[authorized], responses=ERROR_RESPONSES)
    def list_jobs(limit: int = Query(50, ge=1, le=MAX_PAGE),
                  cursor: str | None = Query(None, pattern=r"^[0-9]{1,18}$",
                                             description="next_cursor of the previous page")) -> dict:
        """One page of jobs, newest first, as summaries (a job's options, sweep and files: GET /v1/jobs/{id})."""
        records = engine.store.recent(limit, int(cursor) if cursor else None)
        positions = engine.queue_positions()
        jobs = [summary(engine.held(r.id) or r, positions) for r in records]
        return {"jobs": jobs, "next_cursor": str(records[-1].seq) if len(records) == limit else None}

    @app.get("/v1/jobs/{job_id}", dependencies=[authorized], responses=ERROR_RESPONSES, operation_id="get_job")
    def get_job(job_id: str) -> dict:
        return snapshot(engine, _record(engine, job_id))

    @app.delete("/v1/jobs/{job_id}", dependencies=[authorized], responses=ERROR_RESPONSES,
                operation_id="cancel_job")
    def cancel_job(job_id: str) -> dict:
        _record(engine, job_id)
        engine.cancel(job_id)
        return snapshot(engine, _record(engine, job_id))

    @app.get("/v1/jobs/{job_id}/events", dependencies=[authorized], response_class=StreamingResponse,
             operation_id="job_events",
             responses={200: {"description": "Server-Sent Events", "content": {"text/event-stream": {}}},
                        **ERROR_RESPONSES})
    async def job_events(job_id: str):
        await run_in_threadpool(_record, engine, job_id)
        return StreamingResponse(_events(engine, job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/files/{job_id}/{name:path}", dependencies=[authorized], response_class=FileResponse,
             responses={200: {"description": "the file", "content": FILE_TYPES}, **ERROR_RESPONSES})
    def get_file(job_id: str, name: str):
        """A file of the job's last attempt (`attempt-<n>/` in its folder), or its upload (`input/...`)."""
        record = _record(engine, job_id)
        folder = engine.job_dir(record.id).resolve()
        for base in (engine.files_dir(record).resolve(), folder):
            path = (base / name).resolve()
            # NOTE: nothing outside the job's folder is ever served, whatever `..` or symlink the name holds.
            if path.is_relative_to(folder) and path.is_file() and not path.name.startswith("."):
                return FileResponse(path)
        raise ApiError(404, f"no file '{name}' in job {job_id}")

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


async def _accept(request: Request, job_id: str, folder: Path, engine: Engine, settings: ApiSettings,
                  client: str, idempotency_key: str | None) -> JobRecord:
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
    await run_in_threadpool(image_path.parent.mkdir, parents=True, exist_ok=True)
    size = 0
    with image_path.open("wb") as handle:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            if size > settings.max_upload_bytes:
                raise ApiError(413, f"image: larger than the server's limit of {settings.max_upload_bytes} bytes "
                                    "(--max-upload-mb)")
            handle.write(chunk)
    fields = {k: v for k, v in form.items() if k not in ("image", "sweep")}
    sweep_text = form.get("sweep")
    if sweep_text is not None and not isinstance(sweep_text, str):
        raise ApiError(422, "sweep: send it as a text field (a JSON list), not a file")
    return await run_in_threadpool(_admit, engine, job_id, image_path, name, upload.filename, fields, sweep_text,
                                   client, idempotency_key)


def _admit(engine: Engine, job_id: str, image_path: Path, name: str, filename: str | None, fields: dict,
           sweep_text: str | None, client: str, idempotency_key: str | None) -> JobRecord:
    """Check a job and queue it (in the thread pool: decoding the image and checking a sweep take time)."""
    try:
        media.load_image(image_path)  # the same checks as generate's
        options = parse_options(fields)
        sweep = parse_sweep(sweep_text, limits=engine.limits) if sweep_text else None
        request = {**options, **({"sweep": sweep} if sweep else {})}
        job = engine.check(request)
    except UsageError as error:
        message = str(error).replace(str(image_path), f"'{filename or 'image'}'")
        raise ApiError(422, message) from None
    record = JobRecord(
        id=job_id, seq=0, status="queued", created_at=now(), request=request,
        image_path=str(image_path), image_name=name, samples_total=job.count, steps_total=job.steps_total,
        client=client,
    )
    try:
        return engine.submit(record, job, idempotency_key)
    except QueueFull as error:
        raise ApiError(429, str(error), {"Retry-After": str(error.retry_after_s)}) from None


def _safe_stem(filename: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(filename).stem).strip("-._")
    return stem[:64] or "image"


def _record(engine: Engine, job_id: str) -> JobRecord:
    record = engine.record(job_id) if _JOB_ID.match(job_id) else None
    if record is None:
        raise ApiError(404, f"no job {job_id}")
    return record


def summary(record: JobRecord, positions: dict[str, int]) -> dict:
    """A job as a list shows it: what it is and how far it got, not its options or files."""
    return {
        "id": record.id,
        "url": f"/v1/jobs/{record.id}",
        "status": record.status,
        "queue_position": positions.get(record.id),
        "progress": {"steps_done": record.steps_done, "steps_total": record.steps_total,
                     "samples_done": record.samples_done, "samples_total": record.samples_total},
        "error": record.error,
        "image": record.image_name,
        "node": record.node,
        "attempts": record.attempts,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
    }


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
        "cancel_requested": record.cancel_requested,
        "node": record.node,
        "attempts": record.attempts,
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


def _state(engine: Engine, job_id: str) -> tuple[JobRecord, dict]:
    record = engine.record(job_id)
    return record, snapshot(engine, record)


async def _events(engine: Engine, job_id: str):
    """`progress` events whenever the job changes, then one `end` event with its final state."""
    last, quiet = None, 0.0
    while True:
        record, state = await run_in_threadpool(_state, engine, job_id)
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
