"""Request and response bodies of the REST API (they make its OpenAPI schema at /docs), and
the conversions from the service's values to them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.datastructures import URL

from rag.config import SearchMode
from rag.ids import DOC_ID_LENGTH, DOC_PREFIX_PATTERN, MIN_PREFIX, IdError, doc_prefix
from rag.prompt import Turn
from rag.types import Answer, Citation, DocumentInfo, Hit, SearchFilter, ServiceInfo

if TYPE_CHECKING:
    from rag.models.download import Download
    from rag.server.jobs import JobInfo

# Advice in the service's and the ingestion's messages is written for the command line; an
# API client is told what it can do through the API instead. Applied wherever the API turns
# such a message into a response: the UserError handler, job records, answers without pages.
_API_ADVICE = [
    ("`pagerag docs list` shows them", "GET /api/v1/documents lists them"),
    (
        "give it with `--password FILE=PASSWORD` or decrypt it (e.g. `qpdf --decrypt`) first",
        "upload it again with its password (form field `password`, or `passwords`: a JSON "
        'object such as {"NAME.pdf": "PASSWORD"}) or decrypt it first',
    ),
    (
        "Ingest some PDFs first (`pagerag ingest PATH`).",
        "Upload some PDFs first (POST /api/v1/documents).",
    ),
    (
        "the next `pagerag ingest` run completes the document",
        "uploading the file again completes the document",
    ),
    (
        "the next `pagerag ingest` completes the documents",
        "uploading the files again completes the documents",
    ),
    ("text search works now (`--mode text`)", 'text search works now ("mode": "text")'),
    ("finding pages works now (`pagerag search`)", "finding pages works now (POST /api/v1/search)"),
]


def api_words(text: str) -> str:
    """A message of the service or the ingestion, with its command-line advice replaced by
    what to do through the API."""
    for cli, api in _API_ADVICE:
        text = text.replace(cli, api)
    return text


class Problem(BaseModel):
    """Every error response but a request validation 422 (see `ValidationProblem`)."""

    detail: str = Field(description="What went wrong and what to change")


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description='Where: e.g. `["body", "query"]`')
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """A 422: `detail` is a list of issues when the body or a parameter does not fit its
    schema (FastAPI's validation), a string when a typed id is malformed."""

    detail: str | list[ValidationIssue]


def _api_doc_prefix(text: str) -> str:
    try:
        return doc_prefix(text)
    except IdError as exc:  # pydantic reports it in the 422's list: with the API's advice
        raise ValueError(api_words(str(exc))) from exc


# A typed document id: hex only (422 otherwise, with `rag.ids`'s message), lowercased.
DocPrefix = Annotated[
    str, AfterValidator(_api_doc_prefix), Field(json_schema_extra={"pattern": DOC_PREFIX_PATTERN})
]


class FilterIn(BaseModel):
    """All given fields must hold; empty ones do not restrict."""

    doc_ids: list[DocPrefix] = Field(
        default_factory=list,
        max_length=100,
        description=f"Document ids or unique prefixes ({MIN_PREFIX} to {DOC_ID_LENGTH} hex digits)",
    )
    source_prefix: str | None = Field(
        None, description="Whole path components: `reports/2015` matches files below it"
    )
    tags: list[str] = Field(default_factory=list, description="Pages with any of these tags")


_MODE = Field(
    None,
    description="`visual` (ColQwen2 MaxSim), `text` (BM25 over the pages' text layers) or "
    "`hybrid` (both, fused by reciprocal rank); default PAGERAG_SEARCH_MODE. Scores are "
    "those of the mode, so they compare only within one mode.",
)


class SearchIn(BaseModel):
    query: str = Field(min_length=1, max_length=4000, examples=["total permits in November 2015"])
    top_k: int = Field(5, ge=1, le=100)
    filter: FilterIn | None = None
    mode: SearchMode | None = _MODE


class HitOut(BaseModel):
    doc_id: str
    source: str
    title: str
    page: int
    score: float
    image_url: str
    heatmap_url: str


class SearchOut(BaseModel):
    query: str
    hits: list[HitOut]


class TurnIn(BaseModel):
    question: str = Field(max_length=4000)
    answer: str = Field(max_length=20000)


class QuestionIn(BaseModel):
    """A question (POST /ask/stream; POST /ask takes `stream` too)."""

    question: str = Field(min_length=1, max_length=4000, examples=["What was the total in 2015?"])
    top_k: int | None = Field(None, ge=1, le=20, description="Pages shown to the model")
    filter: FilterIn | None = None
    history: list[TurnIn] = Field(
        default_factory=list, max_length=20, description="Earlier turns, oldest first"
    )
    mode: SearchMode | None = _MODE

    def turns(self) -> list[Turn]:
        return [(t.question, t.answer) for t in self.history]


class AskIn(QuestionIn):
    stream: bool = Field(
        False,
        description="Answer as server-sent events, as POST /ask/stream does (which is the "
        "operation to use for streaming: this one is documented as JSON only)",
    )


PixelBox = Annotated[
    tuple[int, int, int, int],
    Field(
        description="[x1, y1, x2, y2]: top-left and bottom-right corners, in pixels of the "
        "page image at image_url"
    ),
]


class CitationOut(BaseModel):
    label: int = Field(description="The `[n]` the answer uses for this page")
    cited: bool = Field(description="The answer refers to this page")
    doc_id: str
    source: str
    page: int
    score: float
    image_url: str
    boxes: list[PixelBox] = Field(
        default_factory=list, description="Where the answer boxed its evidence on this page"
    )
    regions: list[PixelBox] = Field(
        default_factory=list,
        description="The regions of this page sent to the model as full-resolution crops, "
        "beside the page (the parts that matched the question best)",
    )


class AnswerOut(BaseModel):
    question: str
    text: str
    citations: list[CitationOut]
    retrieval_seconds: float
    generation_seconds: float
    prompt_tokens: int
    completion_tokens: int


class DocumentOut(BaseModel):
    doc_id: str
    source: str
    title: str
    pages: int
    sources: list[str]
    tags: list[str]
    ingested_at: str
    bytes: int
    thumbnail_url: str


class DocumentsOut(BaseModel):
    documents: list[DocumentOut]


class DeletedOut(BaseModel):
    deleted: DocumentOut


class DocumentPatch(BaseModel):
    """What to change; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, min_length=1, max_length=300, description="A new title")
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=32, description="The document's tags from now on (`[]` clears them)"
    )


class LibrarySettingsIn(BaseModel):
    """A library's own model and search settings (the rest are the server's PAGERAG_*)."""

    model_config = ConfigDict(extra="forbid")

    retriever_model: str | None = Field(None, max_length=200)
    retriever_revision: str | None = Field(None, max_length=100)
    max_visual_tokens: int | None = Field(None, ge=16)
    generator_model: str | None = Field(None, max_length=200)
    generator_revision: str | None = Field(None, max_length=100)
    answer_url: str | None = Field(None, max_length=500)
    search_mode: Literal["visual", "text", "hybrid"] | None = None
    ask_pages: int | None = Field(None, ge=1, le=20)
    prefetch_limit: int | None = Field(None, ge=1, le=10_000)
    hnsw_ef: int | None = Field(None, ge=1, le=100_000)


class LibraryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=40,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$",
        description="Lowercase letters, digits, '-' and '_'",
    )
    settings: LibrarySettingsIn | None = None


class LibraryOut(BaseModel):
    name: str
    created_at: str = Field(description="Empty for `default`")
    settings: dict[str, Any] = Field(description="The library's own settings")
    url: str = Field(description="Its API root: append /search, /documents, ...")


class LibrariesOut(BaseModel):
    libraries: list[LibraryOut] = Field(description="Those the key may use, `default` first")


class FileResultOut(BaseModel):
    name: str
    status: Literal["queued", "indexed", "unchanged", "failed"]
    doc_id: str | None
    error: str | None


class FileErrorOut(BaseModel):
    """A file that was not ingested, and why."""

    source: str
    error: str


class FileWarningOut(BaseModel):
    """A file that was ingested with a caveat (e.g. pages past the limit)."""

    source: str
    warning: str


class JobOut(BaseModel):
    id: str
    kind: Literal["upload", "folder"]
    state: Literal["queued", "running", "done", "failed"]
    created_at: str
    started_at: str | None
    finished_at: str | None
    stage: str = Field(
        description="While running: `reading`, `loading the model`, `rendering`, `embedding`, "
        "`storing` or `done`; empty before the job starts"
    )
    files_total: int = Field(description="Counters only grow while the job runs")
    files_done: int
    pages_total: int = Field(description="Pages to store; 0 while the files are being read")
    pages_done: int
    current: str = Field(description="The file being worked on")
    indexed_documents: int = Field(description="Documents completed so far")
    indexed_pages: int
    skipped_documents: int
    files: list[FileResultOut]
    errors: list[FileErrorOut] = Field(description="Each file that failed")
    warnings: list[FileWarningOut]
    message: str = Field(description="Why the whole job failed, if it did")


class JobsOut(BaseModel):
    jobs: list[JobOut]


class QueueOut(BaseModel):
    """The shared line in front of the models (API and web UI)."""

    running: int
    waiting: int
    max_waiting: int = Field(description="PAGERAG_QUEUE_SIZE")
    timeout_seconds: float = Field(description="PAGERAG_REQUEST_TIMEOUT")
    served: int
    rejected: int = Field(description="Refused with 429")
    timed_out: int = Field(description="Answered 504")
    mean_seconds: float


class StatusOut(BaseModel):
    backend: str = Field(description="`qdrant-edge` (embedded) or `qdrant-server`")
    data_dir: str
    retriever_model: str
    retriever_loaded: bool
    generator_model: str
    generator_loaded: bool
    device: str
    dtype: str
    documents: int
    pages: int = Field(description="Of complete documents: what search can find")
    pending_documents: int = Field(description="Being ingested, or interrupted")
    pending_pages: int
    waiting_pages: int = Field(
        description="Stored without visual vectors (no retriever yet): text search only"
    )
    failed_files: int
    bytes_on_disk: int = Field(description="Index, page images and manifest")
    index_bytes: int
    images_bytes: int
    retriever_error: str = Field(
        description="Why the retriever last failed to load, naming the setting to change "
        "(empty once it loads)"
    )
    generator_error: str = Field(
        description="Why the generator last failed to load, naming the setting to change "
        "(empty once it loads)"
    )
    queue: QueueOut


class HealthOut(BaseModel):
    status: Literal["ok"]


class DownloadOut(BaseModel):
    """A model being downloaded from the Hugging Face Hub (the first run)."""

    model: str = Field(description="Hub id of the repository being fetched")
    kind: str = Field(description="`ColQwen2` (the retriever) or `Qwen2-VL` (the generator)")
    bytes_done: int
    bytes_total: int = Field(description="Grows while the sizes of the files become known")
    bytes_per_second: float = Field(description="Over the last seconds")
    seconds_left: float | None = Field(description="At the current rate; null when unknown")
    started_at: str = Field(description="ISO 8601, UTC")

    @classmethod
    def of(cls, d: Download) -> DownloadOut:
        return cls(
            model=d.model_id,
            kind=d.kind,
            bytes_done=d.done,
            bytes_total=d.total,
            bytes_per_second=round(d.rate, 1),
            seconds_left=None if d.seconds_left is None else round(d.seconds_left),
            started_at=datetime.fromtimestamp(d.started, UTC).isoformat(timespec="seconds"),
        )


class ReadyOut(BaseModel):
    status: Literal["ready", "starting", "failed"]
    detail: str | None = Field(
        None, description="Why not ready (absent when ready); a failure names the setting"
    )
    downloads: list[DownloadOut] | None = Field(
        None, description="Models being downloaded now (absent when none)"
    )


# -- conversions --------------------------------------------------------------------------


def to_filter(body: FilterIn | None, resolve: Any) -> SearchFilter | None:
    """`resolve` turns an id prefix into a full id (and raises for an unknown one)."""
    if body is None:
        return None
    filters = SearchFilter(
        doc_ids=tuple(resolve(d) for d in body.doc_ids),
        source_prefix=body.source_prefix or None,
        tags=tuple(body.tags),
    )
    return None if filters.is_empty() else filters


def url_for(request: Request, name: str, **params: Any) -> str:
    """The URL of route `name` in the library this request is about (a request under
    /api/v1/libraries/{library} links to that library's routes)."""
    library = request.path_params.get("library")
    if isinstance(library, str):
        return str(request.url_for(name, library=library, **params))
    return str(request.url_for(name, **params))


def image_url(request: Request, doc_id: str, page: int) -> str:
    return url_for(request, "page_image", doc_id=doc_id, page=page)


def hit_out(request: Request, hit: Hit, query: str) -> HitOut:
    heatmap = url_for(request, "page_heatmap", doc_id=hit.doc_id, page=hit.page)
    return HitOut(
        doc_id=hit.doc_id,
        source=hit.source,
        title=hit.title,
        page=hit.page,
        score=hit.score,
        image_url=image_url(request, hit.doc_id, hit.page),
        heatmap_url=str(URL(heatmap).include_query_params(query=query)),
    )


def citation_out(request: Request, c: Citation) -> CitationOut:
    return CitationOut(
        label=c.label,
        cited=c.cited,
        doc_id=c.doc_id,
        source=c.source,
        page=c.page,
        score=c.score,
        image_url=image_url(request, c.doc_id, c.page),
        boxes=list(c.boxes),
        regions=list(c.regions),
    )


def answer_out(request: Request, a: Answer) -> AnswerOut:
    return AnswerOut(
        question=a.question,
        # Without pages the text is the service's own explanation, not the model's words.
        text=a.text if a.citations else api_words(a.text),
        citations=[citation_out(request, c) for c in a.citations],
        retrieval_seconds=a.retrieval_seconds,
        generation_seconds=a.generation_seconds,
        prompt_tokens=a.prompt_tokens,
        completion_tokens=a.completion_tokens,
    )


def document_out(request: Request, d: DocumentInfo) -> DocumentOut:
    return DocumentOut(
        doc_id=d.doc_id,
        source=d.source,
        title=d.title,
        pages=d.pages,
        sources=list(d.sources),
        tags=list(d.tags),
        ingested_at=d.ingested_at,
        bytes=d.bytes,
        thumbnail_url=image_url(request, d.doc_id, 1),
    )


def job_out(job: JobInfo) -> JobOut:
    return JobOut(
        id=job.id,
        kind=job.kind,
        state=job.state,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        stage=job.stage,
        files_total=job.files_total,
        files_done=job.files_done,
        pages_total=job.pages_total,
        pages_done=job.pages_done,
        current=job.current,
        indexed_documents=job.indexed_documents,
        indexed_pages=job.indexed_pages,
        skipped_documents=job.skipped_documents,
        files=[
            FileResultOut(
                name=f.name,
                status=f.status,
                doc_id=f.doc_id,
                error=None if f.error is None else api_words(f.error),
            )
            for f in job.files
        ],
        errors=[FileErrorOut(source=e.source, error=api_words(e.error)) for e in job.errors],
        warnings=[
            FileWarningOut(source=w.source, warning=api_words(w.warning)) for w in job.warnings
        ],
        message=api_words(job.message),
    )


def status_out(info: ServiceInfo, queue: dict[str, Any]) -> StatusOut:
    return StatusOut(**vars(info), queue=QueueOut(**queue))
