"""Files -> pages -> embeddings -> Qdrant, incrementally and resumably.

Rendering runs in a sandboxed worker process fed by a background thread, a bounded queue
ahead of embedding, so pages are rendered while the model embeds the current batch. A
document becomes 'done' in the manifest only after all its pages are upserted and the index
is flushed; a run that was killed finds it 'pending' and stores only the pages it lacks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from PIL import Image

from ingest.discover import (
    Shard,
    SourceFile,
    describe_content,
    discover,
    file_sha256,
    mislabelled,
    sniff_kind,
)
from ingest.diskspace import DiskFullError
from ingest.library import Library
from ingest.manifest import now
from ingest.render import RenderError, SkippedPage
from ingest.sandbox import BudgetStop, RenderSandbox, SandboxPage
from rag.index.base import permanent_error
from rag.models.loading import ModelLoadError
from rag.types import (
    FileDuplicate,
    FileError,
    FileWarning,
    IngestReport,
    PageEmbedding,
    PageRecord,
)

log = logging.getLogger(__name__)

UPSERT_ATTEMPTS = 4  # transient store errors: retried with backoff 0.5 s, 1 s, 2 s
MAX_PAGE_WARNINGS = 10  # skipped pages named one by one per document; the rest in one line


class PageEmbedder(Protocol):
    def embed_pages(self, images: Sequence[Image.Image]) -> list[PageEmbedding]: ...


Stage = Literal["reading", "loading the model", "rendering", "embedding", "storing", "done"]


@dataclass
class IngestProgress:
    """What a progress display needs; passed to the callback after every change. Counters
    only grow: a file is done when it is indexed, found unchanged or failed; a page when it
    is stored. `current` is the file being worked on now."""

    stage: Stage = "reading"  # reading = hashing and opening files to plan the run
    files_total: int = 0
    files_done: int = 0
    pages_total: int = 0  # pages still to store (0 while the run is being planned)
    pages_done: int = 0
    indexed_documents: int = 0
    current: str = ""
    started: float = field(default_factory=time.monotonic)
    embedding_started: float | None = None  # after the model loaded: the rate excludes it

    @property
    def pages_per_second(self) -> float:
        if self.embedding_started is None:
            return 0.0
        elapsed = time.monotonic() - self.embedding_started
        return self.pages_done / elapsed if elapsed > 0 else 0.0


@dataclass
class _Document:
    files: list[SourceFile]  # first one is the document's source; the rest have identical bytes
    doc_id: str
    kind: str
    title: str
    pages: int
    size: int
    tags: tuple[str, ...]
    password: str | None = None
    stored: frozenset[int] = frozenset()  # pages already in the index from an interrupted run
    failed: bool = False
    cancelled: bool = False  # deleted while being ingested: nothing of it is kept
    total: int = 0  # the file's page count; `pages` is what the page cap lets in
    # Set by the render thread before it queues the doc's end; read only after that.
    skipped: dict[int, str] = field(default_factory=dict)  # page -> why it cannot render
    stop: BudgetStop | None = None  # a per-document budget ended rendering early


@dataclass
class _Page:
    doc: _Document
    page: SandboxPage
    image: Image.Image


class _StoreError(Exception):
    """The vector store refused a batch after retries (server down, disk full)."""


_END = object()


def _nothing_rendered(doc: _Document) -> str:
    """Why a document has no page to index: the reasons of its first skipped pages."""
    reasons = [f"{reason}" for _, reason in sorted(doc.skipped.items())[:3]]
    if len(doc.skipped) > 3:
        reasons.append(f"{len(doc.skipped) - 3} more pages failed")
    if doc.stop is not None:
        reasons.append(f"rendering stopped at page {doc.stop.next_page}: {doc.stop.budget}")
    return "no page of the document could be rendered: " + "; ".join(reasons)


class IngestRunner:
    def __init__(
        self,
        library: Library,
        embedder: Callable[[], PageEmbedder],
        *,
        sandbox: RenderSandbox | None = None,
        batch_size: int = 4,
        on_progress: Callable[[IngestProgress], None] | None = None,
        retry_delay: float = 0.5,
        check_space: Callable[[], None] | None = None,
        between_batches: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.library = library
        self.index = library.index  # upserts; everything else about a document goes via library
        self._embedder_factory = embedder  # called only when something needs embedding
        self.sandbox = sandbox or RenderSandbox()
        self.batch_size = batch_size
        self.retry_delay = retry_delay
        self._notify = on_progress or (lambda _p: None)
        # Raises DiskFullError when the disk is too full to write a batch (ingest/diskspace.py).
        self._check_space = check_space or (lambda: None)
        # Runs the deletions queued meanwhile (rag/writelock.py); the ids it deleted.
        self._between_batches = between_batches or (lambda: ())
        self._passwords: dict[str, str] = {}

    # -- planning -------------------------------------------------------------------------
    def run(
        self,
        paths: Iterable[Path],
        tags: Sequence[str] = (),
        *,
        sources: dict[Path, str] | None = None,
        passwords: dict[str, str] | None = None,
        shard: Shard | None = None,
    ) -> IngestReport:
        """Ingest files and folders. `sources` overrides the display name of given files
        (uploads keep the name the user gave, not the temporary path); `passwords` maps a
        file's source or name to the password of an encrypted PDF; with `shard`, only the
        files of that shard are ingested (one of several workers, see `Shard`)."""
        self._passwords = passwords or {}
        try:
            return self._run(list(paths), tuple(sorted(set(tags))), sources or {}, shard)
        finally:
            self.sandbox.close()  # no worker process outlives a run

    def _run(
        self,
        paths: list[Path],
        tags: tuple[str, ...],
        sources: dict[Path, str],
        shard: Shard | None = None,
    ) -> IngestReport:
        started = time.monotonic()
        report = IngestReport()
        files, missing = discover(paths)
        files = [SourceFile(f.path, sources.get(f.path, f.source)) for f in files]
        if shard is not None:  # by source path, so every worker splits the same way
            files = [f for f in files if shard.owns(f.source)]
        report.failed.extend(missing)
        progress = IngestProgress(files_total=len(files))
        self._notify(progress)
        docs: dict[str, _Document] = {}
        for planned, file in enumerate(files, 1):
            progress.current = file.source
            self._notify(progress)
            self._plan(file, tags, docs, report)
            # Unchanged and unreadable files are done now; the others when they are stored.
            progress.files_done = planned - sum(len(j.files) for j in docs.values())
        todo = list(docs.values())
        progress.pages_total = sum(j.pages for j in todo)
        if todo:
            self._execute(todo, report, progress)
        report.seconds = time.monotonic() - started
        progress.stage, progress.current = "done", ""
        self._notify(progress)
        return report

    def _plan(
        self,
        file: SourceFile,
        tags: tuple[str, ...],
        docs: dict[str, _Document],
        report: IngestReport,
    ) -> None:
        try:
            doc_id, head = file_sha256(file.path)
        except OSError as exc:
            self._fail(file, f"cannot read the file ({exc.strerror or exc})", report)
            return
        if doc_id in docs:  # same bytes as a file earlier in this run
            docs[doc_id].files.append(file)
            return
        if self.library.is_complete(doc_id):
            if self.library.manifest.doc_for_path(str(file.path)) != doc_id:  # a new copy
                [same_as, *_] = self.library.manifest.sources(doc_id) or [file.source]
                report.duplicates.append(FileDuplicate(file.source, same_as))
            self._link(file, doc_id)
            report.skipped_documents += 1
            return
        kind = sniff_kind(head)
        if kind is None:
            self._fail(file, describe_content(head), report)
            return
        # By the name users gave the file (an upload's staged path has none of its own).
        if reason := mislabelled(head, kind, Path(file.source).suffix):
            self._fail(file, reason, report)
            return
        password = self._passwords.get(file.source) or self._passwords.get(file.path.name)
        try:
            opened = self.sandbox.inspect(file.path, kind, password)
        except RenderError as exc:
            self._fail(file, str(exc), report)
            return
        size = file.path.stat().st_size
        pages = min(opened.pages, self.sandbox.limits.max_pages)  # _finish warns of the cap
        docs[doc_id] = _Document(
            [file], doc_id, kind, opened.title, pages, size, tags, password, total=opened.pages
        )

    # -- execution ------------------------------------------------------------------------
    def _execute(
        self, docs: list[_Document], report: IngestReport, progress: IngestProgress
    ) -> None:
        try:
            self._execute_documents(docs, report, progress)
        except DiskFullError as exc:
            # The run stops; the document in progress stays 'pending' with the pages it has,
            # and the next run completes it. The caller gets what was done until then.
            exc.report = report  # type: ignore[attr-defined]  # read by the CLI's --json output
            raise

    def _execute_documents(
        self, docs: list[_Document], report: IngestReport, progress: IngestProgress
    ) -> None:
        # Manifest and index are touched from this thread only; the producer just renders.
        self._check_space()
        for doc in docs:
            doc.stored = self.library.begin(
                doc.doc_id,
                title=doc.title,
                pages=doc.pages,
                size=doc.size,
                kind=doc.kind,
                tags=doc.tags,
            )
            progress.pages_total -= len(doc.stored)
        progress.stage, progress.current = "loading the model", ""
        self._notify(progress)
        embedder: PageEmbedder | None
        try:
            embedder = self._embedder_factory()
        except ModelLoadError as exc:  # no weights yet (offline first run): text and images now
            log.warning("storing pages without visual vectors: %s", exc)
            embedder, report.retriever_error = None, str(exc)
        progress.stage, progress.embedding_started = "rendering", time.monotonic()
        self._notify(progress)
        pages: queue.Queue[object] = queue.Queue(maxsize=max(2 * self.batch_size, 4))
        stop = threading.Event()
        producer = threading.Thread(
            target=self._render_all, args=(docs, pages, stop), name="pagerag-render", daemon=True
        )
        producer.start()
        batch: list[_Page] = []
        ended: list[_Document] = []
        try:
            while (item := pages.get()) is not _END:
                if isinstance(item, _Page):
                    if not item.doc.failed:
                        batch.append(item)
                        if progress.current != item.doc.files[0].source:
                            progress.current = item.doc.files[0].source
                            self._notify(progress)
                elif isinstance(item, tuple):  # (doc, error) from the renderer
                    self._check_space()  # a page image the full disk refused: stop, keep it
                    doc, error = item
                    batch = [p for p in batch if p.doc is not doc]
                    if doc.cancelled:
                        self.remove(doc.doc_id)  # images it rendered after the deletion
                    else:
                        self._abort(doc, error, report)
                    progress.files_done += len(doc.files)  # its end never comes: done now
                    self._notify(progress)
                else:
                    assert isinstance(item, _Document)
                    ended.append(item)
                if len(batch) >= self.batch_size or (ended and not batch):
                    self._drain(batch, ended, embedder, report, progress)
                    progress.stage = "rendering"  # waiting for the next pages
                    batch, ended = [], []
                    self._cancel(docs, self._between_batches(), report)
            self._drain(batch, ended, embedder, report, progress)
        finally:
            stop.set()
            while producer.is_alive():  # unblock a producer waiting on a full queue
                try:
                    pages.get_nowait()
                except queue.Empty:
                    producer.join(0.05)

    def _drain(
        self,
        batch: list[_Page],
        ended: list[_Document],
        embedder: PageEmbedder | None,
        report: IngestReport,
        progress: IngestProgress,
    ) -> None:
        """Embed and store the batch, then finish the documents whose pages are all stored."""
        self._store(batch, embedder, report, progress)
        for doc in ended:
            if doc.cancelled:
                self.remove(doc.doc_id)  # images it rendered after the deletion
            elif not doc.failed:
                self._finish(doc, report)
            progress.files_done += len(doc.files)
        progress.pages_done = report.indexed_pages
        progress.indexed_documents = report.indexed_documents
        self._notify(progress)

    def _render_all(
        self, docs: list[_Document], out: queue.Queue[object], stop: threading.Event
    ) -> None:
        def put(item: object) -> None:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        try:
            for doc in docs:
                if stop.is_set():
                    return
                if doc.cancelled:  # deleted before its turn: nothing to render
                    put(doc)
                    continue
                try:
                    for page in self.sandbox.render(
                        doc.files[0].path,
                        doc.kind,
                        self.library.images.folder(doc.doc_id),
                        skip=set(doc.stored),
                        password=doc.password,
                    ):
                        if isinstance(page, SkippedPage):
                            doc.skipped[page.number] = page.reason
                            continue
                        if isinstance(page, BudgetStop):
                            doc.stop = page
                            continue
                        with Image.open(page.image) as img:
                            image = img.convert("RGB")
                        put(_Page(doc, page, image))
                        if stop.is_set():
                            return
                except RenderError as exc:
                    put((doc, str(exc)))
                    continue
                except Exception as exc:  # a renderer bug must not stop the other files
                    log.exception("rendering %s failed", doc.files[0].path)
                    put((doc, f"rendering failed ({type(exc).__name__}: {exc})"))
                    continue
                put(doc)
        finally:
            put(_END)

    def _store(
        self,
        batch: list[_Page],
        embedder: PageEmbedder | None,
        report: IngestReport,
        progress: IngestProgress,
    ) -> None:
        if not batch:
            return
        self._check_space()  # before the batch's vectors and WAL entries are written
        docs = {id(p.doc): p.doc for p in batch}.values()
        progress.stage = "embedding"
        self._notify(progress)
        embeddings: list[PageEmbedding | None]
        try:
            if embedder is None:
                embeddings = [None] * len(batch)
                # Recorded before the points: a crash between leaves a row for a page that is
                # not stored (dropped later), never a stored page nobody will embed.
                self.library.expect_visual([(p.doc.doc_id, p.page.number) for p in batch])
            else:
                embeddings = list(embedder.embed_pages([p.image for p in batch]))
        except Exception as exc:
            log.exception("embedding a batch failed")
            for doc in docs:
                self._abort(doc, f"embedding failed ({type(exc).__name__}: {exc})", report)
            return
        records = [self._record(p, e) for p, e in zip(batch, embeddings, strict=True)]
        progress.stage = "storing"
        self._notify(progress)
        try:
            self._upsert(records, embeddings)
        except (ValueError, TypeError) as exc:  # vectors the store rejects: a bad document
            for doc in docs:
                self._abort(doc, f"storing failed ({type(exc).__name__}: {exc})", report)
            return
        except _StoreError as exc:
            # Keep what is stored: the document stays 'pending' and a later run completes it.
            for doc in docs:
                doc.failed = True
                for file in doc.files:
                    self._fail(file, str(exc), report)
            return
        report.indexed_pages += len(batch)
        if embedder is None:
            report.waiting_pages += len(batch)

    def _upsert(self, records: list[PageRecord], embeddings: list[PageEmbedding | None]) -> None:
        for attempt in range(UPSERT_ATTEMPTS):
            try:
                self.index.upsert(records, embeddings)
                return
            except (ValueError, TypeError):
                raise  # our bug, not a transient fault
            except Exception as exc:
                log.warning("upsert failed (attempt %d): %s", attempt + 1, exc)
                if attempt + 1 == UPSERT_ATTEMPTS or permanent_error(exc):
                    raise _StoreError(
                        f"the vector store failed after {attempt + 1} attempt"
                        f"{'s' if attempt else ''} "
                        f"({type(exc).__name__}: {exc}); the pages stored so far are kept and "
                        "the next `pagerag ingest` run completes the document"
                    ) from exc
                time.sleep(self.retry_delay * 2**attempt)

    def _record(self, p: _Page, emb: PageEmbedding | None) -> PageRecord:
        doc = p.doc
        return PageRecord(
            doc_id=doc.doc_id,
            page=p.page.number,
            pages=doc.pages,
            source=doc.files[0].source,
            title=doc.title,
            image=str(p.page.image),
            width=p.page.width,
            height=p.page.height,
            grid=emb.grid if emb else (0, 0),
            image_offset=emb.image_offset if emb else 0,
            patch_map=emb.patch_map if emb else "",
            text=p.page.text,
            text_origin=p.page.text_origin,
            tags=doc.tags,
            sources=tuple(dict.fromkeys([f.source for f in doc.files])),
            ingested_at=now(),
        )

    def _finish(self, doc: _Document, report: IngestReport) -> None:
        stored = self.library.stored_pages(doc.doc_id)
        # Every page before the end is stored or skipped with a reason (this run or an
        # interrupted one: a skipped page is never stored, so a resumed run retries it).
        end = doc.stop.next_page - 1 if doc.stop else doc.pages
        missing = [n for n in range(1, end + 1) if n not in stored and n not in doc.skipped]
        if missing:
            self._abort(doc, f"only {len(stored)} of {doc.pages} pages were stored", report)
            return
        if not stored:
            self._abort(doc, _nothing_rendered(doc), report)
            return
        self._warn_partial(doc, end, report)
        self.library.complete(doc.doc_id, pages=len(stored))  # the pages stored, not skipped
        for file in doc.files:
            self._link(file, doc.doc_id)
        report.indexed_documents += 1
        report.skipped_documents += len(doc.files) - 1  # identical copies are stored once
        same_as = doc.files[0].source
        report.duplicates.extend(FileDuplicate(f.source, same_as) for f in doc.files[1:])

    def _warn_partial(self, doc: _Document, end: int, report: IngestReport) -> None:
        """One warning per skipped page (the first few), one for a cap or budget cut."""
        source = doc.files[0].source
        skipped = sorted(doc.skipped.items())
        for number, reason in skipped[:MAX_PAGE_WARNINGS]:
            warning = f"page {number} is not indexed: {reason}"
            report.warnings.append(FileWarning(source, warning))
        if len(skipped) > MAX_PAGE_WARNINGS:
            more = [str(n) for n, _ in skipped[MAX_PAGE_WARNINGS:]]
            warning = f"{len(more)} more pages are not indexed (pages {', '.join(more[:50])})"
            report.warnings.append(FileWarning(source, warning))
        if doc.stop is not None:
            budget = doc.stop.budget
        elif doc.total > doc.pages:
            budget = f"PAGERAG_MAX_PAGES_PER_DOCUMENT={doc.pages}"
        else:
            return
        warning = (
            f"only the first {end} of {doc.total} pages are indexed: the document reached "
            f"{budget}; to index the rest, raise it, delete the document and ingest it again"
        )
        report.warnings.append(FileWarning(source, warning))

    def _cancel(
        self, docs: list[_Document], deleted: Collection[str], report: IngestReport
    ) -> None:
        """Stop ingesting the documents that were just deleted (already removed)."""
        for doc in docs:
            if doc.doc_id in deleted and not doc.cancelled:
                doc.failed = doc.cancelled = True
                error = "deleted while it was being ingested; nothing of it is kept"
                report.failed.extend(FileError(f.source, error) for f in doc.files)

    def _abort(self, doc: _Document, error: str, report: IngestReport) -> None:
        """Nothing is kept of a document that cannot be read."""
        doc.failed = True
        self.remove(doc.doc_id)
        for file in doc.files:
            self._fail(file, error, report)

    def _fail(self, file: SourceFile, error: str, report: IngestReport) -> None:
        report.failed.append(FileError(file.source, error))
        self.library.record_failure(str(file.path), file.source, error)

    # -- sources and removal --------------------------------------------------------------
    def _link(self, file: SourceFile, doc_id: str) -> None:
        self.library.link(str(file.path), file.source, doc_id)

    def remove(self, doc_id: str) -> None:
        self.library.remove(doc_id)
