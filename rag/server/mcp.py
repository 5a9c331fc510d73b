"""The MCP server: PageRAG's search, answers and page images as tools for agents.

One tool set over the same `PageRAG` service as the REST API, on two transports:

- **Streamable HTTP** at `/mcp`, in the server process (`mount_mcp`, called by `create_app`):
  the same API keys as `/api/v1`, checked before the MCP SDK reads a byte, and model work waits
  in the server's one model queue (`app.state.work`) beside the REST API and the web UI.
- **stdio** (`run_stdio`, the `pagerag mcp` command): the user's own machine, so it also offers
  `add_files`, which ingests local paths. Nothing else ever opens a path a client names.

Inputs are checked by the REST API's own models (`rag.server.schemas`, same limits); a problem the
caller can fix (`UserError`) comes back as a tool error with its message, never as a crash.
Blocking calls run in worker threads with a deadline (`PAGERAG_REQUEST_TIMEOUT`); a call past it
is answered at once, and its model ticket is released only when the thread really ends, so a
caller that gives up can never put a second job on the model.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, ContentBlock, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from rag.config import SearchMode, Settings
from rag.errors import EXIT_CONFIG, UserError
from rag.ids import DOC_ID_LENGTH, MIN_PREFIX, doc_prefix
from rag.keys import KeyRing
from rag.server.deps import MAX_PAGE
from rag.server.modelqueue import QueueTimeout, Ticket, WorkQueue
from rag.server.schemas import FilterIn, QuestionIn, SearchIn, api_words, to_filter
from rag.service import PageRAG, PageRAGError
from rag.types import Answer, Hit, IngestReport, SearchFilter

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.applications import Starlette

    from ingest.runner import IngestProgress

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
MAX_IMAGES = 5  # page images one search attaches (each is a full page PNG, ~0.1-1 MB)
# Streamable HTTP sessions (clients of the 2026 protocol need none): bounded, and forgotten
# after 10 idle minutes, so clients that never say goodbye cannot pile them up.
MAX_SESSIONS = 256
SESSION_IDLE_SECONDS = 600.0
BASE64_PNG = "image/png"

T = TypeVar("T")

INSTRUCTIONS = """PageRAG searches the user's library of PDFs (and scanned pages, charts, tables)
by looking at the page images. Typical use: `search_pages` to find the pages about something
(set include_images to look at them yourself), or `ask` for a written answer that cites its pages
as [1], [2]. `list_documents` shows the library and its document ids, which restrict a search
(doc_ids) or fetch a page (`get_page_image`)."""


# -- inputs: the REST API's limits, as the tools' schemas advertise them ------------------------


def _limits(model: type[BaseModel], name: str) -> dict[str, Any]:
    """The bounds (ge/le/min_length/max_length) the REST body declares for field `name`."""
    found: dict[str, Any] = {}
    for rule in model.model_fields[name].metadata:
        for bound in ("ge", "le", "min_length", "max_length"):
            if getattr(rule, bound, None) is not None:
                found[bound] = getattr(rule, bound)
    return found


_ID_HELP = f"document ids, or unique prefixes of them ({MIN_PREFIX} to {DOC_ID_LENGTH} hex digits)"
Query = Annotated[
    str,
    Field(
        description="What to look for, in natural language (a question or key words)",
        **_limits(SearchIn, "query"),
    ),
]
Question = Annotated[
    str, Field(description="The question to answer", **_limits(QuestionIn, "question"))
]
SearchTopK = Annotated[
    int, Field(description="How many pages to return", **_limits(SearchIn, "top_k"))
]
AskTopK = Annotated[
    int | None,
    Field(
        description="How many of the best pages the model reads (default PAGERAG_ASK_PAGES)",
        **_limits(QuestionIn, "top_k"),
    ),
]
DocIds = Annotated[
    list[str],
    Field(
        description=f"Only these documents: {_ID_HELP}, as list_documents shows them",
        **_limits(FilterIn, "doc_ids"),
    ),
]
SourcePrefix = Annotated[
    str | None,
    Field(
        description="Only files below this path, in whole path components (`reports/2015` "
        "matches `reports/2015/q1.pdf`, not `reports/2015b`)",
        max_length=4000,
    ),
]
Tags = Annotated[list[str], Field(description="Only pages with any of these tags")]
Mode = Annotated[
    SearchMode | None,
    Field(
        description="`hybrid` (default: both channels fused), `visual` (ColQwen2 on the page "
        "images; best for charts, tables, scans) or `text` (BM25 on the PDFs' text layers)"
    ),
]
DocId = Annotated[str, Field(description=f"The document: its id or a unique prefix ({_ID_HELP})")]
PageNumber = Annotated[int, Field(ge=1, le=MAX_PAGE, description="1-based page number")]


# -- outputs ----------------------------------------------------------------------------------


class PageHit(BaseModel):
    rank: int = Field(description="1 = best match")
    doc_id: str
    source: str = Field(description="The file, relative to the folder it was ingested from")
    title: str
    page: int = Field(description="1-based page number")
    score: float = Field(description="Score of the search mode; compare only within one search")


class SearchResult(BaseModel):
    query: str
    mode: SearchMode
    hits: list[PageHit]
    images: int = Field(description="Page images attached after this text, for the best hits")


class CitedPage(BaseModel):
    label: int = Field(description="The [n] the answer uses for this page")
    cited: bool = Field(description="Whether the answer refers to this page")
    doc_id: str
    source: str
    page: int
    score: float


class AskResult(BaseModel):
    question: str
    answer: str
    citations: list[CitedPage] = Field(description="Every page the model read, in [n] order")
    retrieval_seconds: float
    generation_seconds: float


class DocumentEntry(BaseModel):
    doc_id: str
    source: str
    title: str
    pages: int
    tags: list[str]
    sources: list[str] = Field(description="Every path this same file was found under")
    ingested_at: str


class DocumentList(BaseModel):
    total: int = Field(description="Documents in the library")
    offset: int
    documents: list[DocumentEntry]


class FileProblem(BaseModel):
    source: str
    problem: str


class AddedFiles(BaseModel):
    finished: bool = Field(description="False: still ingesting in the background")
    indexed_documents: int
    indexed_pages: int
    skipped_documents: int = Field(description="Unchanged since they were last ingested")
    failed: list[FileProblem]
    warnings: list[FileProblem]
    message: str


# -- wording, errors, threads ------------------------------------------------------------------

# The service words its advice for the command line and the REST API for HTTP; a tool caller is
# told about the tools instead.
_MCP_ADVICE = [
    ("`pagerag docs list` shows them", "list_documents lists them"),
    ("GET /api/v1/documents lists them", "list_documents lists them"),
]
_LOCAL_ADVICE = [
    ("(`pagerag ingest PATH`)", "(the add_files tool, or `pagerag ingest PATH`)"),
    (
        "give it with `--password FILE=PASSWORD`",
        'give it to add_files as passwords={"NAME.pdf": "PASSWORD"}',
    ),
    ("the next `pagerag ingest` run", "the next add_files (or `pagerag ingest`) run"),
    ("the next `pagerag ingest`", "the next add_files (or `pagerag ingest`)"),
]


def mcp_words(text: str, *, local: bool) -> str:
    """A service message with its advice worded for a tool caller: on stdio (`local`) the
    add_files tool ingests; over HTTP the REST API's upload does."""
    for other, ours in _MCP_ADVICE + (_LOCAL_ADVICE if local else []):
        text = text.replace(other, ours)
    return text if local else api_words(text)


def _invalid(exc: ValidationError) -> str:
    """A pydantic error as one line per problem: `where: what`."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if p != "filter") or "input"
        lines.append(f"{where}: {str(error['msg']).removeprefix('Value error, ')}")
    return "; ".join(lines)


class _Claim:
    """Who releases a model ticket: the worker thread once it has started the work, else the
    caller (when it gave up before the thread picked the work up)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "new"

    def take(self) -> bool:
        with self._lock:
            if self._state == "abandoned":
                return False
            self._state = "taken"
            return True

    def abandon(self) -> bool:
        with self._lock:
            if self._state != "new":
                return False
            self._state = "abandoned"
            return True


class Tools:
    """The tools' work, over one service and one model queue (`work` is read on every call:
    the server's queue may be swapped while it runs)."""

    def __init__(self, service: PageRAG, work: Callable[[], WorkQueue], *, local: bool) -> None:
        self.service = service
        self.work = work
        self.local = local
        self.ingestions: list[_Ingestion] = []  # add_files runs (stdio), done or not

    def ingesting(self) -> bool:
        return any(not run.done.is_set() for run in self.ingestions)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """A UserError or a bad input becomes a tool error carrying its message; anything else
        is a bug, which the SDK logs and reports without details."""
        try:
            yield
        except UserError as exc:
            raise ToolError(mcp_words(str(exc), local=self.local)) from exc
        except ValidationError as exc:
            raise ToolError(mcp_words(_invalid(exc), local=self.local)) from exc

    async def model(self, fn: Callable[[Ticket], T]) -> T:
        """`fn(ticket)` in a worker thread once the shared model queue admits it (full: an
        error at once; late: an error at the deadline, while the ticket stays held until the
        thread is done)."""
        work = self.work()
        # Waiting in line blocks a thread (as the REST routes do); not abandoned, so an
        # admission always reaches the `finally` below.
        ticket = await anyio.to_thread.run_sync(work.acquire)
        claim = _Claim()

        def run() -> T:
            if not claim.take():
                raise QueueTimeout(work.timeout)  # nobody waits for it any more
            with ticket:
                return fn(ticket)

        try:
            with anyio.move_on_after(max(ticket.remaining(), 0.0)):
                return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
            raise QueueTimeout(work.timeout)  # reached only when the deadline cut the wait
        finally:
            if claim.abandon():
                ticket.release()

    async def blocking(self, fn: Callable[[], T]) -> T:
        """`fn()` in a worker thread, answered by PAGERAG_REQUEST_TIMEOUT at the latest."""
        seconds = self.service.settings.request_timeout
        with anyio.move_on_after(seconds):
            return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
        raise QueueTimeout(seconds)  # reached only when the deadline cut the wait

    # -- the tools' bodies (blocking; run in threads) -----------------------------------------

    def filters(self, body: FilterIn | None) -> SearchFilter | None:
        return to_filter(body, self.service.resolve)  # an unknown id: PageRAGError

    def page_image(self, doc_id: str, page: int) -> tuple[str, ImageContent]:
        """A stored page image by id and number, checked as GET .../pages/{n}/image checks
        them; the path is built from the resolved id and the number only."""
        full = self.service.resolve(doc_prefix(doc_id))
        path = self.service.library.images.path(full, page)
        if full in self.service.pending() or not path.is_file():
            info = self.service.manifest.info(full)
            pages = f"; it has {info.pages} pages" if info is not None else ""
            raise PageRAGError(f"document {full[:12]} has no page {page}{pages}")
        return full, _png(path.read_bytes())

    def hit_images(self, hits: list[Hit]) -> list[ImageContent]:
        images = []
        for hit in hits[:MAX_IMAGES]:
            path = self.service.library.images.path(hit.doc_id, hit.page)
            try:
                images.append(_png(path.read_bytes()))
            except OSError:  # deleted since the search: the hit still stands
                log.warning("page image of %s page %d is gone", hit.doc_id[:12], hit.page)
        return images

    def answer(self, ticket: Ticket, body: QuestionIn) -> Answer:
        filters = self.filters(body.filter)
        stream = self.service.ask_stream(body.question, body.top_k, filters, mode=body.mode)
        try:
            for _ in stream:
                ticket.check()  # past the deadline: closing the stream stops the generation
            return stream.answer
        finally:
            stream.close()


def _png(data: bytes) -> ImageContent:
    return ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=BASE64_PNG)


def _text(model: BaseModel) -> TextContent:
    return TextContent(type="text", text=model.model_dump_json(indent=1))


def _page_hit(rank: int, hit: Hit) -> PageHit:
    return PageHit(
        rank=rank,
        doc_id=hit.doc_id,
        source=hit.source,
        title=hit.title,
        page=hit.page,
        score=hit.score,
    )


def _ask_result(answer: Answer, text: str) -> AskResult:
    return AskResult(
        question=answer.question,
        answer=text,
        citations=[
            CitedPage(
                label=c.label,
                cited=c.cited,
                doc_id=c.doc_id,
                source=c.source,
                page=c.page,
                score=c.score,
            )
            for c in answer.citations
        ],
        retrieval_seconds=answer.retrieval_seconds,
        generation_seconds=answer.generation_seconds,
    )


def _sources(result: AskResult) -> str:
    lines = [
        f"[{c.label}] {c.source}, page {c.page} (doc_id {c.doc_id[:12]}"
        f"{', cited' if c.cited else ''})"
        for c in result.citations
    ]
    return "\n\nSources:\n" + "\n".join(lines) if lines else ""


# -- the server -------------------------------------------------------------------------------

_READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)

SEARCH_HELP = f"""Find the pages of the user's indexed documents (PDFs, scans, slides) that best
match a query, best first. Use it to locate where something is written or shown; the pages are
ranked by how they look (charts, tables and scans included), not only by their text. Returns each
page's doc_id, source file, title, page number and score. With include_images the best
{MAX_IMAGES} pages come as images to read yourself; get_page_image fetches any other. For a written
answer with citations, use ask instead."""

ASK_HELP = """Answer a question from the user's indexed documents: the best pages are retrieved
and a vision-language model reads them and writes an answer citing them as [1], [2], ... The
result maps every [n] to its doc_id, source file and page (`cited`: used in the answer). Slower
than search_pages (it generates text); prefer search_pages when you will read the pages
yourself."""

LIST_HELP = """List the documents in the user's library: doc_id, source file, title, page count,
tags. Use the ids to restrict search_pages or ask (doc_ids) or to fetch a
page with get_page_image."""

IMAGE_HELP = """Get the image of one page of an indexed document (PNG, as rendered at
ingestion), by doc_id (or a unique prefix of 4+ hex digits) and 1-based page number, as
search_pages, ask or list_documents gave them. Use it to look at a page: its charts, tables,
figures, handwriting."""

ADD_HELP = """Add files from this computer to the library: PDFs, PNG and JPEG images, or folders
(searched recursively). Give absolute paths (~ is expanded). Unchanged files are skipped, a
changed file replaces its old pages, and an interrupted run resumes. Waits up to
PAGERAG_REQUEST_TIMEOUT seconds; past that, ingestion carries on in the background
(list_documents shows the documents once they are complete)."""


def _flat(text: str) -> str:
    """A description as one paragraph (the source wraps it at 100 columns)."""
    return " ".join(text.split())


def build_server(tools: Tools) -> MCPServer[Any]:
    """The MCP server over `tools.service`; `tools.local` (stdio only) adds `add_files`."""
    service, local = tools.service, tools.local
    # MCPServer() calls logging.basicConfig (a Rich handler on the root logger): a handler in
    # place for that moment makes it a no-op, as the process's logging is not the SDK's to set.
    root, placeholder = logging.getLogger(), logging.NullHandler()
    root.addHandler(placeholder)
    try:
        server: MCPServer[Any] = MCPServer(
            "pagerag", title="PageRAG", instructions=_flat(INSTRUCTIONS)
        )
    finally:
        root.removeHandler(placeholder)

    @server.tool(title="Search pages", description=_flat(SEARCH_HELP), annotations=_READ_ONLY)
    async def search_pages(
        query: Query,
        top_k: SearchTopK = 5,
        doc_ids: DocIds = [],  # noqa: B006 - pydantic copies defaults
        source_prefix: SourcePrefix = None,
        tags: Tags = [],  # noqa: B006
        mode: Mode = None,
        include_images: Annotated[
            bool, Field(description=f"Attach the images of the best {MAX_IMAGES} pages")
        ] = False,
    ) -> Annotated[CallToolResult, SearchResult]:
        with tools.errors():
            body = SearchIn(
                query=query,
                top_k=top_k,
                filter=FilterIn(doc_ids=doc_ids, source_prefix=source_prefix, tags=tags),
                mode=mode,
            )

            def run(ticket: Ticket) -> tuple[SearchMode, list[Hit], list[ImageContent]]:
                chosen = service.search_mode(body.mode)
                filters = tools.filters(body.filter)
                hits = service.search(body.query, body.top_k, filters, chosen)
                return chosen, hits, tools.hit_images(hits) if include_images else []

            chosen, hits, images = await tools.model(run)
        result = SearchResult(
            query=body.query,
            mode=chosen,
            hits=[_page_hit(n, h) for n, h in enumerate(hits, 1)],
            images=len(images),
        )
        content: list[ContentBlock] = [_text(result), *images]
        return CallToolResult(content=content, structured_content=result.model_dump(mode="json"))

    @server.tool(title="Ask", description=_flat(ASK_HELP), annotations=_READ_ONLY)
    async def ask(
        question: Question,
        top_k: AskTopK = None,
        doc_ids: DocIds = [],  # noqa: B006
        source_prefix: SourcePrefix = None,
        tags: Tags = [],  # noqa: B006
        mode: Mode = None,
    ) -> Annotated[CallToolResult, AskResult]:
        with tools.errors():
            body = QuestionIn(
                question=question,
                top_k=top_k,
                filter=FilterIn(doc_ids=doc_ids, source_prefix=source_prefix, tags=tags),
                mode=mode,
            )
            answer = await tools.model(lambda ticket: tools.answer(ticket, body))
        # Without pages the text is the service's own explanation, worded for the tools.
        text = answer.text if answer.citations else mcp_words(answer.text, local=local)
        result = _ask_result(answer, text)
        return CallToolResult(
            content=[TextContent(type="text", text=text + _sources(result))],
            structured_content=result.model_dump(mode="json"),
        )

    @server.tool(title="List documents", description=_flat(LIST_HELP), annotations=_READ_ONLY)
    async def list_documents(
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many")] = 200,
        offset: Annotated[int, Field(ge=0, description="Skip this many first")] = 0,
    ) -> DocumentList:
        with tools.errors():
            docs = await tools.blocking(service.documents)
        return DocumentList(
            total=len(docs),
            offset=offset,
            documents=[
                DocumentEntry(
                    doc_id=d.doc_id,
                    source=d.source,
                    title=d.title,
                    pages=d.pages,
                    tags=list(d.tags),
                    sources=list(d.sources),
                    ingested_at=d.ingested_at,
                )
                for d in docs[offset : offset + limit]
            ],
        )

    @server.tool(title="Get page image", description=_flat(IMAGE_HELP), annotations=_READ_ONLY)
    async def get_page_image(doc_id: DocId, page: PageNumber) -> CallToolResult:
        with tools.errors():
            full, image = await tools.blocking(lambda: tools.page_image(doc_id, page))
        label = TextContent(type="text", text=f"doc_id {full}, page {page}")
        return CallToolResult(content=[label, image])

    if local:
        _add_files_tool(server, tools)
    return server


def _add_files_tool(server: MCPServer[Any], tools: Tools) -> None:
    service = tools.service

    @server.tool(
        title="Add files",
        description=_flat(ADD_HELP),
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=True,
            open_world_hint=False,
        ),
    )
    async def add_files(
        paths: Annotated[
            list[str],
            Field(min_length=1, max_length=1000, description="Absolute paths of files or folders"),
        ],
        ctx: Context,
        tags: Annotated[list[str], Field(description="Tags for the new documents")] = [],  # noqa: B006
        passwords: Annotated[
            dict[str, str],
            Field(description='Passwords of encrypted PDFs by file name: {"q1.pdf": "secret"}'),
        ] = {},  # noqa: B006
    ) -> AddedFiles:
        with tools.errors():
            files = [_local_path(p) for p in paths]
            run = _Ingestion(service, files, tags, passwords)
            tools.ingestions.append(run)
            run.start()
            deadline = time.monotonic() + service.settings.request_timeout
            shown = (-1, -1)
            while not run.done.wait(0) and time.monotonic() < deadline:
                progress = run.progress
                if progress is not None and (progress.pages_done, progress.pages_total) != shown:
                    shown = (progress.pages_done, progress.pages_total)
                    await ctx.report_progress(
                        progress.pages_done, progress.pages_total or None, progress.stage
                    )
                await anyio.sleep(0.25)
            return run.outcome(tools.local)


class _Ingestion:
    """One `service.ingest` in its own thread, which outlives a caller that stops waiting
    (the run is resumable anyway, and the write lock keeps runs one at a time)."""

    def __init__(
        self, service: PageRAG, paths: list[Path], tags: list[str], passwords: dict[str, str]
    ) -> None:
        self.service = service
        self.paths, self.tags, self.passwords = paths, tags, passwords
        self.done = threading.Event()
        self.progress: IngestProgress | None = None
        self.report: IngestReport | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        # A daemon: when the client goes away mid-run the process may exit, which leaves the
        # run as an interruption leaves it (stored pages kept, resumed by the next run).
        threading.Thread(target=self._run, name="pagerag-mcp-ingest", daemon=True).start()

    def _run(self) -> None:
        try:
            self.report = self.service.ingest(
                self.paths,
                tags=self.tags,
                passwords=self.passwords or None,
                on_progress=self._seen,
            )
        except BaseException as exc:
            self.error = exc
            if not isinstance(exc, UserError):
                log.exception("ingesting %d paths failed", len(self.paths))
        finally:
            self.done.set()

    def _seen(self, progress: IngestProgress) -> None:
        self.progress = progress

    def outcome(self, local: bool) -> AddedFiles:
        if not self.done.is_set():
            p = self.progress
            so_far = f" ({p.pages_done} of {p.pages_total} pages stored so far)" if p else ""
            return AddedFiles(
                finished=False,
                indexed_documents=p.indexed_documents if p else 0,
                indexed_pages=p.pages_done if p else 0,
                skipped_documents=0,
                failed=[],
                warnings=[],
                message=f"still ingesting in the background{so_far}; list_documents shows "
                "each document once it is complete",
            )
        if self.error is not None:
            raise self.error
        report = self.report
        assert report is not None
        failed = [
            FileProblem(source=f.source, problem=mcp_words(f.error, local=local))
            for f in report.failed
        ]
        warnings = [
            FileProblem(source=w.source, problem=mcp_words(w.warning, local=local))
            for w in report.warnings
        ]
        message = (
            f"indexed {report.indexed_documents} documents ({report.indexed_pages} pages), "
            f"skipped {report.skipped_documents} unchanged, {len(failed)} failed"
        )
        if report.retriever_error:
            message += (
                f"; the pages are found by text search only until the model loads: "
                f"{report.retriever_error}"
            )
        return AddedFiles(
            finished=True,
            indexed_documents=report.indexed_documents,
            indexed_pages=report.indexed_pages,
            skipped_documents=report.skipped_documents,
            failed=failed,
            warnings=warnings,
            message=message,
        )


def _local_path(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise PageRAGError(
            f"{text!r} is not an absolute path; give the full path (this server runs in "
            f"{Path.cwd()})"
        )
    if not path.exists():
        raise PageRAGError(f"{text!r} does not exist; check the path")
    return path


# -- streamable HTTP at /mcp -------------------------------------------------------------------

KEY_REQUIRED = (
    "a valid API key is required: send `Authorization: Bearer KEY` (PAGERAG_API_KEYS, or a key "
    "made by `pagerag keys add`)"
)


class McpEndpoint:
    """The ASGI app of the /mcp route: checks the API key as `/api/v1` does, then hands the
    request to the MCP SDK's streamable HTTP app, which runs while `running()` is entered
    (inside the server's lifespan; a fresh one each time, as the SDK's session manager
    cannot be restarted)."""

    def __init__(self, server: MCPServer[Any], keys: KeyRing, library: str) -> None:
        self.server = server
        self.keys = keys  # read per request (a changed keys file counts at once)
        self.library = library  # the server's library: what the tools act on
        self._app: Starlette | None = None

    def _build(self) -> Starlette:
        return self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            max_sessions=MAX_SESSIONS,
            session_idle_timeout=SESSION_IDLE_SECONDS,
            # The SDK's Host allow-list would default to localhost names only; the server is
            # reached under whatever name it is deployed behind, and keys protect it.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        app = self._build()
        async with app.router.lifespan_context(app):
            self._app = app
            try:
                yield
            finally:
                self._app = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys.enabled:
            given = _bearer(scope)
            try:
                principal = self.keys.authenticate(given)
                if principal is not None:  # the tools only read (add_files is stdio only)
                    principal.check(self.library, "read", "using the MCP tools")
            except UserError as exc:  # 403 out of scope, 503 a broken keys file
                await JSONResponse({"detail": str(exc)}, exc.http_status)(scope, receive, send)
                return
            if given is None or principal is None:
                refusal = JSONResponse(
                    {"detail": KEY_REQUIRED}, 401, headers={"WWW-Authenticate": "Bearer"}
                )
                await refusal(scope, receive, send)
                return
            # The SDK binds a session to the credential that opened it: another key's holder
            # gets 404 for it. Only a digest of the key is kept.
            digest = hashlib.sha256(given.encode()).hexdigest()[:16]
            token = AccessToken(token=digest, client_id=f"key-{digest}", scopes=[])
            scope = {**scope, "user": AuthenticatedUser(token)}
        app = self._app
        if app is None:
            refusal = JSONResponse(
                {"detail": "the MCP endpoint runs only inside the server's lifespan"}, 503
            )
            await refusal(scope, receive, send)
            return
        await app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, given = value.decode("latin-1").partition(" ")
            return given.strip() if scheme.lower() == "bearer" else None
    return None


def mount_mcp(app: FastAPI, service: PageRAG) -> McpEndpoint:
    """Adds the /mcp route to `app` (before the web UI's catch-all mount); the caller enters
    the returned endpoint's `running()` in the app's lifespan. Model work waits in
    `app.state.work`, the queue the REST API and the web UI use."""
    server = build_server(Tools(service, lambda: app.state.work, local=False))
    endpoint = McpEndpoint(server, app.state.keys, service.settings.library)
    app.router.routes.append(Route(MCP_PATH, endpoint, include_in_schema=False))
    return endpoint


# -- stdio ------------------------------------------------------------------------------------


def run_stdio(settings: Settings) -> None:
    """Serve the tools (add_files included) over stdin/stdout until the client closes them.
    Models load on first use; logs go to stderr (stdout carries only the protocol)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    service = PageRAG(settings)
    work = WorkQueue(settings.queue_size, settings.request_timeout)
    tools = Tools(service, lambda: work, local=True)
    try:
        anyio.run(build_server(tools).run_stdio_async)
    finally:
        if tools.ingesting():  # closing the index under a running ingestion could corrupt it
            log.warning("the client left during add_files; the next run resumes it")
        else:
            service.close()


def main() -> None:
    try:
        from rag.libraries import settings_for

        run_stdio(settings_for(Settings()))  # PAGERAG_LIBRARY
    except UserError as exc:
        print(f"pagerag mcp: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code or EXIT_CONFIG) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
