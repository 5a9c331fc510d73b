"""`PageRAG`: the one object the CLI, the REST API and the UI share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.manifest import Manifest
from ingest.runner import IngestRunner, Progress
from rag.config import Settings
from rag.index import open_index
from rag.index.base import SCHEMA_VERSION, PageIndex, check_meta
from rag.prompt import Turn, parse_citations
from rag.types import Answer, Citation, DocumentInfo, Hit, IngestReport, SearchFilter

if TYPE_CHECKING:
    from rag.models.generator import Generator
    from rag.models.retriever import Retriever

EMBEDDING_DIM = 128


class PageRAGError(Exception):
    """A problem the user can fix; the message says how."""


def _dir_size(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class PageRAG:
    def __init__(
        self,
        settings: Settings,
        *,
        retriever: Retriever | None = None,
        generator: Generator | None = None,
        index: PageIndex | None = None,
    ) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.index = index or open_index(settings)
        check_meta(self.index, self.index_meta())
        self.manifest = Manifest(settings.manifest_path)
        self._retriever = retriever
        self._generator = generator
        self._model_lock = threading.Lock()  # one model call at a time (one GPU, many callers)
        self._write_lock = threading.Lock()  # one ingestion or deletion at a time

    def index_meta(self) -> dict[str, Any]:
        """What the stored vectors depend on; checked every time the index is opened."""
        s = self.settings
        return {
            "schema_version": SCHEMA_VERSION,
            "retriever_model": s.retriever_model,
            "retriever_revision": s.retriever_revision,
            "dim": EMBEDDING_DIM,
            "max_visual_tokens": s.max_visual_tokens,
            "renderer": s.renderer,
            "render_dpi": s.render_dpi,
        }

    @property
    def retriever(self) -> Retriever:
        """Loaded on first use, so listing or deleting documents needs no model."""
        with self._model_lock:
            if self._retriever is None:
                from rag.models.retriever import Retriever

                self._retriever = Retriever.load(self.settings)
            return self._retriever

    # -- ingestion ------------------------------------------------------------------------
    def _runner(self, on_progress: Callable[[Progress], None] | None = None) -> IngestRunner:
        return IngestRunner(
            self.manifest,
            self.index,
            lambda: _Locked(self.retriever, self._model_lock),
            images_dir=self.settings.images_dir,
            renderer=self.settings.renderer,
            dpi=self.settings.render_dpi,
            batch_size=self.settings.batch_size,
            on_progress=on_progress,
        )

    def ingest(
        self,
        paths: Iterable[Path],
        *,
        tags: Sequence[str] = (),
        sources: dict[Path, str] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> IngestReport:
        with self._write_lock:
            report = self._runner(on_progress).run(list(paths), tags, sources=sources)
            optimize = getattr(self.index, "optimize", None)
            if report.indexed_pages and callable(optimize):
                optimize()
            return report

    # -- search ---------------------------------------------------------------------------
    def search(self, query: str, k: int = 5, flt: SearchFilter | None = None) -> list[Hit]:
        if not query.strip():
            raise PageRAGError("the question is empty; type what you are looking for")
        if k < 1:
            raise PageRAGError("the number of results must be at least 1")
        vectors = self._embed_query(query)
        return self.index.search(vectors, k, flt)

    def _embed_query(self, query: str) -> Any:
        retriever = self.retriever
        with self._model_lock:
            return retriever.embed_query(query)

    # -- answering ------------------------------------------------------------------------
    @property
    def generator(self) -> Generator:
        """Loaded on the first question, once per process; it shares the device with the
        retriever, and `_model_lock` keeps their calls (and two generations) apart."""
        with self._model_lock:
            if self._generator is None:
                from rag.models.generator import Generator

                self._generator = Generator.load(self.settings)
            return self._generator

    def ask(
        self,
        question: str,
        k: int | None = None,
        flt: SearchFilter | None = None,
        history: Sequence[Turn] = (),
    ) -> Answer:
        """The whole answer at once; the same `Answer` that `ask_stream` ends with."""
        *_, answer = self.ask_stream(question, k, flt, history)
        assert isinstance(answer, Answer)
        return answer

    def ask_stream(
        self,
        question: str,
        k: int | None = None,
        flt: SearchFilter | None = None,
        history: Sequence[Turn] = (),
    ) -> Iterator[str | Answer]:
        """Text chunks as Qwen2-VL writes them, then the `Answer`.

        `k` pages (default PAGERAG_ASK_PAGES) are retrieved and shown to the model. The model
        lock is held while the text streams: close the iterator (or drop it) when the reader
        goes away, and the generation stops and frees the device.
        """
        k = self.settings.ask_pages if k is None else k
        if not question.strip():
            raise PageRAGError("the question is empty; type what you want to know")
        if k < 1:
            raise PageRAGError("the number of pages must be at least 1")
        if not self.index.count(flt):  # answered without loading or calling any model
            yield self._no_pages(question, flt)
            return
        self.retriever  # noqa: B018 - load first, so retrieval_seconds is the search alone
        started = time.perf_counter()
        hits = self.search(question, k, flt)
        retrieval_seconds = time.perf_counter() - started
        if not hits:
            yield self._no_pages(question, flt)
            return
        generator = self.generator
        with self._model_lock:
            stream = generator.stream(question, hits, history)
            try:
                yield from stream
            finally:
                stream.close()
        result = stream.result
        assert result is not None
        cited = parse_citations(result.text, len(hits))
        yield Answer(
            question=question,
            text=result.text,
            citations=[_citation(hit, n, n in cited) for n, hit in enumerate(hits, 1)],
            retrieval_seconds=retrieval_seconds,
            generation_seconds=result.seconds,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )

    def _no_pages(self, question: str, flt: SearchFilter | None) -> Answer:
        if flt is None or flt.is_empty() or not self.index.count():
            text = (
                "Nothing is indexed yet, so there are no pages to answer from. "
                "Ingest some PDFs first (`pagerag ingest PATH`)."
            )
        else:
            text = (
                "No indexed page matches the filter, so there are no pages to answer from. "
                "Widen or remove the filter."
            )
        return Answer(question=question, text=text, citations=[])

    # -- library --------------------------------------------------------------------------
    def documents(self) -> list[DocumentInfo]:
        return self.manifest.documents()

    def resolve(self, doc_id: str) -> str:
        """A full document id from an id or a unique prefix of one."""
        matches = self.manifest.resolve(doc_id.strip()) if doc_id.strip() else []
        if not matches:
            raise PageRAGError(f"no document with id {doc_id!r}; `pagerag docs list` shows them")
        if len(matches) > 1:
            raise PageRAGError(f"{doc_id!r} matches {len(matches)} documents; give more characters")
        return matches[0]

    def document(self, doc_id: str) -> DocumentInfo:
        full = self.resolve(doc_id)
        info = self.manifest.info(full)
        if info is None:
            raise PageRAGError(f"document {doc_id!r} is still being ingested")
        return info

    def delete(self, doc_id: str) -> DocumentInfo:
        """Remove a document's points, page images and manifest rows."""
        with self._write_lock:
            full = self.resolve(doc_id)
            info = self.manifest.info(full) or DocumentInfo(full, "", "", 0)
            self._runner().remove(full)
            return info

    def info(self) -> dict[str, Any]:
        from rag.models.device import resolve_device_dtype

        device, dtype = resolve_device_dtype(self.settings)
        docs = self.manifest.documents()
        index_bytes = self.index.bytes_on_disk()
        images_bytes = _dir_size(self.settings.images_dir)
        manifest_bytes = sum(
            _dir_size(p)
            for p in self.settings.data_dir.glob(self.settings.manifest_path.name + "*")
        )
        return {
            "backend": self.index.backend,
            "data_dir": str(self.settings.data_dir),
            "retriever_model": self.settings.retriever_model,
            "retriever_loaded": self._retriever is not None,
            "generator_model": self.settings.generator_model,
            "generator_loaded": self._generator is not None,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "documents": len(docs),
            "pages": self.index.count(),
            "pending_documents": len(self.manifest.pending()),
            "failed_files": len(self.manifest.failures()),
            "bytes_on_disk": index_bytes + images_bytes + manifest_bytes,
            "index_bytes": index_bytes,
            "images_bytes": images_bytes,
        }

    def close(self) -> None:
        self.index.close()
        self.manifest.close()


def _citation(hit: Hit, label: int, cited: bool) -> Citation:
    return Citation(
        doc_id=hit.doc_id,
        source=hit.source,
        page=hit.page,
        score=hit.score,
        image=hit.image,
        label=label,
        cited=cited,
    )


class _Locked:
    """Serialises page embedding with every other use of the model."""

    def __init__(self, retriever: Retriever, lock: threading.Lock) -> None:
        self._retriever = retriever
        self._lock = lock

    def embed_pages(self, images: Sequence[Any]) -> list[Any]:
        with self._lock:
            return self._retriever.embed_pages(images)
