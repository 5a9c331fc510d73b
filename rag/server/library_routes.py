"""/api/v1/libraries: list, create and delete libraries (rag/libraries.py).

Listing needs any valid key and shows only the libraries that key may use; creating and
deleting need an admin key for every library. A library's own routes are the documents and
search routes under /api/v1/libraries/{library}/ (`routes.router`, included there by the app).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from starlette.concurrency import run_in_threadpool

from rag.keys import ALL_LIBRARIES, Principal
from rag.libraries import LibraryInfo
from rag.server.deps import LibrariesDep, PrincipalDep, library_param
from rag.server.routes import errors
from rag.server.schemas import LibrariesOut, LibraryIn, LibraryOut

router = APIRouter(prefix="/api/v1/libraries", tags=["libraries"], responses=errors(401, 403))

LibraryName = Annotated[str, Depends(library_param)]


def _admin(principal: PrincipalDep) -> Principal:
    principal.check(ALL_LIBRARIES, "admin", "managing libraries")
    return principal


AdminDep = Annotated[Principal, Depends(_admin)]


def _out(request: Request, info: LibraryInfo) -> LibraryOut:
    root = str(request.url_for("libraries_root")).rstrip("/")
    return LibraryOut(
        name=info.name,
        created_at=info.created_at,
        settings=info.settings,
        url=f"{root}/{info.name}",
    )


@router.get("", name="libraries_root", operation_id="listLibraries")
def list_libraries(
    request: Request, principal: PrincipalDep, libraries: LibrariesDep
) -> LibrariesOut:
    """The libraries this key may use, `default` first."""
    names = principal.visible(libraries.names())
    return LibrariesOut(libraries=[_out(request, libraries.info(n)) for n in names])


@router.post(
    "",
    operation_id="createLibrary",
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, 409, 422, s409="A library of this name exists"),
)
async def create_library(
    body: LibraryIn, request: Request, _: AdminDep, libraries: LibrariesDep
) -> LibraryOut:
    """A new, empty library, with its own model settings if given (the others are the
    server's). Its routes are under the `url` returned."""
    own = body.settings.model_dump(exclude_none=True) if body.settings else {}
    info = await run_in_threadpool(libraries.create, body.name, own)
    return _out(request, info)


@router.get("/{library}", operation_id="getLibrary", responses=errors(404, 422))
def get_library(
    library: LibraryName, request: Request, principal: PrincipalDep, libraries: LibrariesDep
) -> LibraryOut:
    """One library's settings and API root."""
    principal.check(library, "read", "reading")
    return _out(request, libraries.info(library))


@router.delete(
    "/{library}",
    operation_id="deleteLibrary",
    responses=errors(400, 404, 422, s400="The default library cannot be deleted"),
)
async def delete_library(
    library: LibraryName, request: Request, _: AdminDep, libraries: LibrariesDep
) -> LibraryOut:
    """Delete a library: its documents, index (its Qdrant collection on a server), page
    images and jobs. Its running job, if any, is stopped first."""
    info = libraries.info(library)
    close_jobs = request.app.state.close_jobs
    await run_in_threadpool(libraries.delete, library, close_jobs)
    return _out(request, info)
