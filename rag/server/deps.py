"""FastAPI dependencies: the caller's key and what it may do, the library's service and jobs
from the app's state, the upload cap."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from rag import ids
from rag.errors import UserError
from rag.ids import (
    DOC_ID_LENGTH,
    DOC_PREFIX_PATTERN,
    JOB_ID_LENGTH,
    JOB_ID_PATTERN,
    MIN_PREFIX,
    doc_prefix,
)
from rag.keys import Principal
from rag.libraries import NAME_PATTERN, Libraries
from rag.server.jobs import JobManager
from rag.server.modelqueue import Ticket, WorkQueue
from rag.service import PageRAG, PageRAGError

_bearer = HTTPBearer(
    auto_error=False, description="One of PAGERAG_API_KEYS, or a key from the keys file"
)
KEY_REQUIRED = (
    "a valid API key is required: send `Authorization: Bearer KEY` (PAGERAG_API_KEYS, or a key "
    "made by `pagerag keys add`)"
)


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Who is calling: 401 without a valid key when keys are configured."""
    ring = request.app.state.keys
    found = ring.authenticate(credentials.credentials if credentials else None)
    if found is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, KEY_REQUIRED, headers={"WWW-Authenticate": "Bearer"}
        )
    return found


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def library_name(request: Request) -> str:
    """The library a route acts on: `/api/v1/libraries/{library}/...`, else the server's own
    (PAGERAG_LIBRARY, `default` unless set)."""
    name = request.path_params.get("library")
    return name if isinstance(name, str) else request.app.state.service.settings.library


def library_param(
    library: Annotated[
        str,
        Path(
            description="A library's name (`GET /api/v1/libraries` lists them)",
            json_schema_extra={"pattern": NAME_PATTERN},
            max_length=40,
        ),
    ],
) -> str:
    from rag.libraries import check_name

    return check_name(library)  # LibraryError: 400


def _role(request: Request) -> tuple[str, str]:
    """The role a documents/search route needs, and the words for what it does."""
    method, path = request.method, request.url.path
    if method == "POST" and path.endswith("/documents"):
        return "write", "uploading"
    if method == "PATCH":
        return "write", "editing a document"
    if method == "DELETE":
        return "write", "deleting a document"
    return "read", "reading"


def authorize(request: Request, principal: PrincipalDep) -> Principal:
    """The caller's key may act in this library with the role this route needs (else 403)."""
    role, action = _role(request)
    principal.check(library_name(request), role, action)
    return principal


def get_libraries(request: Request) -> Libraries:
    return request.app.state.libraries


def get_service(request: Request, _: Annotated[Principal, Depends(authorize)]) -> PageRAG:
    """The library's service (opened on first use; 404 for an unknown library)."""
    return request.app.state.libraries.get(library_name(request))


def get_jobs(request: Request, service: Annotated[PageRAG, Depends(get_service)]) -> JobManager:
    return request.app.state.jobs_for(service)


def get_work(request: Request) -> WorkQueue:
    return request.app.state.work


ServiceDep = Annotated[PageRAG, Depends(get_service)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
WorkDep = Annotated[WorkQueue, Depends(get_work)]
LibrariesDep = Annotated[Libraries, Depends(get_libraries)]


class UnknownDocument(UserError):
    """No document has this id (or the prefix is ambiguous): a 404 for a path."""

    http_status = 404


def document_id(
    doc_id: Annotated[
        str,
        Path(
            description=f"A document id or a unique prefix of one: {MIN_PREFIX} to "
            f"{DOC_ID_LENGTH} hex digits",
            json_schema_extra={"pattern": DOC_PREFIX_PATTERN},
        ),
    ],
    service: ServiceDep,
) -> str:
    """A full document id from the path (an id or a unique prefix): 422 for one that is not
    hex (so it is never a pattern), 404 for an unknown or ambiguous one. Both are UserErrors:
    the app's handler words them for the API."""
    prefix = doc_prefix(doc_id)  # IdError: 422
    try:
        return service.resolve(prefix)
    except PageRAGError as exc:
        raise UnknownDocument(str(exc)) from exc


DocId = Annotated[str, Depends(document_id)]


def job_id(
    job_id: Annotated[
        str,
        Path(
            description=f"The job's id: {JOB_ID_LENGTH} hex digits",
            json_schema_extra={"pattern": JOB_ID_PATTERN},
        ),
    ],
) -> str:
    return ids.job_id(job_id)  # IdError: 422


JobId = Annotated[str, Depends(job_id)]

# A page number from the path. Bounded here, so no file name is ever built from a number past
# any real page (a 300-digit one made the file name too long: 500 instead of 404).
MAX_PAGE = 100_000
Page = Annotated[int, Path(ge=1, le=MAX_PAGE, description="1-based page number")]


async def admit(work: WorkQueue) -> Ticket:
    """A place at the model: waits in the shared line (QueueFull -> 429, QueueTimeout -> 504,
    both turned into responses by the app's exception handlers)."""
    return await run_in_threadpool(work.acquire)


# One upload request: files and form fields. Past these, 400 (Starlette's parser says which).
MAX_UPLOAD_FILES = 256
MAX_UPLOAD_FIELDS = 16


class _UploadParser(MultiPartParser):
    # Each file is spooled in memory until it passes this size, then written to disk. With
    # Starlette's 1 MiB, a request of many small files would sit in memory whole (up to
    # PAGERAG_MAX_UPLOAD_MB); with 64 KiB one request holds at most MAX_UPLOAD_FILES x 64 KiB.
    spool_max_size = 64 * 1024


async def upload_form(request: Request) -> FormData:
    """The multipart body. Its size was capped while it streamed in by `rag.server.guard` (413,
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
