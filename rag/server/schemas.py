"""Request and response bodies of the REST API (they make its OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Request
from pydantic import AfterValidator, BaseModel, Field

from rag.config import SearchMode
from rag.ids import DOC_ID_LENGTH, DOC_PREFIX_PATTERN, MIN_PREFIX, doc_prefix
from rag.prompt import Turn
from rag.types import Answer, Citation, DocumentInfo, Hit, SearchFilter


class Problem(BaseModel):
    detail: str


# A typed document id: hex only (422 otherwise, with `rag.ids`'s message), lowercased.
DocPrefix = Annotated[
    str, AfterValidator(doc_prefix), Field(json_schema_extra={"pattern": DOC_PREFIX_PATTERN})
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


class AskIn(BaseModel):
    question: str = Field(min_length=1, max_length=4000, examples=["What was the total in 2015?"])
    top_k: int | None = Field(None, ge=1, le=20, description="Pages shown to the model")
    filter: FilterIn | None = None
    history: list[TurnIn] = Field(
        default_factory=list, max_length=20, description="Earlier turns, oldest first"
    )
    mode: SearchMode | None = _MODE
    stream: bool = Field(False, description="Answer as server-sent events")

    def turns(self) -> list[Turn]:
        return [(t.question, t.answer) for t in self.history]


class CitationOut(BaseModel):
    label: int = Field(description="The `[n]` the answer uses for this page")
    cited: bool = Field(description="The answer refers to this page")
    doc_id: str
    source: str
    page: int
    score: float
    image_url: str


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


class FileResultOut(BaseModel):
    name: str
    status: Literal["queued", "indexed", "unchanged", "failed"]
    doc_id: str | None
    error: str | None


class JobOut(BaseModel):
    id: str
    kind: Literal["upload", "folder"]
    state: Literal["queued", "running", "done", "failed"]
    created_at: str
    started_at: str | None
    finished_at: str | None
    files_total: int
    files_done: int
    pages_total: int
    pages_done: int
    current: str
    indexed_documents: int
    indexed_pages: int
    skipped_documents: int
    files: list[FileResultOut]
    errors: list[dict[str, str]] = Field(description="`{source, error}` for each failed file")
    warnings: list[dict[str, str]] = Field(
        description="`{source, warning}`: stored, with a caveat (e.g. pages past the limit)"
    )
    message: str = Field(description="Why the whole job failed, if it did")


class JobsOut(BaseModel):
    jobs: list[JobOut]


# -- conversions --------------------------------------------------------------------------


def to_filter(body: FilterIn | None, resolve: Any) -> SearchFilter | None:
    """`resolve` turns an id prefix into a full id (and raises for an unknown one)."""
    if body is None:
        return None
    flt = SearchFilter(
        doc_ids=tuple(resolve(d) for d in body.doc_ids),
        source_prefix=body.source_prefix or None,
        tags=tuple(body.tags),
    )
    return None if flt.is_empty() else flt


def image_url(request: Request, doc_id: str, page: int) -> str:
    return str(request.url_for("page_image", doc_id=doc_id, page=page))


def hit_out(request: Request, hit: Hit, query: str) -> HitOut:
    heatmap = request.url_for("page_heatmap", doc_id=hit.doc_id, page=hit.page)
    return HitOut(
        doc_id=hit.doc_id,
        source=hit.source,
        title=hit.title,
        page=hit.page,
        score=hit.score,
        image_url=image_url(request, hit.doc_id, hit.page),
        heatmap_url=str(heatmap.include_query_params(query=query)),
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
    )


def answer_out(request: Request, a: Answer) -> AnswerOut:
    return AnswerOut(
        question=a.question,
        text=a.text,
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
