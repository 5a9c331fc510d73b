"""The server: REST API under /api/v1, the Gradio web UI at /, health checks, one process.

`create_app(service)` builds everything from the service object and keeps all state on
`app.state` (nothing at module level), so tests can build as many apps as they like. Models load
in a background thread at start-up: /healthz answers at once, /readyz once they are loaded.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.routing import Match

from rag.errors import UserError, log_failure
from rag.keys import KeyRing
from rag.libraries import Libraries
from rag.models.download import DOWNLOADS
from rag.server.deps import library_param
from rag.server.guard import Gate, Limits, MiB, ReceivedUploads, RequestGuard
from rag.server.jobs import JobManager
from rag.server.library_routes import router as libraries_router
from rag.server.modelqueue import WorkQueue
from rag.server.routes import errors, router
from rag.server.schemas import DownloadOut, HealthOut, ReadyOut, api_words
from rag.service import PageRAG

log = logging.getLogger(__name__)
DOCS_ASSETS = "/docs-assets"  # Swagger UI's script, stylesheet and icon

API_DESCRIPTION = """Ask questions about PDFs (charts and tables too) by looking at their pages.

Model work (search, answers, similarity maps) shares one bounded queue with the web UI: when it
is full the API answers **429** with `Retry-After`; a request past `PAGERAG_REQUEST_TIMEOUT`
gets **504**. With keys configured (`PAGERAG_API_KEYS`, or a keys file made by `pagerag keys
add`) every call needs `Authorization: Bearer KEY`; a key bound to some libraries or to a role
(read, write, admin) gets **403** outside them. `/api/v1/...` acts on the server's library
(`default`); `/api/v1/libraries/{library}/...` on any other. Examples: `docs/API.md`."""


@dataclass
class Readiness:
    """Set by the warm-up thread; read by /readyz."""

    ready: threading.Event = field(default_factory=threading.Event)
    error: str = ""


def create_app(
    service: PageRAG,
    *,
    libraries: Libraries | None = None,
    startup_paths: Sequence[Path] = (),
    ui: bool = True,
    warm_up: bool = True,
) -> FastAPI:
    """The whole server for `service` (the server's own library) and the other `libraries`
    of its data directory (default: those beside `service`, which must then be `default`).
    `startup_paths` are ingested (incrementally) by a background job once the server starts;
    `ui=False` leaves the web UI out."""
    settings = service.settings
    libraries = libraries or Libraries(settings, first=service)
    jobs = JobManager(service, max_pending=max(settings.queue_size, 1))
    library_jobs = LibraryJobs(service, jobs)
    # The one bounded line in front of the models for interactive callers (web UI and REST
    # API alike): they take a ticket from it around search, ask and similarity maps.
    work = WorkQueue(settings.queue_size, settings.request_timeout)
    readiness = Readiness()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            threading.Thread(
                target=_load_models,
                args=(service, readiness, jobs),
                name="pagerag-warmup",
                daemon=True,
            ).start()
        else:
            readiness.ready.set()
        if startup_paths:
            jobs.submit_paths(startup_paths)
        library_jobs.resume_all(libraries)
        async with app.state.mcp.running():  # the MCP SDK's sessions live in the lifespan
            yield
        if (webui := getattr(app.state, "webui", None)) is not None:
            await webui.close()  # the libraries' UIs started on first use
        library_jobs.close_all()
        libraries.close(keep=service)  # the caller closes its own service

    # Swagger UI at /docs from files in the fastapi-offline wheel, served at DOCS_ASSETS (FastAPI's
    # own page loads them from a CDN: blank offline). Public, like /docs and /openapi.json.
    # No ReDoc: one API reference is enough. No validator badge (it would call swagger.io).
    app = FastAPIOffline(
        title="PageRAG",
        version="1",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.service = service
    app.state.jobs = jobs
    app.state.libraries = libraries
    app.state.jobs_for = library_jobs.get
    app.state.close_jobs = library_jobs.close
    app.state.keys = keys = KeyRing.from_settings(libraries.root)
    app.state.work = work
    app.state.readiness = readiness
    _add_error_handlers(app)
    # Around everything, the UI included: bodies are capped as they arrive (FastAPI and Gradio
    # would buffer them first), Gradio's file routes never fetch URLs or leave their folders, and
    # a UI event can name no file but the uploads its own client made.
    gate = Gate(ring=keys)
    app.add_middleware(
        RequestGuard,
        limits=Limits(
            upload_bytes=settings.max_upload_mb * MiB,
            body_idle_seconds=min(30.0, settings.request_timeout),
        ),
        uploads=ReceivedUploads(),
        gate=gate,
    )
    app.include_router(libraries_router)
    app.include_router(router, prefix="/api/v1")
    _include_for_libraries(app)
    _add_health(app)
    _add_fallback(app)
    # Imported here: `python -m rag.server.mcp` (stdio) would otherwise import itself twice.
    from rag.server.mcp import mount_mcp

    app.state.mcp = mount_mcp(app, service)  # /mcp, before the web UI's catch-all mount
    if not keys.enabled:
        _drop_security(app)
    if ui:
        from rag.server.webui import WebUI  # Gradio: imported only with the UI

        app.state.webui = webui = WebUI(app, service, library_jobs.get, work, libraries, keys)
        gate.ui_logged_in = webui.logged_in
    return app


class LibraryJobs:
    """One job manager per library (each library has its own write lock and job records),
    made when a library is first used; each resumes its library's unfinished jobs."""

    def __init__(self, first: PageRAG, jobs: JobManager) -> None:
        self._jobs = {first.settings.library: jobs}
        self._max_pending = jobs.max_pending
        self._lock = threading.Lock()

    def get(self, service: PageRAG) -> JobManager:
        name = service.settings.library
        with self._lock:
            jobs = self._jobs.get(name)
            if jobs is None or jobs.service is not service:
                jobs = self._jobs[name] = JobManager(service, max_pending=self._max_pending)
            return jobs

    def resume_all(self, libraries: Libraries) -> None:
        """Open every library with unfinished jobs, so a restart resumes them all."""
        for name in libraries.names():
            try:
                service = libraries.get(name)
                self.get(service)
            except Exception as exc:  # one broken library must not stop the others
                log_failure(log, f"opening library {name!r} failed", exc)

    def close(self, service: PageRAG) -> None:
        with self._lock:
            jobs = self._jobs.pop(service.settings.library, None)
        if jobs is not None:
            jobs.close()

    def close_all(self) -> None:
        with self._lock:
            every, self._jobs = list(self._jobs.values()), {}
        for jobs in every:
            jobs.close()


LIBRARY_PREFIX = "/api/v1/libraries/{library}"


def _include_for_libraries(app: FastAPI) -> None:
    """The documents and search routes again under /api/v1/libraries/{library}. Route names
    stay the same (url_for tells the two apart by the `library` parameter); their operation
    ids get a `library` prefix in the schema (`librarySearch`), so generated clients have
    one method per operation."""
    app.include_router(
        router,
        prefix=LIBRARY_PREFIX,
        dependencies=[Depends(library_param)],
        responses=errors(404, 422, json_ref=True, s404="No such library (or document, page, job)"),
    )
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with warnings.catch_warnings():  # FastAPI warns of the ids renamed just below
                warnings.simplefilter("ignore", UserWarning)
                schema = build()
            for path, operations in schema.get("paths", {}).items():
                if not path.startswith(LIBRARY_PREFIX + "/"):
                    continue
                for operation in operations.values():
                    if isinstance(operation, dict) and (op := operation.get("operationId")):
                        operation["operationId"] = "library" + op[0].upper() + op[1:]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _add_fallback(app: FastAPI) -> None:
    """/api/v1 paths no route takes: 405 with `Allow` for a known path and another method,
    else 404; in JSON, instead of falling through to the web UI mounted at /."""
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

    @app.api_route("/api/v1/{rest:path}", methods=methods, include_in_schema=False)
    async def no_route(request: Request, rest: str) -> JSONResponse:
        path = request.url.path
        routes = [r for r in app.router.routes if getattr(r, "name", None) != "no_route"]
        allowed = [
            method
            for method in methods
            if any(
                route.matches({**request.scope, "method": method})[0] == Match.FULL
                for route in routes
                if getattr(route, "path", None) != ""  # the web UI takes any path
            )
        ]
        if allowed:
            return JSONResponse(
                {"detail": f"{request.method} is not allowed here; use {', '.join(allowed)}"},
                status.HTTP_405_METHOD_NOT_ALLOWED,
                headers={"Allow": ", ".join(allowed)},
            )
        return JSONResponse(
            {"detail": f"no API route {path}; /docs lists them"}, status.HTTP_404_NOT_FOUND
        )


def _drop_security(app: FastAPI) -> None:
    """Without PAGERAG_API_KEYS no call needs a key: the OpenAPI schema must not ask for one
    (generated clients would insist on it)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        schema.get("components", {}).pop("securitySchemes", None)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if isinstance(operation, dict):
                    operation.pop("security", None)
                    operation.get("responses", {}).pop("401", None)
                    operation.get("responses", {}).pop("403", None)  # no key, no scope
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _load_models(service: PageRAG, readiness: Readiness, jobs: JobManager) -> None:
    try:
        service.retriever  # noqa: B018 - loads it, once per process
        # Ingestions that ran during its download stored their pages for text search only:
        # embed them now (a job of no files does just that).
        if service.visual_deferred():
            _embed_waiting(jobs)
        service.generator  # noqa: B018
    except Exception as exc:  # /readyz reports it; the API answers 503 with the same message
        log_failure(log, "loading the models failed", exc, debug=service.settings.debug)
        readiness.error = str(exc)
        return
    readiness.ready.set()


def _embed_waiting(jobs: JobManager) -> None:
    try:
        jobs.submit_paths([])
    except Exception as exc:  # shutting down, or the job line is full: the models still load
        log.warning("the pages without visual vectors get them at the next ingestion (%s)", exc)


def _add_health(app: FastAPI) -> None:
    # Async and lock-free: they run on the event loop, so no number of slow requests holding
    # worker threads can keep them from answering.
    @app.get("/healthz", operation_id="health", tags=["status"])
    async def healthz() -> HealthOut:
        """The process is up (answers while the models are still loading)."""
        return HealthOut(status="ok")

    @app.get(
        "/readyz",
        operation_id="ready",
        tags=["status"],
        response_model=ReadyOut,
        response_model_exclude_none=True,
        responses={503: {"model": ReadyOut, "description": "Not ready yet, or loading failed"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        """Models loaded and index open: ready for questions."""
        readiness: Readiness = request.app.state.readiness
        # A first run downloads the models: how far, so a client can tell waiting from stuck.
        downloads = [DownloadOut.of(d).model_dump() for d in DOWNLOADS.active()]
        extra = {"downloads": downloads} if downloads else {}
        if readiness.error:
            body = {"status": "failed", "detail": api_words(readiness.error), **extra}
            return JSONResponse(body, status.HTTP_503_SERVICE_UNAVAILABLE)
        if not readiness.ready.is_set():
            detail = (
                "downloading the models from the Hugging Face Hub (once; text search works "
                "meanwhile)"
                if downloads
                else "loading the models"
            )
            body = {"status": "starting", "detail": detail, **extra}
            return JSONResponse(body, status.HTTP_503_SERVICE_UNAVAILABLE)
        return JSONResponse({"status": "ready", **extra})


def _add_error_handlers(app: FastAPI) -> None:
    async def known(request: Request, exc: Exception) -> JSONResponse:
        # A UserError carries its own status (429 busy, 504 late, 503 not set up, ...); its
        # command-line advice is worded for the API (`api_words`).
        assert isinstance(exc, UserError)
        body = {"detail": api_words(str(exc))}
        return JSONResponse(body, exc.http_status, headers=exc.headers())

    async def bug(request: Request, exc: Exception) -> JSONResponse:
        # Logged in full; the client learns nothing internal. The process carries on.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"detail": "internal error; see the server log"},
            status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    app.add_exception_handler(UserError, known)
    app.add_exception_handler(Exception, bug)
