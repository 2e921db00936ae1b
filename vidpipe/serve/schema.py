"""What the OpenAPI schema says of the routes FastAPI cannot describe by itself: the multipart form of
`POST /v1/jobs` (its body is parsed by hand, to give one-line errors in the job's words), with the served model's
fields and the server's limits as bounds, and the error answers every route may give. Clients and fuzzers
(schemathesis) generate requests from it."""

from __future__ import annotations

from vidpipe.limits import SEED_MAX, SEED_MIN
from vidpipe.media import FORMATS

_ERROR = {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}
ERROR_RESPONSES = {
    401: {"description": "missing or wrong bearer token", "content": _ERROR},
    404: {"description": "no such job or file", "content": _ERROR},
    413: {"description": "upload larger than --max-upload-mb", "content": _ERROR},
    422: {"description": "a bad field, file or size, or past a limit (one line that names it)", "content": _ERROR},
    429: {"description": "the queue, or this client's share of it, is full; see Retry-After", "content": _ERROR},
}
#: Where a created job's id leads (OpenAPI links: a fuzzer's stateful phase follows them).
JOB_LINKS = {name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
             for name, operation in (("GetJob", "get_job"), ("CancelJob", "cancel_job"), ("JobEvents", "job_events"))}
_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def job_form_schema(engine) -> dict:
    """The request body of POST /v1/jobs for this server's model and limits."""
    from vidpipe.models.registry import family_module

    limits = engine.limits
    multiple = family_module(engine.settings.source.family).pixel_multiple(engine.settings.source)
    properties: dict[str, dict] = {"image": {"type": "string", "format": "binary",
                                             "description": "PNG, JPEG or WebP; checked as generate checks it"}}
    for name, kind in engine.fields.items():
        properties[name] = {"type": _TYPES[kind]}
    properties["samples"].update(minimum=1, maximum=limits.samples_per_job)
    properties["seed"].update(minimum=SEED_MIN, maximum=SEED_MAX, description="sample i uses seed + i")
    properties["steps"].update(minimum=1, maximum=limits.steps)
    properties["frames"].update(minimum=1, maximum=limits.frames)
    for side in ("height", "width"):
        properties[side].update(minimum=multiple, maximum=limits.pixels // multiple, multipleOf=multiple,
                                description=f"height x width at most {limits.pixels}")
    properties["format"].update(pattern=f"^({'|'.join(FORMATS)})(,({'|'.join(FORMATS)}))*$",
                                description="comma list")
    for name in ("prompt", "negative_prompt"):
        if name in properties:
            properties[name]["maxLength"] = 10_000
    properties["sweep"] = {"type": "string", "description": "a JSON list of per-sample overrides, at most "
                                                             f"{limits.samples_per_job} entries"}
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "required": ["image"]}}}}
