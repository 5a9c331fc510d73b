"""`PageRAG`: the one object the CLI, the REST API and the UI share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.discover import Shard
from ingest.manifest import Manifest
from ingest.render import RenderLimits
from ingest.runner import IngestRunner, Progress
from ingest.sandbox import RenderSandbox
from rag.config import SEARCH_MODES, SearchMode, Settings
from rag.index import open_index
from rag.index.base import SCHEMA_VERSION, PageIndex, check_meta
from rag.index.text import TEXT_CHANNEL
from rag.prompt import Turn, parse_citations
from rag.types import Answer, Citation, DocumentInfo, Hit, IngestReport, SearchFilter
from rag.workqueue import WorkQueue

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
        # The one bounded line in front of the models for interactive callers (web UI and REST
        # API alike): they take a ticket from it around search, ask and similarity maps.
        self.work = WorkQueue(settings.queue_size, settings.request_timeout)

    def index_meta(self) -> dict[str, Any]:
        """What the stored vectors depend on; checked every time the index is opened."""
        s = self.settings
        return {
            "schema_version": SCHEMA_VERSION,
            "text_channel": TEXT_CHANNEL,  # the BM25 tokenisation the text vectors were made with
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
            sandbox=self._sandbox(),
            batch_size=self.settings.batch_size,
            on_progress=on_progress,
        )

    def _sandbox(self) -> RenderSandbox:
        s = self.settings
        limits = RenderLimits(
            max_pixels=s.render_max_pixels,
            max_pages=s.max_pages_per_document,
            image_max_pixels=s.image_max_pixels,
        )
        return RenderSandbox(
            renderer=s.renderer,
            dpi=s.render_dpi,
            limits=limits,
            page_timeout=s.render_timeout_s,
            memory_mb=s.render_memory_mb,
        )

    def ingest(
        self,
        paths: Iterable[Path],
        *,
        tags: Sequence[str] = (),
        sources: dict[Path, str] | None = None,
        passwords: dict[str, str] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        shard: Shard | None = None,
    ) -> IngestReport:
        """Ingest files and folders (see `IngestRunner.run`); with `shard`, only its part."""
        with self._write_lock:
            report = self._runner(on_progress).run(
                list(paths), tags, sources=sources, passwords=passwords, shard=shard
            )
            optimize = getattr(self.index, "optimize", None)
            if report.indexed_pages and callable(optimize):
                optimize()
            return report

    # -- search ---------------------------------------------------------------------------
    def search(
        self,
        query: str,
        k: int = 5,
        flt: SearchFilter | None = None,
        mode: SearchMode | None = None,
    ) -> list[Hit]:
        """The `k` best pages for `query`, best first.

        `mode` (default PAGERAG_SEARCH_MODE): "visual" ranks by ColQwen2 MaxSim (scores are
        MaxSim), "text" by BM25 over the pages' text layers (BM25 scores; the retriever model is
        never loaded, and pages without text never match), "hybrid" fuses both channels in one
        Qdrant query (reciprocal rank fusion scores, so they are not comparable across modes).
        """
        mode = self.search_mode(mode)
        if not query.strip():
            raise PageRAGError("the question is empty; type what you are looking for")
        if k < 1:
            raise PageRAGError("the number of results must be at least 1")
        if mode == "text":
            return self.index.search_text(query, k, flt)
        vectors = self._embed_query(query)
        if mode == "visual":
            return self.index.search(vectors, k, flt)
        weight = self.settings.hybrid_text_weight
        return self.index.search_hybrid(vectors, query, k, flt, text_weight=weight)

    def search_mode(self, mode: str | None = None) -> SearchMode:
        """`mode` checked, or the configured default (PAGERAG_SEARCH_MODE) when None."""
        if mode is None:
            return self.settings.search_mode
        if mode not in SEARCH_MODES:
            raise PageRAGError(
                f"unknown search mode {mode!r}; use one of: {', '.join(SEARCH_MODES)}"
            )
        return mode  # type: ignore[return-value]  # checked against SEARCH_MODES above

    def _embed_query(self, query: str) -> Any:
        retriever = self.retriever
        with self._model_lock:
            return retriever.embed_query(query)

    def embed_query(self, query: str) -> Any:
        """A question's multivector, as `search` embeds it (similarity maps reuse it)."""
        if not query.strip():
            raise PageRAGError("the question is empty; type what you are looking for")
        return self._embed_query(query)

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
        *,
        mode: SearchMode | None = None,
    ) -> Answer:
        """The whole answer at once; the same `Answer` that `ask_stream` ends with."""
        *_, answer = self.ask_stream(question, k, flt, history, mode=mode)
        assert isinstance(answer, Answer)
        return answer

    def ask_stream(
        self,
        question: str,
        k: int | None = None,
        flt: SearchFilter | None = None,
        history: Sequence[Turn] = (),
        *,
        mode: SearchMode | None = None,
    ) -> Iterator[str | Answer]:
        """Text chunks as Qwen2-VL writes them, then the `Answer`.

        `k` pages (default PAGERAG_ASK_PAGES) are retrieved and shown to the model. The model
        lock is held while the text streams: close the iterator (or drop it) when the reader
        goes away, and the generation stops and frees the device.
        """
        k = self.settings.ask_pages if k is None else k
        mode = self.search_mode(mode)  # pages are retrieved as `search(..., mode=mode)` does
        if not question.strip():
            raise PageRAGError("the question is empty; type what you want to know")
        if k < 1:
            raise PageRAGError("the number of pages must be at least 1")
        if not self.index.count(flt):  # answered without loading or calling any model
            yield self._no_pages(question, flt)
            return
        if mode != "text":  # text search needs no retriever model
            self.retriever  # noqa: B018 - load first, so retrieval_seconds is the search alone
        started = time.perf_counter()
        hits = self.search(question, k, flt, mode)
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
        if not self.index.count():
            text = (
                "Nothing is indexed yet, so there are no pages to answer from. "
                "Ingest some PDFs first (`pagerag ingest PATH`)."
            )
        elif flt is not None and not self.index.count(flt):
            text = (
                "No indexed page matches the filter, so there are no pages to answer from. "
                "Widen or remove the filter."
            )
        else:  # text search only finds pages whose text layer has the words
            text = (
                "No indexed page matches the question, so there are no pages to answer from. "
                "Try other words, or the visual or hybrid search mode."
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
