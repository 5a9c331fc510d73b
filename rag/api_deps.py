"""FastAPI dependencies: the service and jobs from the app's state, API keys, the upload cap."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from rag.jobs import JobManager
from rag.service import PageRAG, PageRAGError
from rag.workqueue import Ticket

Message = MutableMapping[str, Any]


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


def _capped(receive: Callable[[], Awaitable[Message]], limit: int, mb: int) -> Any:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:  # also catches bodies sent without a Content-Length
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    f"the upload is larger than PAGERAG_MAX_UPLOAD_MB={mb} MB",
                )
        return message

    return counted


async def upload_form(request: Request, service: ServiceDep) -> FormData:
    """The multipart body, read under the upload cap: a declared length past the cap is
    refused before reading anything, and the bytes are counted as they arrive."""
    mb = service.settings.max_upload_mb
    limit = mb * 1024 * 1024
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the upload is larger than PAGERAG_MAX_UPLOAD_MB={mb} MB",
        )
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "send the files as multipart/form-data (field name `files`)",
        )
    counted = Request(request.scope, _capped(request.receive, limit, mb))
    try:
        return await counted.form(max_files=1000, max_fields=100)
    except HTTPException:
        raise
    except Exception as exc:  # a malformed multipart body
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unreadable upload: {exc}") from exc


UploadForm = Annotated[FormData, Depends(upload_form)]
