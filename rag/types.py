"""Plain value types shared by the service, the index, the CLI, the API and the UI."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rag.ids import doc_prefix


@dataclass(frozen=True)
class PageEmbedding:
    """One page's ColQwen2 multivector and where its image tokens sit in it."""

    vectors: np.ndarray  # (n_tokens, dim) float32, unit rows, padding removed
    grid: tuple[int, int]  # (rows, cols) of the merged patch grid
    image_offset: int  # index of the first image token in `vectors`
    # Token-pooled pages (PAGERAG_POOL_FACTOR > 1): each patch's pooled row, rag/patchmap.py.
    patch_map: str = ""


@dataclass(frozen=True)
class PageRecord:
    """Everything stored about one page besides its vectors (becomes the Qdrant payload)."""

    doc_id: str  # SHA-256 of the file bytes
    page: int  # 1-based
    pages: int
    source: str  # path relative to the ingested root, or the upload name
    title: str
    image: str  # path of the rendered page image on disk
    width: int
    height: int
    grid: tuple[int, int]
    image_offset: int
    text: str = ""
    tags: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # every path this content was seen under (source included)
    ingested_at: str = ""
    text_origin: str = "pdf"  # "pdf" (the text layer) or "ocr" (read from the page image)
    patch_map: str = ""  # of a token-pooled page (rag/patchmap.py); empty when unpooled


@dataclass(frozen=True)
class SearchFilter:
    """Restricts a search. Empty fields mean no restriction; all given fields must hold."""

    doc_ids: tuple[str, ...] = ()
    source_prefix: str | None = None  # whole path components: "reports/2015" matches below it
    tags: tuple[str, ...] = ()  # a page matches when it has any of these tags
    # Never match these documents: the service puts the ones still being ingested here, so a
    # document's pages become visible only once all of them are stored.
    exclude_doc_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Full ids, as the service resolves them; checked here too, so no caller can slip a
        # non-hex string into the index's filter (lowercased, like every typed id).
        for name in ("doc_ids", "exclude_doc_ids"):
            ids = tuple(doc_prefix(d, min_length=1) for d in getattr(self, name))
            object.__setattr__(self, name, ids)

    def is_empty(self) -> bool:
        """No restriction a user asked for (`exclude_doc_ids` is the service's own)."""
        return not (self.doc_ids or self.source_prefix or self.tags)


@dataclass(frozen=True)
class Hit:
    doc_id: str
    source: str
    page: int
    score: float
    image: str
    title: str = ""
    text: str = ""
    grid: tuple[int, int] = (0, 0)
    image_offset: int = 0
    text_origin: str = "pdf"  # "ocr" when the text was read from the page image
    patch_map: str = ""  # of a token-pooled page (rag/patchmap.py); empty when unpooled


@dataclass(frozen=True)
class DocumentInfo:
    doc_id: str
    source: str
    title: str
    pages: int
    sources: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    ingested_at: str = ""
    bytes: int = 0


@dataclass(frozen=True)
class FileError:
    """A file that was not ingested, and why (the message says what to do about it)."""

    source: str
    error: str


@dataclass(frozen=True)
class FileWarning:
    """A file that was ingested with something missing (pages skipped, a budget reached)."""

    source: str
    warning: str


@dataclass(frozen=True)
class FileDuplicate:
    """A file not stored again: its content is already stored, under `same_as`."""

    source: str
    same_as: str


@dataclass
class OcrReport:
    """What `PageRAG.fill_ocr` did: pages checked, pages that got OCR text, and failures."""

    checked: int = 0
    read: int = 0
    failed: list[FileError] = field(default_factory=list)


@dataclass
class IngestReport:
    indexed_documents: int = 0
    indexed_pages: int = 0
    skipped_documents: int = 0  # unchanged files and duplicates
    duplicates: list[FileDuplicate] = field(default_factory=list)  # of those, new copies
    failed: list[FileError] = field(default_factory=list)
    warnings: list[FileWarning] = field(default_factory=list)
    seconds: float = 0.0
    # The retriever could not load: pages were stored with text and image only (text search
    # finds them) and wait for their visual vectors; `retriever_error` says why.
    waiting_pages: int = 0  # stored so in this run
    retriever_error: str = ""
    visual_added: int = 0  # waiting pages (of earlier runs) that got their vectors in this run


@dataclass(frozen=True)
class ServiceInfo:
    """What the service runs and stores (`pagerag info`, GET /status, the UI's Status tab)."""

    backend: str
    data_dir: str
    retriever_model: str
    retriever_loaded: bool
    generator_model: str
    generator_loaded: bool
    device: str
    dtype: str
    documents: int
    pages: int  # of complete documents: what search can find
    pending_documents: int  # being ingested, or interrupted
    pending_pages: int
    waiting_pages: int  # stored without visual vectors (no retriever yet): text search only
    failed_files: int
    bytes_on_disk: int  # index + page images + manifest
    index_bytes: int
    images_bytes: int
    # Why the last load of a model failed (one line naming the setting to change); empty once
    # it loads, and before any attempt.
    retriever_error: str = ""
    generator_error: str = ""


@dataclass(frozen=True)
class Citation:
    """A page shown to the generator, labelled `[label]` in its prompt."""

    doc_id: str
    source: str
    page: int
    score: float  # retrieval score: MaxSim, BM25 or rank-fused, by search mode
    image: str
    label: int  # 1-based, as in the prompt: [1], [2], ...
    cited: bool  # the answer refers to this label
    # (x1, y1, x2, y2) in pixels of the stored page image: where the answer boxed its evidence
    # (`rag.boxes`), and the regions sent to the answerer as full-resolution crops (`rag.crops`).
    boxes: tuple[tuple[int, int, int, int], ...] = ()
    regions: tuple[tuple[int, int, int, int], ...] = ()


@dataclass(frozen=True)
class Answer:
    question: str
    text: str
    citations: list[Citation]  # every page the generator saw, in prompt order
    retrieval_seconds: float = 0.0
    generation_seconds: float = 0.0
    prompt_tokens: int = 0  # text and image tokens
    completion_tokens: int = 0

    @property
    def cited(self) -> list[Citation]:
        return [c for c in self.citations if c.cited]
