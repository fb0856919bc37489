"""The FastAPI app of ``generatect serve``: asynchronous generation jobs under ``/v1``.

=======  ==============================  ===================================================================
POST     /v1/jobs                        202 :class:`JobStatus` (+ ``Location``); 429 + ``Retry-After`` when
                                         the queue is full; 503 + ``Retry-After`` while the model loads
GET      /v1/jobs/{id}                   :class:`JobStatus`: queued / running / succeeded / failed /
                                         cancelled, stage, progress 0–1, ETA, error, result summary
GET      /v1/jobs/{id}/result            the volume file (NIfTI ``.nii.gz`` or gzip-encoded NRRD),
                                         ``X-Content-SHA256``; 409 until the job has succeeded
GET      /v1/jobs/{id}/provenance        the provenance JSON (what ``generate`` writes as ``<stem>.json``)
GET      /v1/jobs/{id}/attention         zip of ``index.json`` + one NIfTI heatmap per word / phrase
DELETE   /v1/jobs/{id}                   cancel: queued → cancelled (200); running → stops at its next step
                                         (202); finished → its files are deleted (200)
GET      /v1/health/live                 200 while the process serves (no token needed)
GET      /v1/health/ready                200 once the model is loaded, else 503
GET      /v1/info                        bundle, device, versions, limits, queue
=======  ==============================  ===================================================================

All ``/v1`` routes but ``/v1/health/live`` need ``Authorization: Bearer <token>`` (:mod:`.security`);
``/openapi.json`` and ``/docs`` are public. Request bodies are limited to ``max_request_bytes`` (413).
Errors are ``{"detail": "..."}``; validation errors (422) add a one-line ``message``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import uuid
from typing import Any

from fastapi import FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from GenerateCTLib import __version__
from GenerateCTLib.server import schemas
from GenerateCTLib.server.jobs import JobManager, NotReady, QueueFull, ServerSettings
from GenerateCTLib.server.security import BearerAuthMiddleware

log = logging.getLogger(__name__)

__all__ = ["create_app", "ServerSettings"]

MEDIA_TYPES = {"nii.gz": "application/gzip", "nrrd": "application/octet-stream"}


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "missing or wrong bearer token",
        404: "no such job (finished jobs are deleted after the result TTL)",
        409: "the job has no such result (yet)",
        413: "request body too large",
        429: "the queue is full; see Retry-After",
        503: "the model is not loaded yet; see Retry-After",
    }
    out: dict[int | str, dict[str, Any]] = {code: {"model": schemas.ErrorResponse, "description": described[code]}
                                            for code in codes}
    out[422] = {"model": schemas.ValidationErrorResponse, "description": "invalid request"}
    for code in (429, 503):
        if code in out:
            out[code]["headers"] = {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}
    return out


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    items, lines = [], []
    for error in errors:
        loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
        msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        where = ".".join(str(p) for p in loc if p != "body") or "body"
        items.append({"loc": loc, "msg": msg, "type": str(error.get("type", "value_error"))})
        lines.append(f"{where}: {msg}")
    return "; ".join(lines) or "invalid request", items


class _BodySizeLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (by Content-Length, or while streaming)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, 413)(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise StarletteHTTPException(413, f"request body larger than {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def create_app(settings: ServerSettings, *, manager: JobManager | None = None) -> FastAPI:
    """The app; its lifespan starts the :class:`JobManager` (model loading, worker, janitor) and stops it.

    Args:
        settings: see :class:`ServerSettings`.
        manager: a prepared manager (tests inject one with a custom loader); default: from ``settings``.
    """
    manager = manager or JobManager(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        manager.start()
        try:
            yield
        finally:
            manager.stop()

    app = FastAPI(
        title="GenerateCT remote inference",
        version=__version__,
        description="Asynchronous text-to-CT generation jobs (synthetic data, research use only).",
        lifespan=lifespan,
    )
    app.state.manager = manager
    app.state.settings = settings
    bearer = HTTPBearer(auto_error=False, description="the server's token (--token-file or GENERATECT_TOKEN)")
    # authentication is enforced by BearerAuthMiddleware; this dependency only documents it in OpenAPI
    protected = [Security(bearer)] if settings.token else []

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, exc: RequestValidationError):
        message, items = _validation_message(list(exc.errors()))
        return JSONResponse({"message": message, "detail": items}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI's answer to a body it cannot decode (e.g. not UTF-8): a 422 like bad JSON
            msg = "the body could not be decoded as UTF-8 JSON"
            return JSONResponse({"message": f"body: {msg}",
                                 "detail": [{"loc": ["body"], "msg": msg, "type": "json_invalid"}]}, status_code=422)
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    def job_or_404(job_id: uuid.UUID) -> dict[str, Any]:
        status = manager.snapshot(job_id)
        if status is None:
            raise StarletteHTTPException(404, f"no job {job_id} (finished jobs are deleted after the result TTL)")
        return status

    # -- health and info --------------------------------------------------------------------------------

    @app.get("/v1/health/live", response_model=schemas.Health, tags=["health"])
    def live() -> dict[str, Any]:
        """The process answers (no token needed)."""
        return {"status": "ok"}

    @app.get("/v1/health/ready", response_model=schemas.Health, tags=["health"], dependencies=protected,
             responses={**_responses(401), 503: {"model": schemas.Health, "description": "not ready"}})
    def ready(response: Response) -> dict[str, Any]:
        """200 once the model is loaded; 503 while it loads or if loading failed."""
        if manager.ready:
            return {"status": "ok"}
        response.status_code = 503
        if manager.load_error:
            return {"status": "error", "detail": manager.load_error}
        response.headers["Retry-After"] = "5"
        return {"status": "loading", "detail": "the model is loading"}

    @app.get("/v1/info", response_model=schemas.ServerInfo, tags=["health"], dependencies=protected,
             responses=_responses(401))
    def info() -> dict[str, Any]:
        """Bundle, device, software versions, limits and queue length."""
        import fastapi
        import torch
        import uvicorn

        pipe = manager.pipeline
        bundle = None
        if pipe is not None:
            bundle = {"name": pipe.metadata.get("name"), "version": pipe.metadata.get("version"),
                      "metadata_sha256": pipe.bundle_id, "intended_use": pipe.metadata.get("intended_use")}
        return {
            "generatect_version": __version__,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__},
            "device": settings.device,
            "dtype": None if pipe is None else str(pipe.dtype).removeprefix("torch."),
            "bundle": bundle,
            "ready": manager.ready,
            "defaults": {"cond_scale": None if pipe is None else pipe.default_cond_scale},
            "limits": {
                "max_slices": manager.max_slices,
                "max_steps": schemas.MAX_STEPS,
                "max_sr_steps": schemas.MAX_SR_STEPS,
                "max_cond_scale": schemas.MAX_COND_SCALE,
                "max_impression_chars": schemas.MAX_IMPRESSION_CHARS,
                "max_seed": schemas.MAX_SEED,
                "queue_size": settings.queue_size,
                "job_timeout_s": settings.job_timeout_s,
                "result_ttl_s": settings.result_ttl_s,
                "max_disk_bytes": settings.max_disk_bytes,
                "max_request_bytes": settings.max_request_bytes,
            },
            "queue": manager.counts(),
        }

    # -- jobs -------------------------------------------------------------------------------------------

    @app.post("/v1/jobs", status_code=202, response_model=schemas.JobStatus, tags=["jobs"], dependencies=protected,
              responses=_responses(401, 413, 429, 503))
    def submit(request: schemas.JobRequest, response: Response) -> Any:
        """Queue a generation job; poll ``GET /v1/jobs/{id}`` until it has finished."""
        from GenerateCTLib.pipeline import build_prompt

        max_slices = manager.max_slices
        if max_slices is None:
            detail = manager.load_error or "the model is still loading; retry shortly"
            return _error(503, detail, None if manager.load_error else {"Retry-After": "5"})
        problems = []
        if request.num_slices is not None and request.num_slices > max_slices:
            problems.append({"loc": ["body", "num_slices"], "type": "less_than_equal",
                             "msg": f"{request.num_slices} exceeds what the model allows (at most {max_slices})"})
        if request.prompt is None:
            try:
                build_prompt(request.age, request.sex, request.impression)
            except ValueError as exc:
                problems.append({"loc": ["body", "impression"], "type": "value_error", "msg": str(exc)})
        if problems:
            raise RequestValidationError(problems)
        try:
            job = manager.submit(request.model_dump())
        except QueueFull as exc:
            return _error(429, str(exc), {"Retry-After": str(exc.retry_after_s)})
        except NotReady as exc:
            return _error(503, str(exc), {"Retry-After": "5"})
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return manager.snapshot(job.id)

    @app.get("/v1/jobs/{job_id}", response_model=schemas.JobStatus, tags=["jobs"], dependencies=protected,
             responses=_responses(401, 404))
    def status(job_id: uuid.UUID) -> Any:
        """State, stage, progress (0–1), ETA, error and, once succeeded, the result summary."""
        return job_or_404(job_id)

    @app.delete("/v1/jobs/{job_id}", response_model=schemas.JobStatus, tags=["jobs"], dependencies=protected,
                responses={**_responses(401, 404), 202: {"model": schemas.JobStatus,
                                                           "description": "cancel requested; stops at its next step"}})
    def cancel(job_id: uuid.UUID, response: Response) -> Any:
        """Cancel a queued or running job, or delete the files of a finished one."""
        status = manager.cancel(job_id)
        if status is None:
            raise StarletteHTTPException(404, f"no job {job_id} (finished jobs are deleted after the result TTL)")
        if status["status"] == "running":
            response.status_code = 202
        return status

    def _download(job_id: uuid.UUID, kind: str) -> Response:
        status, handle = manager.open_file(job_id, kind)
        if status is None:
            raise StarletteHTTPException(404, f"no job {job_id} (finished jobs are deleted after the result TTL)")
        if handle is None:
            if status["status"] == "succeeded":
                return _error(404, f"job {job_id} has no attention maps (submit with \"attention\": true)")
            return _error(409, f"job {job_id} is {status['status']}; its result is available once it has succeeded")
        result = status["result"]
        if kind == "volume":
            media, name = MEDIA_TYPES[result["format"]], result["filename"]
            headers = {"X-Content-SHA256": result["sha256"]}
        elif kind == "attention":
            media, name, headers = "application/zip", f"generatect_{job_id}_attention.zip", {}
        else:
            media, name, headers = "application/json", f"generatect_{job_id}.json", {}

        def chunks():
            with handle:
                yield from iter(lambda: handle.read(1 << 20), b"")

        headers["Content-Disposition"] = f'attachment; filename="{name}"'
        headers["Content-Length"] = str(os.fstat(handle.fileno()).st_size)
        return StreamingResponse(chunks(), media_type=media, headers=headers)

    file_responses = {**_responses(401, 404, 409)}

    @app.get("/v1/jobs/{job_id}/result", tags=["results"], dependencies=protected, response_class=Response,
             responses={200: {"description": "the volume file (gzip-compressed NIfTI or NRRD), HU",
                              "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}},
                                          "application/octet-stream": {"schema": {"type": "string",
                                                                                  "format": "binary"}}},
                              "headers": {"X-Content-SHA256": {"schema": {"type": "string"}}}},
                        **file_responses})
    def result(job_id: uuid.UUID) -> Response:
        """The volume (HU, nominal geometry); its provenance is at ``/v1/jobs/{id}/provenance``."""
        return _download(job_id, "volume")

    @app.get("/v1/jobs/{job_id}/provenance", tags=["results"], dependencies=protected, response_class=Response,
             responses={200: {"description": "provenance JSON (prompt, seeds, settings, versions, timings, geometry)",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                        **file_responses})
    def provenance(job_id: uuid.UUID) -> Response:
        """The provenance sidecar of the volume (what ``generatect generate`` writes as ``<stem>.json``)."""
        return _download(job_id, "provenance")

    @app.get("/v1/jobs/{job_id}/attention", tags=["results"], dependencies=protected, response_class=Response,
             responses={200: {"description": "zip: index.json + one NIfTI heatmap per word / phrase",
                              "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                        **file_responses})
    def attention(job_id: uuid.UUID) -> Response:
        """Cross-attention heatmaps (jobs submitted with ``"attention": true``)."""
        return _download(job_id, "attention")

    # the last added middleware runs first: authentication, then the size limit, then routing
    app.add_middleware(_BodySizeLimit, limit=settings.max_request_bytes)
    if settings.token:
        app.add_middleware(BearerAuthMiddleware, token=settings.token)
    return app
