"""The REST API under /api/v1: thin handlers over the `PageRAG` service and the job manager.

Model work (search, answers, similarity maps) takes a ticket from the service's shared line
first; the app's exception handlers turn a full line into 429 and a passed deadline into 504.
Every operation has an explicit id and declares the statuses it can answer, so clients
generated from /openapi.json (openapi-python-client, tests/rag/test_openapi_client.py) work.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from rag.answer import AnswerStream
from rag.errors import user_error_status
from rag.heatmap import page_heatmap
from rag.server.deps import (
    DocId,
    JobId,
    JobsDep,
    Page,
    ServiceDep,
    UploadForm,
    WorkDep,
    admit,
    authorize,
)
from rag.server.jobs import display_name, stage_files
from rag.server.modelqueue import Ticket
from rag.server.schemas import (
    AnswerOut,
    AskIn,
    DeletedOut,
    DocumentOut,
    DocumentPatch,
    DocumentsOut,
    JobOut,
    JobsOut,
    Problem,
    QuestionIn,
    SearchIn,
    SearchOut,
    StatusOut,
    ValidationProblem,
    answer_out,
    api_words,
    document_out,
    hit_out,
    job_out,
    status_out,
    to_filter,
    url_for,
)
from rag.service import DeletionQueued, DocumentPending, PageRAG
from rag.types import Answer, SearchFilter

log = logging.getLogger(__name__)

# What each status means, as the routes declare them (`errors`); a route may say more.
_WHY = {
    400: "A bad value: an empty question, an unknown document in the filter, ...",
    401: "Keys are configured and no valid key was sent",
    403: "The key may not do this: its role or its libraries (the message names the key needed)",
    404: "No such document, page, job or library",
    408: "The request body stopped arriving",
    409: "The document is not complete yet: being ingested or interrupted",
    413: "The body is larger than its cap (4 MiB; uploads: PAGERAG_MAX_UPLOAD_MB)",
    415: "The body is not of a type this route takes",
    422: "The body or a parameter does not fit its schema, or a malformed id",
    429: "Too many requests are waiting; try again after `Retry-After` seconds",
    503: "A model or the index cannot be used; the message names the setting to change",
    504: "The request did not finish within PAGERAG_REQUEST_TIMEOUT",
    507: "Too little free disk (PAGERAG_DISK_RESERVE_MB)",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}


def errors(*codes: int, json_ref: bool = False, **why: str) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route for these statuses (`why`: `s409="..."` to say more).

    `json_ref`: for a route whose own responses are not JSON (images, events). FastAPI gives a
    `model` the route's media type, so its errors name their JSON schema by reference instead
    (the JSON routes declare the same models, which puts them in the schema's components)."""
    declared: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        model = ValidationProblem if code == 422 else Problem
        entry: dict[str, Any] = {"description": why.get(f"s{code}", _WHY[code])}
        if json_ref:
            ref = {"$ref": f"#/components/schemas/{model.__name__}"}
            entry["content"] = {"application/json": {"schema": ref}}
        else:
            entry["model"] = model
        if code == 429:
            entry["headers"] = _RETRY_AFTER
        declared[code] = entry
    return declared


# Statuses of the routes that use the model (each also answers 401 with keys set, 413 past
# the body cap, 422 for a bad body).
_MODEL = (400, 413, 422, 429, 503, 504)
_PNG = {
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    "description": "A PNG image",
}


class PNGResponse(Response):
    media_type = "image/png"


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


# Included twice by the app: under /api/v1 (the server's library) and under
# /api/v1/libraries/{library} (any library the key may use).
router = APIRouter(dependencies=[Depends(authorize)], responses=errors(401, 403))


# -- search and answers -------------------------------------------------------------------


@router.post("/search", operation_id="search", tags=["search"], responses=errors(*_MODEL))
async def search(body: SearchIn, request: Request, service: ServiceDep, work: WorkDep) -> SearchOut:
    """The pages that best match a query (ColQwen2 late interaction, exact MaxSim rerank)."""
    filters = to_filter(body.filter, service.resolve)
    with await admit(work):
        hits = await run_in_threadpool(service.search, body.query, body.top_k, filters, body.mode)
    return SearchOut(query=body.query, hits=[hit_out(request, h, body.query) for h in hits])


@router.post("/ask", operation_id="ask", tags=["search"], responses=errors(*_MODEL))
async def ask(body: AskIn, request: Request, service: ServiceDep, work: WorkDep) -> AnswerOut:
    """Answer a question from the best pages with Qwen2-VL, citing them as [1], [2], ...

    To stream the answer use POST /ask/stream; `stream: true` here does the same (server-sent
    events) for the clients that used it before that operation existed."""
    if body.stream:  # an EventSourceResponse, not the AnswerOut the schema documents
        return await ask_stream(body, request, service, work)  # type: ignore[return-value]
    filters = to_filter(body.filter, service.resolve)
    with await admit(work) as ticket:
        answer = await run_in_threadpool(_answer, service, ticket, body, filters)
    return answer_out(request, answer)


_EVENTS = """Server-sent events: `token` events (`{"text": ...}`) as the answer is written,
then one `answer` event (the body POST /ask returns) or, when something fails after the
stream began, one `error` event (`{"status": 504, "detail": ...}`). Errors before it began
are plain HTTP statuses."""


@router.post(
    "/ask/stream",
    operation_id="askStream",
    tags=["search"],
    response_class=EventStreamResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": _EVENTS,
        },
        **errors(*_MODEL, json_ref=True),
    },
)
async def ask_stream(
    body: QuestionIn, request: Request, service: ServiceDep, work: WorkDep
) -> EventStreamResponse:
    """Answer a question as POST /ask does, streamed as server-sent events."""
    filters = to_filter(body.filter, service.resolve)
    ticket = await admit(work)
    try:
        stream = service.ask_stream(
            body.question, body.top_k, filters, body.turns(), mode=body.mode
        )
        # The first words (after retrieval; None when the answer has no text to stream) are
        # awaited before answering, so errors up to there still get a proper HTTP status.
        first = await run_in_threadpool(next, stream, None)
    except BaseException:
        ticket.release()
        raise
    return EventStreamResponse(
        _events(request, stream, first, ticket),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _answer(
    service: PageRAG, ticket: Ticket, body: QuestionIn, filters: SearchFilter | None
) -> Answer:
    stream = service.ask_stream(body.question, body.top_k, filters, body.turns(), mode=body.mode)
    try:
        for _ in stream:
            ticket.check()  # past the deadline: closing the stream stops the generation
        return stream.answer
    finally:
        stream.close()


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _events(
    request: Request, stream: AnswerStream, first: str | None, ticket: Ticket
) -> AsyncIterator[str]:
    chunk = first
    try:
        while chunk is not None:
            yield _sse("token", {"text": chunk})
            ticket.check()
            chunk = await run_in_threadpool(next, stream, None)
        yield _sse("answer", answer_out(request, stream.answer).model_dump())  # the stream ended
    except Exception as exc:  # headers are sent: the error can only be an event now
        code = user_error_status(exc)
        if code is None:
            log.exception("streaming an answer failed")
            code, detail = 500, "internal error while answering; see the server log"
        else:
            detail = api_words(str(exc))
        yield _sse("error", {"status": code, "detail": detail})
    finally:
        # A client that went away cancels this task: finish the clean-up regardless, so the
        # generation stops and the model is free for the next request.
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(stream.close)
        ticket.release()


# -- documents ----------------------------------------------------------------------------


@router.get("/documents", operation_id="listDocuments", tags=["documents"])
def list_documents(request: Request, service: ServiceDep) -> DocumentsOut:
    """The library: every complete document."""
    return DocumentsOut(documents=[document_out(request, d) for d in service.documents()])


@router.get(
    "/documents/{doc_id}",
    operation_id="getDocument",
    tags=["documents"],
    responses=errors(404, 409, 422),
)
def get_document(doc_id: DocId, request: Request, service: ServiceDep) -> DocumentOut:
    """One document (a unique prefix of its id is enough)."""
    try:
        return document_out(request, service.document(doc_id))
    except DocumentPending as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, api_words(str(exc))) from exc


@router.patch(
    "/documents/{doc_id}",
    operation_id="updateDocument",
    tags=["documents"],
    responses=errors(400, 404, 409, 422),
)
def update_document(
    doc_id: DocId, body: DocumentPatch, request: Request, service: ServiceDep
) -> DocumentOut:
    """Change a document's title and/or tags after ingestion; search filters by the new tags
    at once. A field left out stays as it is; `"tags": []` clears the tags."""
    try:
        info = service.update_document(doc_id, title=body.title, tags=body.tags)
    except DocumentPending as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, api_words(str(exc))) from exc
    return document_out(request, info)


@router.delete(
    "/documents/{doc_id}",
    operation_id="deleteDocument",
    tags=["documents"],
    response_model=DeletedOut,
    responses={
        202: {"model": Problem, "description": "Queued behind a running ingestion; it happens"},
        **errors(404, 422),
    },
)
async def delete_document(doc_id: DocId, request: Request, service: ServiceDep) -> Any:
    """Remove a document's pages from the index, its page images and its manifest entry.
    While an ingestion runs, the deletion happens at the end of its current batch (deleting
    the document being ingested stops its ingestion); when that takes longer than
    PAGERAG_REQUEST_TIMEOUT the answer is 202 and the deletion still happens."""
    info, deletion = await run_in_threadpool(service.request_delete, doc_id)
    # Waited for on the event loop: a waiting DELETE holds no worker thread, so any number of
    # them cannot starve the other routes.
    timeout = service.settings.request_timeout
    with anyio.move_on_after(timeout):
        while not deletion.done.is_set():
            await anyio.sleep(0.02)
    if not deletion.wait(0):
        detail = api_words(str(DeletionQueued(info.doc_id, timeout)))
        return JSONResponse(Problem(detail=detail).model_dump(), status.HTTP_202_ACCEPTED)
    return DeletedOut(deleted=document_out(request, info))


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "PDFs, PNG or JPEG images (recognised by content)",
                        },
                        "password": {
                            "type": "string",
                            "description": "Opens whichever of the files is an encrypted PDF",
                        },
                        "passwords": {
                            "type": "string",
                            "description": "Passwords per file, as a JSON object of file name "
                            'to password: `{"q1.pdf": "secret"}` (before `password`)',
                        },
                    },
                    "required": ["files"],
                }
            }
        },
    }
}


@router.post(
    "/documents",
    operation_id="uploadDocuments",
    tags=["documents"],
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=_UPLOAD_BODY,
    responses=errors(
        400,
        408,
        413,
        415,
        429,
        507,
        s400="No file part, an unreadable upload, or a `passwords` field that is not a JSON "
        "object of file names in this upload",
        s413="Larger than PAGERAG_MAX_UPLOAD_MB, or a form field over 64 KiB",
        s415="No file is a PDF or an image, or the body is not multipart/form-data",
        s429="Too many ingestion jobs are waiting; try again after `Retry-After` seconds",
    ),
)
async def upload_documents(
    form: UploadForm, request: Request, response: Response, jobs: JobsDep
) -> JobOut:
    """Upload PDFs or images (checked by content); they are ingested by a background job
    whose progress and per-file errors `GET /jobs/{id}` reports. `password` or `passwords`
    open encrypted PDFs (kept in memory for the job only, never stored)."""
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, "no file in the upload (field `files`)"
            )
        names = [display_name(f.filename) for f in files]
        passwords = _passwords(form, names)
        folder = jobs.upload_folder()
        named = list(zip(names, (f.file for f in files), strict=True))
        reserve = jobs.service.settings.disk_reserve_mb
        staged, rejected = await run_in_threadpool(
            lambda: stage_files(named, folder, reserve_mb=reserve)
        )
    finally:
        await form.close()
    if not staged:
        await run_in_threadpool(shutil.rmtree, folder, True)
        reasons = "; ".join(f"{r.source}: {r.error}" for r in rejected)
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"only PDFs, PNG and JPEG images are accepted ({reasons})",
        )
    # Jobs wait in one line per client (API key, else address), taken in turn.
    key = request.headers.get("authorization", "")
    client = hashlib.sha256(key.encode()).hexdigest()[:16] if key else str(request.client)
    job = await run_in_threadpool(
        jobs.submit_upload, staged, rejected, folder, client, passwords or None
    )
    response.headers["Location"] = url_for(request, "get_job", job_id=job.id)
    return job_out(job)


def _passwords(form: FormData, names: list[str]) -> dict[str, str]:
    """File name -> password from the form's `passwords` (a JSON object) and `password` (for
    every file); 400 for a malformed `passwords` or one naming a file not in the upload."""
    given = form.get("passwords")
    per_file: dict[str, str] = {}
    if isinstance(given, str) and given.strip():
        try:
            parsed = json.loads(given)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                "the `passwords` field must be a JSON object of file name to password, such "
                'as {"q1.pdf": "secret"}',
            )
        per_file = {display_name(k): v for k, v in parsed.items()}
        unknown = sorted(set(per_file) - set(names))
        if unknown:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"`passwords` names {', '.join(map(repr, unknown))}, not a file of this upload "
                f"({', '.join(map(repr, names))})",
            )
    shared = form.get("password")
    for name in names:
        if name not in per_file and isinstance(shared, str) and shared:
            per_file[name] = shared
    return per_file


@router.get("/jobs", operation_id="listJobs", tags=["documents"])
def list_jobs(jobs: JobsDep) -> JobsOut:
    """Recent ingestion jobs, newest first (their records outlive a restart)."""
    return JobsOut(jobs=[job_out(j) for j in jobs.list()])


@router.get(
    "/jobs/{job_id}",
    name="get_job",
    operation_id="getJob",
    tags=["documents"],
    responses=errors(404, 422),
)
def get_job(job_id: JobId, jobs: JobsDep) -> JobOut:
    """An ingestion job: its stage, progress counters and what happened to each file."""
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job with id {job_id!r}")
    return job_out(job)


# -- pages --------------------------------------------------------------------------------


@router.get(
    "/documents/{doc_id}/pages/{page}/image",
    name="page_image",
    operation_id="pageImage",
    tags=["pages"],
    response_class=PNGResponse,
    responses={200: _PNG, **errors(404, 422, json_ref=True)},
)
def page_image(doc_id: DocId, page: Page, service: ServiceDep) -> FileResponse:
    """The stored page image (PNG, as rendered at ingestion)."""
    # The path is built from the resolved id and a number, never from what the client sent.
    path = service.library.images.path(doc_id, page)
    if doc_id in service.pending() or not path.is_file():  # shown once the document is whole
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"document {doc_id[:12]} has no page {page}")
    return FileResponse(path, media_type="image/png")


@router.get(
    "/documents/{doc_id}/pages/{page}/heatmap",
    name="page_heatmap",
    operation_id="pageHeatmap",
    tags=["pages"],
    response_class=PNGResponse,
    responses={
        200: {
            **_PNG,
            "headers": {
                "X-PageRAG-Score": {
                    "description": "The page's MaxSim score for the query",
                    "schema": {"type": "number"},
                }
            },
        },
        **errors(
            400,
            404,
            409,
            422,
            429,
            503,
            504,
            json_ref=True,
            s400="An empty query",
            s409="The page is stored without visual vectors yet (no retriever loaded)",
        ),
    },
)
async def page_heatmap_image(
    doc_id: DocId,
    page: Page,
    service: ServiceDep,
    work: WorkDep,
    query: str = Query(min_length=1, max_length=4000),
) -> PNGResponse:
    """The page with a similarity map of the query laid over it: bright regions matched it.
    The page's MaxSim score for the query (as visual search ranks it) is in the
    `X-PageRAG-Score` header."""
    # A page that is not stored is a 404 from `page_heatmap` itself, before any model call.
    if doc_id in await run_in_threadpool(service.pending):  # shown once the document is whole
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"document {doc_id[:12]} has no page {page}")
    with await admit(work):
        heatmap = await run_in_threadpool(page_heatmap, service, query, doc_id, page)
    buffer = io.BytesIO()
    heatmap.image.save(buffer, format="PNG")
    return PNGResponse(buffer.getvalue(), headers={"X-PageRAG-Score": f"{heatmap.score:.6f}"})


# -- status -------------------------------------------------------------------------------


@router.get("/status", operation_id="status", tags=["status"], responses=errors(503))
def server_status(service: ServiceDep, work: WorkDep) -> StatusOut:
    """Models, device, backend, documents, pages, disk use, and the model queue."""
    return status_out(service.info(), work.stats())
