"""The REST API under /api/v1: thin handlers over the `PageRAG` service and the job manager.

Model work (search, answers, similarity maps) takes a ticket from the service's shared line
first; the app's exception handlers turn a full line into 429 and a passed deadline into 504.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

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
    require_key,
)
from rag.server.jobs import display_name, stage_files
from rag.server.modelqueue import Ticket
from rag.server.schemas import (
    AnswerOut,
    AskIn,
    DeletedOut,
    DocumentOut,
    DocumentsOut,
    JobOut,
    JobsOut,
    Problem,
    SearchIn,
    SearchOut,
    answer_out,
    document_out,
    hit_out,
    to_filter,
)
from rag.service import DeletionQueued, DocumentPending, PageRAG
from rag.types import Answer, SearchFilter

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "PAGERAG_API_KEYS is set and no valid key was sent"},
}
_MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Empty question, unknown document in the filter"},
    429: {"model": Problem, "description": "Too many requests waiting; see Retry-After"},
    504: {"model": Problem, "description": "The request passed PAGERAG_REQUEST_TIMEOUT"},
}

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_key)], responses=_ERRORS)


# -- search and answers -------------------------------------------------------------------


@router.post("/search", tags=["search"], responses=_MODEL_ERRORS)
async def search(body: SearchIn, request: Request, service: ServiceDep, work: WorkDep) -> SearchOut:
    """The pages that best match a query (ColQwen2 late interaction, exact MaxSim rerank)."""
    flt = to_filter(body.filter, service.resolve)
    with await admit(work):
        hits = await run_in_threadpool(service.search, body.query, body.top_k, flt, body.mode)
    return SearchOut(query=body.query, hits=[hit_out(request, h, body.query) for h in hits])


@router.post(
    "/ask",
    tags=["search"],
    responses={
        **_MODEL_ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "The answer; with `stream: true`, server-sent events: `token` "
            "events (`{text}`), then one `answer` event (this body) or an `error` event",
        },
    },
)
async def ask(body: AskIn, request: Request, service: ServiceDep, work: WorkDep) -> AnswerOut:
    """Answer a question from the best pages with Qwen2-VL, citing them as [1], [2], ..."""
    flt = to_filter(body.filter, service.resolve)
    ticket = await admit(work)
    if not body.stream:
        with ticket:
            answer = await run_in_threadpool(_answer, service, ticket, body, flt)
        return answer_out(request, answer)
    try:
        stream = service.ask_stream(body.question, body.top_k, flt, body.turns(), mode=body.mode)
        # The first words (after retrieval; None when the answer has no text to stream) are
        # awaited before answering, so errors up to there still get a proper HTTP status.
        first = await run_in_threadpool(next, stream, None)
    except BaseException:
        ticket.release()
        raise
    return StreamingResponse(  # type: ignore[return-value]
        _events(request, stream, first, ticket),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _answer(service: PageRAG, ticket: Ticket, body: AskIn, flt: SearchFilter | None) -> Answer:
    stream = service.ask_stream(body.question, body.top_k, flt, body.turns(), mode=body.mode)
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
            detail = str(exc)
        yield _sse("error", {"status": code, "detail": detail})
    finally:
        # A client that went away cancels this task: finish the clean-up regardless, so the
        # generation stops and the model is free for the next request.
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(stream.close)
        ticket.release()


# -- documents ----------------------------------------------------------------------------


@router.get("/documents", tags=["documents"])
def list_documents(request: Request, service: ServiceDep) -> DocumentsOut:
    return DocumentsOut(documents=[document_out(request, d) for d in service.documents()])


@router.get(
    "/documents/{doc_id}",
    tags=["documents"],
    responses={
        404: {"model": Problem},
        409: {"model": Problem, "description": "Not complete yet: being ingested or interrupted"},
    },
)
def get_document(doc_id: DocId, request: Request, service: ServiceDep) -> DocumentOut:
    try:
        return document_out(request, service.document(doc_id))
    except DocumentPending as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.delete(
    "/documents/{doc_id}",
    tags=["documents"],
    response_model=DeletedOut,
    responses={
        404: {"model": Problem},
        202: {"model": Problem, "description": "Queued behind a running ingestion; it happens"},
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
        detail = str(DeletionQueued(info.doc_id, timeout))
        return JSONResponse({"detail": detail}, status.HTTP_202_ACCEPTED)
    return DeletedOut(deleted=document_out(request, info))


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["files"],
                }
            }
        },
    }
}


@router.post(
    "/documents",
    tags=["documents"],
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=_UPLOAD_BODY,
    responses={
        400: {"model": Problem, "description": "No file part, or an unreadable upload"},
        413: {"model": Problem, "description": "Larger than PAGERAG_MAX_UPLOAD_MB"},
        415: {"model": Problem, "description": "No file is a PDF or an image"},
        429: {"model": Problem, "description": "Too many ingestion jobs waiting"},
        507: {"model": Problem, "description": "Too little free disk (PAGERAG_DISK_RESERVE_MB)"},
    },
)
async def upload_documents(
    form: UploadForm, request: Request, response: Response, jobs: JobsDep
) -> JobOut:
    """Upload PDFs or images (checked by content); they are ingested by a background job
    whose progress and per-file errors `GET /jobs/{id}` reports."""
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "no file in the upload (field `files`)")
    folder = jobs.upload_folder()
    try:
        named = [(display_name(f.filename), f.file) for f in files]
        reserve = jobs.service.settings.disk_reserve_mb
        staged, rejected = await run_in_threadpool(
            lambda: stage_files(named, folder, reserve_mb=reserve)
        )
    finally:
        await form.close()
    if not staged:
        await run_in_threadpool(shutil.rmtree, folder, True)
        reasons = "; ".join(f"{r['source']}: {r['error']}" for r in rejected)
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"only PDFs, PNG and JPEG images are accepted ({reasons})",
        )
    # Jobs wait in one line per client (API key, else address), taken in turn.
    key = request.headers.get("authorization", "")
    client = hashlib.sha256(key.encode()).hexdigest()[:16] if key else str(request.client)
    job = await run_in_threadpool(jobs.submit_upload, staged, rejected, folder, client)
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.id))
    return JobOut.model_validate(jobs.get(job.id))


@router.get("/jobs", tags=["documents"])
def list_jobs(jobs: JobsDep) -> JobsOut:
    """Recent ingestion jobs, newest first (kept in memory until the server restarts)."""
    return JobsOut(jobs=[JobOut.model_validate(j) for j in jobs.list()])


@router.get(
    "/jobs/{job_id}",
    name="get_job",
    tags=["documents"],
    responses={404: {"model": Problem}, 422: {"model": Problem}},
)
def get_job(job_id: JobId, jobs: JobsDep) -> JobOut:
    view = jobs.get(job_id)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job with id {job_id!r}")
    return JobOut.model_validate(view)


# -- pages --------------------------------------------------------------------------------


@router.get(
    "/documents/{doc_id}/pages/{page}/image",
    name="page_image",
    tags=["pages"],
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, 404: {"model": Problem}},
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
    tags=["pages"],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"model": Problem}, **_MODEL_ERRORS},
)
async def page_heatmap_image(
    doc_id: DocId,
    page: Page,
    service: ServiceDep,
    work: WorkDep,
    query: str = Query(min_length=1, max_length=4000),
) -> Response:
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
    return Response(
        buffer.getvalue(),
        media_type="image/png",
        headers={"X-PageRAG-Score": f"{heatmap.score:.6f}"},
    )


# -- status -------------------------------------------------------------------------------


@router.get("/status", tags=["status"])
def server_status(service: ServiceDep, work: WorkDep) -> dict[str, Any]:
    """Models, device, backend, documents, pages, disk use, and the model queue."""
    return {**asdict(service.info()), "queue": work.stats()}
