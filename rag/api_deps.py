"""FastAPI dependencies: the service and jobs from the app's state, API keys, the upload cap."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from rag.jobs import JobManager
from rag.service import PageRAG, PageRAGError
from rag.workqueue import Ticket


def get_service(request: Request) -> PageRAG:
    return request.app.state.service


def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


ServiceDep = Annotated[PageRAG, Depends(get_service)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]

_bearer = HTTPBearer(auto_error=False, description="One of PAGERAG_API_KEYS, when it is set")


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    """Constant-time in the key's content; every key is compared, so the time does not tell
    which one nearly matched."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def require_key(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    keys = service.settings.api_key_list
    if not keys:
        return
    if credentials is None or not key_matches(credentials.credentials, keys):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API key is required: send `Authorization: Bearer KEY` (PAGERAG_API_KEYS)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def document_id(doc_id: str, service: ServiceDep) -> str:
    """A full document id from the path (an id or a unique prefix), else 404."""
    try:
        return service.resolve(doc_id)
    except PageRAGError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


DocId = Annotated[str, Depends(document_id)]


async def admit(service: PageRAG) -> Ticket:
    """A place at the model: waits in the shared line (QueueFull -> 429, QueueTimeout -> 504,
    both turned into responses by the app's exception handlers)."""
    return await run_in_threadpool(service.work.acquire)


# One upload request: files and form fields. Past these, 400 (Starlette's parser says which).
MAX_UPLOAD_FILES = 256
MAX_UPLOAD_FIELDS = 16


class _UploadParser(MultiPartParser):
    # Each file is spooled in memory until it passes this size, then written to disk. With
    # Starlette's 1 MiB, a request of many small files would sit in memory whole (up to
    # PAGERAG_MAX_UPLOAD_MB); with 64 KiB one request holds at most MAX_UPLOAD_FILES x 64 KiB.
    spool_max_size = 64 * 1024


async def upload_form(request: Request) -> FormData:
    """The multipart body. Its size was capped while it streamed in by `rag.guard` (413,
    before anything is buffered: a declared length past PAGERAG_MAX_UPLOAD_MB is refused
    before reading, a chunked body the moment it passes it), which also refuses too many
    parts and oversized form fields; this parses what got through."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "send the files as multipart/form-data (field name `files`)",
        )
    parser = _UploadParser(
        request.headers,
        request.stream(),
        max_files=MAX_UPLOAD_FILES,
        max_fields=MAX_UPLOAD_FIELDS,
    )
    try:
        return await parser.parse()
    except HTTPException:  # the guard's refusal, raised from the stream
        raise
    except MultiPartException as exc:  # too many files or fields
        raise HTTPException(status.HTTP_400_BAD_REQUEST, exc.message) from exc
    except Exception as exc:  # a malformed multipart body
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unreadable upload: {exc}") from exc


UploadForm = Annotated[FormData, Depends(upload_form)]
