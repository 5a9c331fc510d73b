"""`PageRAG`: the one object the CLI, the REST API and the UI share."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ingest.discover import Shard
from ingest.diskspace import DiskFullError, optimize_needs, require_free
from ingest.library import Library, PageImages
from ingest.manifest import Manifest
from ingest.ocr import OcrOptions, needs_ocr
from ingest.render import RenderError, RenderLimits
from ingest.runner import IngestProgress, IngestRunner
from ingest.sandbox import RenderSandbox
from rag.answer import AnswerStream
from rag.boxes import BoxFilter, page_boxes, parse
from rag.config import SEARCH_MODES, SearchMode, Settings
from rag.crops import ShownPage, crop_limit, shown_page
from rag.errors import EXIT_CONFIG, UserError
from rag.ids import IdError, doc_prefix
from rag.index import open_index
from rag.index.base import SCHEMA_VERSION, PageIndex, check_meta, check_retriever
from rag.index.schema import DEFAULT_STORAGE
from rag.index.text import TEXT_CHANNEL
from rag.models.host import ModelHost
from rag.models.loading import ModelDownloading, ModelLoadError
from rag.models.protocols import AnswerWriter, PageRetriever
from rag.prompt import Turn, parse_citations
from rag.types import (
    Answer,
    Citation,
    DocumentInfo,
    FileError,
    Hit,
    IngestReport,
    OcrReport,
    SearchFilter,
    ServiceInfo,
)
from rag.writelock import Deletion, WriteLock

EMBEDDING_DIM = 128
MAX_TITLE, MAX_TAG, MAX_TAGS = 300, 64, 32  # a document's title and tags, as users set them

log = logging.getLogger(__name__)


class PageRAGError(UserError):
    """A request the service cannot carry out as asked; the message says what to change."""

    exit_code = 2  # bad usage: an empty question, an unknown document id, ...


class DocumentPending(PageRAGError):
    """The document's ingestion has not completed (running, or interrupted)."""

    http_status = 409
    exit_code = EXIT_CONFIG  # not the command's fault: try again once ingestion completes


class DeletionQueued(PageRAGError):
    """A deletion waits for the running ingestion's current batch; it still happens."""

    exit_code = EXIT_CONFIG  # not the command's fault: the index is busy

    def __init__(self, doc_id: str, waited: float) -> None:
        super().__init__(
            f"the deletion of document {doc_id[:12]} is queued: an ingestion is running and "
            f"did not reach the end of its current batch within {waited:g} s. It is deleted "
            "then, without anything more to do; the document list shows when it is gone."
        )
        self.doc_id = doc_id


def _device_dtype(settings: Settings) -> tuple[str, str]:
    """The configured device and dtype, resolved ("auto" -> "cpu") only where torch is loaded
    already (a model is, or is loading): `pagerag info` must not pay seconds of torch import."""
    if "torch" not in sys.modules:
        return settings.device, settings.dtype
    from rag.models.device import resolve_device_dtype

    try:
        device, dtype = resolve_device_dtype(settings)
    except ModelLoadError:  # e.g. PAGERAG_DEVICE=cuda without CUDA: loading says so
        return settings.device, settings.dtype
    return str(device), str(dtype).removeprefix("torch.")


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
        retriever: PageRetriever | None = None,
        generator: AnswerWriter | None = None,
        index: PageIndex | None = None,
        models: ModelHost | None = None,
    ) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.index = index or open_index(settings)
        check_meta(self.index, self.index_meta())
        self.manifest = Manifest(settings.manifest_path)
        self.library = Library(self.manifest, self.index, PageImages(settings.images_dir))
        # Shared with the other libraries of the process that use the same models.
        self.models = models or ModelHost(settings, retriever=retriever, generator=generator)
        self._model_lock = self.models.lock  # one model call at a time on the device
        self._retriever_checked = False
        self._visual_deferred = False  # an ingestion stored pages without waiting for a download
        # One ingestion or deletion at a time; deletions queue and run between two batches
        # of a running ingestion, so a DELETE never waits for a whole run (rag/writelock.py).
        self._writes = WriteLock(self.library.remove)

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
            # How the page vectors are kept (schema.STORAGES): the index's own unless chosen.
            "vector_storage": s.vector_storage or getattr(self.index, "storage", DEFAULT_STORAGE),
            "pool_factor": s.pool_factor,  # token pooling: pooled pages keep fewer rows
        }

    @property
    def _retriever(self) -> PageRetriever | None:
        return self.models.loaded("retriever")

    @property
    def _generator(self) -> AnswerWriter | None:
        return self.models.loaded("generator")

    @property
    def retriever(self) -> PageRetriever:
        """Given to the constructor, or ColQwen2 loaded on first use (`ModelHost`), so listing
        or deleting documents needs no model. While it downloads: `ModelDownloading`."""
        try:
            retriever: PageRetriever = self.models.get("retriever")
        except ModelDownloading:
            self._visual_deferred = True  # this caller's pages are stored for text search
            raise
        if not self._retriever_checked and "retriever" in self.models.loaded_here:
            # A model loaded from the settings: its family and width must match this index.
            model: Any = retriever
            check_retriever(self.index, model.family.name, model.dim)
            self._retriever_checked = True
        return retriever

    @property
    def models_loading(self) -> bool:
        """A model is being loaded (or downloaded) now."""
        return bool(self.models.loading)

    @property
    def load_errors(self) -> dict[str, str]:
        """Model ("retriever", "generator") -> why its last load failed, as `info()` has it."""
        return dict(self.models.errors)

    def visual_deferred(self) -> bool:
        """Whether pages wait for visual vectors, or an ingestion went on without waiting for
        the retriever's download (its pages may still be being stored): then, once the
        retriever is loaded, an ingestion (even of nothing) embeds them. Resets the latter."""
        deferred, self._visual_deferred = self._visual_deferred, False
        return deferred or self.library.waiting_count() > 0

    # -- ingestion ------------------------------------------------------------------------
    def _runner(self, on_progress: Callable[[IngestProgress], None] | None = None) -> IngestRunner:
        return IngestRunner(
            self.library,
            lambda: _Locked(self.retriever, self._model_lock, self.settings.pool_factor),
            sandbox=self._sandbox(),
            batch_size=self.settings.batch_size,
            on_progress=on_progress,
            check_space=self._check_space,
            between_batches=self._writes.run_queued,
        )

    def _check_space(self) -> None:
        """DiskFullError unless the data directory keeps PAGERAG_DISK_RESERVE_MB free."""
        if self.settings.disk_reserve_mb:
            require_free(self.settings.data_dir, self.settings.disk_reserve_mb)

    def _sandbox(self) -> RenderSandbox:
        s = self.settings
        limits = RenderLimits(
            max_pixels=s.render_max_pixels,
            max_pages=s.max_pages_per_document,
            image_max_pixels=s.image_max_pixels,
            max_render_seconds=s.max_render_seconds_per_document,
            max_image_bytes=int(s.max_image_mb_per_document * 1024 * 1024),
        )
        return RenderSandbox(
            renderer=s.renderer,
            dpi=s.render_dpi,
            limits=limits,
            page_timeout=s.render_timeout_s,
            memory_mb=s.render_memory_mb,
            ocr=None
            if s.ocr_engine == "off"
            # Tesseract stops at 3/4 of the page's time, so the page is still indexed (without
            # OCR text) rather than skipped when the worker's page timeout hits.
            else OcrOptions(s.ocr_engine, s.ocr_min_chars, s.render_timeout_s * 0.75),
        )

    def ingest(
        self,
        paths: Iterable[Path],
        *,
        tags: Sequence[str] = (),
        sources: dict[Path, str] | None = None,
        passwords: dict[str, str] | None = None,
        on_progress: Callable[[IngestProgress], None] | None = None,
        shard: Shard | None = None,
    ) -> IngestReport:
        """Ingest files and folders (see `IngestRunner.run`); with `shard`, only its part."""
        with self._writes.held():
            self._check_space()
            report = self._runner(on_progress).run(
                list(paths), tags, sources=sources, passwords=passwords, shard=shard
            )
            self._add_visual(report, on_progress)
            if (report.indexed_pages or report.visual_added) and self._can_optimize():
                self.index.optimize()
            return report

    def _add_visual(
        self, report: IngestReport, on_progress: Callable[[IngestProgress], None] | None
    ) -> None:
        """Embed the pages an earlier run stored without visual vectors (its retriever could
        not load), now that it loads; until then they stay found by text search only."""
        waiting = self.library.waiting_count()
        if not waiting or report.retriever_error:
            return
        try:
            retriever = self.retriever
        except ModelLoadError as exc:
            report.retriever_error = str(exc)
            log.warning("%d pages still wait for visual vectors: %s", waiting, exc)
            return
        from PIL import Image

        progress = IngestProgress(stage="embedding", pages_total=waiting)
        progress.embedding_started = time.monotonic()
        while pages := self.library.waiting(self.settings.batch_size):
            self._check_space()
            images, found = [], []
            for doc_id, page in pages:
                try:
                    with Image.open(self.library.images.path(doc_id, page)) as img:
                        images.append(img.convert("RGB"))
                    found.append((doc_id, page))
                except OSError:  # its document was deleted meanwhile
                    continue
            with self._model_lock:
                embeddings = retriever.embed_pages(images) if images else []
            embeddings = _pooled(embeddings, self.settings.pool_factor)
            report.visual_added += self.library.add_visual(found, embeddings)
            self.library.drop_waiting(pages)
            progress.pages_done += len(pages)
            if on_progress is not None:
                on_progress(progress)
            self._writes.run_queued()  # deletions that came in meanwhile

    def fill_ocr(self, on_page: Callable[[int, int], None] | None = None) -> OcrReport:
        """OCR for stored pages whose text is missing or shorter than PAGERAG_OCR_MIN_CHARS (a
        library ingested before OCR, or with it off): no re-ingesting. Reads the stored page
        images in the render worker; `on_page(done, total)` after each page checked."""
        if self.settings.ocr_engine == "off":
            raise UserError("OCR is off (PAGERAG_OCR_ENGINE=off); set it to rapidocr or tesseract")
        report = OcrReport()
        with self._writes.held():
            pages = [
                (doc.doc_id, n) for doc in self.documents() for n in self.index.page_ids(doc.doc_id)
            ]
            sandbox = self._sandbox()
            try:
                for done, (doc_id, number) in enumerate(pages, 1):
                    hit = self.index.page(doc_id, number)
                    if hit is not None and (
                        hit.text_origin != "ocr"
                        and needs_ocr(hit.text, self.settings.ocr_min_chars)
                    ):
                        report.read += self._ocr_page(sandbox, hit, report)
                    report.checked = done
                    if on_page is not None:
                        on_page(done, len(pages))
                    self._writes.run_queued()  # deletions that came in meanwhile
            finally:
                sandbox.close()
        return report

    def _ocr_page(self, sandbox: RenderSandbox, hit: Hit, report: OcrReport) -> int:
        try:
            text = sandbox.read_image(self.library.images.path(hit.doc_id, hit.page))
        except (RenderError, OSError) as exc:
            report.failed.append(FileError(f"{hit.source} page {hit.page}", str(exc)))
            return 0
        if needs_ocr(text, 1):  # nothing legible: keep what the text layer had
            return 0
        self.index.set_page_text(hit.doc_id, hit.page, text, origin="ocr")
        return 1

    def _can_optimize(self) -> bool:
        """Whether the disk has room to optimise the embedded index (Qdrant's own check lets
        it start with too little and die of SIGBUS; ingest/diskspace.py). Skipping is safe:
        search stays correct, only slower, until a later ingest optimises."""
        if not self.settings.disk_reserve_mb or self.index.backend != "qdrant-edge":
            return True  # a Qdrant server's disk is the server's to watch
        needs = optimize_needs(self.index.bytes_on_disk())
        try:
            require_free(
                self.settings.data_dir,
                self.settings.disk_reserve_mb,
                what="optimising the index",
                extra_bytes=needs,
            )
        except DiskFullError as exc:
            log.warning("the index was not optimised: %s", exc)
            return False
        return True

    # -- search ---------------------------------------------------------------------------
    def search(
        self,
        query: str,
        k: int = 5,
        filters: SearchFilter | None = None,
        mode: SearchMode | None = None,
        *,
        vectors: Any = None,
    ) -> list[Hit]:
        """The `k` best pages for `query`, best first (`vectors`: its multivector, when the
        caller embedded it already).

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
        filters = self._visible(filters)
        if mode == "text":
            return self.index.search_text(query, k, filters)
        vectors = self._embed_query(query) if vectors is None else vectors
        if mode == "visual":
            return self.index.search(vectors, k, filters)
        weight = self.settings.hybrid_text_weight
        return self.index.search_hybrid(vectors, query, k, filters, text_weight=weight)

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
    def generator(self) -> AnswerWriter:
        """Given to the constructor, or Qwen2-VL loaded on the first question, once per
        process; it shares the device with the retriever, and `_model_lock` keeps their calls
        (and two generations) apart."""
        generator: AnswerWriter = self.models.get("generator")
        return generator

    @generator.setter
    def generator(self, generator: AnswerWriter | None) -> None:
        """Swap the writer of answers (None: load PAGERAG_GENERATOR_MODEL on the next
        question); an answer being written keeps the one it started with."""
        self.models.set("generator", generator)

    def ask(
        self,
        question: str,
        k: int | None = None,
        filters: SearchFilter | None = None,
        history: Sequence[Turn] = (),
        *,
        mode: SearchMode | None = None,
    ) -> Answer:
        """The whole answer at once; the same `Answer` that `ask_stream` ends with."""
        return self.ask_stream(question, k, filters, history, mode=mode).answer

    def ask_stream(
        self,
        question: str,
        k: int | None = None,
        filters: SearchFilter | None = None,
        history: Sequence[Turn] = (),
        *,
        mode: SearchMode | None = None,
    ) -> AnswerStream:
        """Iterate for the text chunks as Qwen2-VL writes them, then read `.answer`.

        `k` pages (default PAGERAG_ASK_PAGES) are retrieved and shown to the model. Nothing
        runs until the first chunk is asked for (errors surface there). The model lock is held
        while the text streams: close the stream (or drop it) when the reader goes away, and
        the generation stops and frees the device.
        """
        retrieved: list[Citation] = []  # filled by `_answer` when retrieval ends
        return AnswerStream(self._answer(question, k, filters, history, mode, retrieved), retrieved)

    def _answer(
        self,
        question: str,
        k: int | None,
        filters: SearchFilter | None,
        history: Sequence[Turn],
        mode: SearchMode | None,
        retrieved: list[Citation] | None = None,
    ) -> Generator[str, None, Answer]:
        k = self.settings.ask_pages if k is None else k
        mode = self.search_mode(mode)  # pages are retrieved as `search(..., mode=mode)` does
        if not question.strip():
            raise PageRAGError("the question is empty; type what you want to know")
        if k < 1:
            raise PageRAGError("the number of pages must be at least 1")
        if not self.index.count(self._visible(filters)):  # answered without calling any model
            return self._no_pages(question, filters)
        if mode != "text":  # text search needs no retriever model
            self.retriever  # noqa: B018 - load first, so retrieval_seconds is the search alone
        started = time.perf_counter()
        # Crops come from the question's similarity maps, so it is embedded once, here.
        crops = self.settings.answer_crops and mode != "text"
        query = self._embed_query(question) if crops else None
        hits = self.search(question, k, filters, mode, vectors=query)
        retrieval_seconds = time.perf_counter() - started
        if not hits:
            return self._no_pages(question, filters)
        if retrieved is not None:  # the pages, before the model loads and reads them
            retrieved.extend(_citation(hit, n, False) for n, hit in enumerate(hits, 1))
        yield ""  # retrieval has ended (`AnswerStream.steps`; iterating skips it)
        pages = self._shown(hits, query)
        generator = self.generator
        shown = BoxFilter()  # box markup never reaches the reader
        with self._model_lock:
            stream = generator.stream(question, pages, history)
            try:
                for chunk in stream:
                    if text := shown.feed(chunk):
                        yield text
            finally:
                stream.close()
        if text := shown.flush():
            yield text
        result = stream.result
        assert result is not None
        parsed = parse(result.text, len(hits))
        cited = parse_citations(shown.sent, len(hits))
        return Answer(
            question=question,
            text=shown.sent,
            citations=[
                _citation(page, n, n in cited, parsed.boxes.get(n, ()))
                for n, page in enumerate(pages, 1)
            ],
            retrieval_seconds=retrieval_seconds,
            generation_seconds=result.seconds,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )

    def _shown(self, hits: list[Hit], query: Any) -> list[ShownPage]:
        """The pages as the answerer gets them: with a region crop each, from the question's
        similarity map over the stored vectors, when `query` is given (PAGERAG_ANSWER_CROPS)."""
        s = self.settings
        limit = crop_limit(s.visual_token_budget, s.gen_max_pixels, len(hits))
        return [
            shown_page(
                hit,
                query,
                None if query is None else self.index.page_vectors(hit.doc_id, hit.page),
                limit,
            )
            for hit in hits
        ]

    def _no_pages(self, question: str, filters: SearchFilter | None) -> Answer:
        if not self.index.count(self._visible(None)):
            pending = len(self.pending())
            if pending:
                text = (
                    "Nothing is searchable yet, so there are no pages to answer from: "
                    f"{pending} document{'s are' if pending > 1 else ' is'} still being "
                    "ingested (a document is searched once all its pages are stored). If their "
                    "ingestion was interrupted, the next `pagerag ingest` completes the "
                    "documents."
                )
            else:
                text = (
                    "Nothing is indexed yet, so there are no pages to answer from. "
                    "Ingest some PDFs first (`pagerag ingest PATH`)."
                )
            if error := self.models.errors.get("retriever"):
                text += f" The page model could not be loaded either: {error}"
        elif filters is not None and not self.index.count(self._visible(filters)):
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
        return self.library.documents()

    def resolve(self, doc_id: str) -> str:
        """A full document id from an id or a unique prefix of one (hex, see `rag.ids`)."""
        try:
            prefix = doc_prefix(doc_id)
        except IdError as exc:
            raise PageRAGError(str(exc)) from exc
        matches = self.manifest.resolve(prefix)
        if not matches:
            raise PageRAGError(f"no document with id {prefix!r}; `pagerag docs list` shows them")
        if len(matches) > 1:
            shown = max(12, len(prefix) + 4)
            listed = ", ".join(
                f"{m[:shown]}… ({(self.manifest.sources(m) or ['being ingested'])[0]})"
                for m in matches[:5]
            )
            more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
            raise PageRAGError(
                f"{prefix!r} matches {len(matches)} documents: {listed}{more}; give more characters"
            )
        return matches[0]

    def document(self, doc_id: str) -> DocumentInfo:
        full = self.resolve(doc_id)
        info = self.manifest.info(full)
        if info is None:
            row = self.manifest.document(full)
            stored = len(self.index.page_ids(full))
            of = f"{stored} of {row.pages}" if row is not None else str(stored)
            raise DocumentPending(
                f"document {full[:12]} is not complete yet ({of} pages stored), so it is not "
                "listed or searched: it is being ingested now, or its ingestion was interrupted "
                "and resumes when its job runs again (a restarted server resumes its jobs; "
                "GET /api/v1/jobs lists them). If no job lists it, send the file again (the "
                "pages already stored are kept) or delete it."
            )
        return info

    def pending(self) -> tuple[str, ...]:
        """Documents not complete yet (being ingested, or interrupted): never searchable."""
        return self.library.pending()

    def _visible(self, filters: SearchFilter | None) -> SearchFilter | None:
        """`filters` limited to complete documents: a document's pages are found only once all of
        them are stored (a killed ingestion leaves its pages stored but invisible)."""
        pending = self.pending()
        if not pending:
            return filters
        filters = filters or SearchFilter()
        return replace(filters, exclude_doc_ids=(*filters.exclude_doc_ids, *pending))

    def delete(self, doc_id: str, timeout: float | None = None) -> DocumentInfo:
        """Remove a document's points, page images and manifest rows. A running ingestion
        performs the deletion after its current batch (cancelling the document's own
        ingestion if it is the one deleted); past `timeout` (default PAGERAG_REQUEST_TIMEOUT)
        `DeletionQueued` says so, and the deletion still happens."""
        info, deletion = self.request_delete(doc_id)
        wait = self.settings.request_timeout if timeout is None else timeout
        if not deletion.wait(wait):
            raise DeletionQueued(info.doc_id, wait)
        return info

    def update_document(
        self, doc_id: str, *, title: str | None = None, tags: Sequence[str] | None = None
    ) -> DocumentInfo:
        """Change a complete document's title and/or tags (None keeps one; `tags=[]` clears
        them). Search filters by the new tags at once; re-ingesting the file keeps them."""
        full = self.document(doc_id).doc_id  # DocumentPending while it is being ingested
        if title is not None:
            title = " ".join(title.split())
            if not title or len(title) > MAX_TITLE:
                raise PageRAGError(f"a title needs 1 to {MAX_TITLE} characters")
        cleaned = None
        if tags is not None:
            cleaned = tuple(sorted({t.strip() for t in tags if t.strip()}))
            bad = [t for t in cleaned if len(t) > MAX_TAG or not t.isprintable()]
            if bad or len(cleaned) > MAX_TAGS:
                raise PageRAGError(
                    f"give at most {MAX_TAGS} tags of 1 to {MAX_TAG} printable characters"
                    + (f" (not {bad[0][:20]!r})" if bad else "")
                )
        # No write lock: an ingestion never writes a complete document's points (a changed
        # file is a new document; a copy only adds sources), so this need not wait for it.
        self.library.update(full, title=title, tags=cleaned)
        return self.document(full)

    def request_delete(self, doc_id: str) -> tuple[DocumentInfo, Deletion]:
        """Queue a deletion (run at once when nothing is being written); never blocks."""
        full = self.resolve(doc_id)
        info = self.manifest.info(full) or DocumentInfo(full, "", "", 0)
        return info, self._writes.delete(full)

    def info(self) -> ServiceInfo:
        device, dtype = _device_dtype(self.settings)
        docs = self.manifest.documents()
        pending = self.pending()
        index_bytes = self.index.bytes_on_disk()
        images_bytes = self.library.images.bytes()
        manifest_bytes = sum(
            _dir_size(p)
            for p in self.settings.data_dir.glob(self.settings.manifest_path.name + "*")
        )
        return ServiceInfo(
            backend=self.index.backend,
            data_dir=str(self.settings.data_dir),
            retriever_model=self.settings.retriever_model,
            retriever_loaded=self._retriever is not None,
            generator_model=self.settings.generator_model,
            generator_loaded=self._generator is not None,
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            documents=len(docs),
            pages=self.index.count(self._visible(None)),
            pending_documents=len(pending),
            pending_pages=self.index.count(SearchFilter(doc_ids=pending)) if pending else 0,
            waiting_pages=self.library.waiting_count(),
            retriever_error=self.models.errors.get("retriever", ""),
            generator_error=self.models.errors.get("generator", ""),
            failed_files=len(self.manifest.failures()),
            bytes_on_disk=index_bytes + images_bytes + manifest_bytes,
            index_bytes=index_bytes,
            images_bytes=images_bytes,
        )

    def close(self) -> None:
        self.index.close()
        self.manifest.close()


def _citation(
    hit: Hit, label: int, cited: bool, boxes: Sequence[tuple[int, int, int, int]] = ()
) -> Citation:
    """`boxes` in 0-1000 units; a `ShownPage` knows its image's size and its regions."""
    shown = hit if isinstance(hit, ShownPage) else None
    return Citation(
        doc_id=hit.doc_id,
        source=hit.source,
        page=hit.page,
        score=hit.score,
        image=hit.image,
        label=label,
        cited=cited,
        boxes=page_boxes(boxes, shown.size) if shown else (),
        regions=shown.regions if shown else (),
    )


def _pooled(embeddings: list[Any], factor: int) -> list[Any]:
    """Token pooling (PAGERAG_POOL_FACTOR) of freshly embedded pages. Here, not in the retriever:
    the factor belongs to the index (its metadata), and one retriever serves every library."""
    if factor <= 1:
        return embeddings
    from rag.models.retriever import pool_page  # torch: only when pooling is on

    return [pool_page(page, factor) for page in embeddings]


class _Locked:
    """Serialises page embedding with every other use of the model."""

    def __init__(self, retriever: PageRetriever, lock: threading.Lock, pool_factor: int) -> None:
        self._retriever = retriever
        self._lock = lock
        self._pool_factor = pool_factor

    def embed_pages(self, images: Sequence[Any]) -> list[Any]:
        with self._lock:
            pages = self._retriever.embed_pages(images)
        return _pooled(pages, self._pool_factor)  # CPU work: outside the model lock
