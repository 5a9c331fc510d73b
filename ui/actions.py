"""What the web UI does, without Gradio: each function takes the service (and the job manager)
and returns plain values that `ui.app` puts into components. Tests call these directly."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.boxes import draw_boxes
from rag.config import SearchMode
from rag.errors import UserError
from rag.heatmap import page_heatmaps
from rag.models.download import DOWNLOADS, Download, DownloadRegistry
from rag.models.loading import ModelDownloading, ModelLoadError
from rag.server.jobs import JobInfo, JobManager, display_name, stage_files
from rag.server.modelqueue import Ticket, WorkQueue
from rag.service import PageRAG
from rag.types import Answer, Citation, SearchFilter

Message = dict[str, str]  # a Chatbot message: {"role": "user" | "assistant", "content": ...}
Turn = tuple[str, str]
GalleryItem = tuple[Any, str]  # (image path or PIL image, caption)
SHORT_ID = 12  # characters of a document id shown in the UI

# What works while a model is missing or downloading, as the UI's controls name it.
TEXT_MODE = " (Settings: How pages are found: Text layer only)"
FIND = " (the Find pages only button)"
# Advice written for the command line, as the UI says it (what a browser user can do there).
_UI_ADVICE = [
    (re.compile(r"; `pagerag docs list` shows them"), "; the Library tab lists them"),
    (
        re.compile(r"give it with `--password FILE=PASSWORD` or decrypt it \(.*?\) first"),
        "type its password in the upload area's Password field and add it again",
    ),
    (
        re.compile(r"Ingest some PDFs first \(`pagerag ingest PATH`\)\."),
        "Add PDFs or images in the Library tab first.",
    ),
    (re.compile(r"the next `pagerag ingest`( run)? completes"), "adding the files again completes"),
    (re.compile(r"text search works now \(`--mode text`\)"), "text search works now" + TEXT_MODE),
    (re.compile(r"finding pages works now \(`pagerag search`\)"), "finding pages works now" + FIND),
]


def ui_words(text: str) -> str:
    """A message from the service or the ingestion, with its command-line advice replaced by
    what to do in the web UI."""
    for pattern, words in _UI_ADVICE:
        text = pattern.sub(words, text)
    return text


@dataclass
class AskView:
    """Everything the Ask tab shows; yielded again after every step. `revision` grows when
    anything but the chat changed (the pages, the chips, the note), so the UI sends only the
    chat while the text streams."""

    chat: list[Message]
    turns: list[Turn]
    pages: list[dict[str, Any]] = field(default_factory=list)  # the last answer's citations
    question: str = ""
    gallery: list[GalleryItem] = field(default_factory=list)
    chips: list[tuple[str, int]] = field(default_factory=list)  # (label, gallery index)
    note: str = ""
    revision: int = 0

    def show(self, **changes: Any) -> AskView:
        for name, value in changes.items():
            setattr(self, name, value)
        self.revision += 1
        return self


def shown(text: str) -> str:
    """Text for the chat, to be shown as plain text. The Chatbot renders no Markdown (see
    `ui.app`) but still parses a message as HTML: with every `<` written `&lt;` no tag can
    form, so no image, link or script; the rest stays as written (an entity such as `&amp;`
    would show as its character, which is harmless)."""
    return text.replace("<", "&lt;")


def problem(exc: BaseException) -> str | None:
    """A plain-words message for an error a user can act on (with UI advice); None for a bug."""
    if not isinstance(exc, UserError):
        return None
    message = ui_words(str(exc))
    if isinstance(exc, ModelLoadError) and not isinstance(exc, ModelDownloading):
        message = f"{message} {_meanwhile(exc.setting)}".rstrip()
    return message


def _meanwhile(setting: str) -> str:
    """What works in the UI while the model chosen by `setting` is missing."""
    if setting == "PAGERAG_RETRIEVER_MODEL":
        return "Until it loads, text search needs no model and works" + TEXT_MODE + "."
    if setting == "PAGERAG_GENERATOR_MODEL":
        return "Until it loads, finding pages works without writing an answer" + FIND + "."
    return ""


def resolve_docs(service: PageRAG, doc_ids: Sequence[str]) -> list[str]:
    """Full document ids from ids or prefixes (a client that never loaded the page's menus
    may name them), checked server-side; a `UserError` names an unknown one."""
    return [service.resolve(d) for d in doc_ids if d and d.strip()]


def search_filter(
    service: PageRAG, doc_ids: Sequence[str], tags: Sequence[str] = ()
) -> SearchFilter | None:
    """The Ask tab's filter: these documents (ids checked server-side) and pages with any of
    these tags; None when neither is given."""
    ids = tuple(resolve_docs(service, doc_ids))
    wanted = tuple(dict.fromkeys(t.strip() for t in tags if t and t.strip()))
    return SearchFilter(doc_ids=ids, tags=wanted) if ids or wanted else None


def ask(
    service: PageRAG,
    question: str,
    chat: Sequence[Message],
    turns: Sequence[Turn],
    k: int,
    doc_ids: Sequence[str],
    show_map: bool,
    mode: SearchMode | None = None,
    *,
    work: WorkQueue,
    tags: Sequence[str] = (),
) -> Iterator[AskView]:
    """Show the question, then the retrieved pages as soon as retrieval ends, then stream
    the answer, then mark the cited pages. Earlier turns go to the model as the
    conversation's history, so follow-up questions can refer to them. Closing the iterator
    (the Stop button) stops the generation and frees the model."""
    question = question.strip()
    view = AskView(chat=[*chat, {"role": "user", "content": shown(question)}], turns=list(turns))
    view.chat.append({"role": "assistant", "content": ""})
    yield view.show(note="Finding the pages…")
    try:
        filters = search_filter(service, doc_ids, tags)
        with work.acquire() as ticket:
            answer = yield from _stream(service, ticket, question, k, filters, mode, view)
            pages = [_page(c) for c in answer.citations]
            shown_map = show_map and bool(pages)
            if shown_map:
                yield view.show(note="Drawing the similarity maps…")
            view.show(
                question=question,
                pages=pages,
                chips=[(_chip(c), i) for i, c in enumerate(answer.citations)],
                gallery=gallery(service, question, pages, show_map, work=work, ticket=ticket),
            )
    except Exception as exc:
        message = problem(exc)
        if message is None:
            raise
        view.chat[-1] = {"role": "assistant", "content": shown(f"Not answered: {message}")}
        yield view.show(note=message)
        return
    view.turns.append((question, answer.text))
    view.note = (
        f"retrieval {answer.retrieval_seconds:.2f} s · generation "
        f"{answer.generation_seconds:.2f} s · {answer.completion_tokens} tokens"
        if answer.citations
        else ""
    )
    yield view


def _stream(
    service: PageRAG,
    ticket: Ticket,
    question: str,
    k: int,
    filters: SearchFilter | None,
    mode: SearchMode | None,
    view: AskView,
) -> Generator[AskView, None, Answer]:
    """Yields the view when the pages are found and as text arrives; returns the `Answer`."""
    stream = service.ask_stream(question, k, filters, view.turns, mode=mode)
    writing = False
    try:
        for chunk in stream.steps():
            if not chunk:  # retrieval ended: show the pages while the model reads them
                if stream.retrieved and not view.pages:
                    pages = [_page(c) for c in stream.retrieved]
                    view.show(
                        question=question,
                        pages=pages,
                        chips=[(_chip(c), i) for i, c in enumerate(stream.retrieved)],
                        gallery=gallery(service, question, pages, False),
                        note=f"Reading the {_count(len(pages), 'page')}…",
                    )
                    yield view
                ticket.check()
                continue
            text = view.chat[-1]["content"] + shown(chunk)
            view.chat[-1] = {"role": "assistant", "content": text}
            if not writing:
                writing = True
                view.show(note="Writing the answer… (Stop ends it)")
            yield view
            ticket.check()
        answer = stream.answer
    finally:
        stream.close()  # the reader left, Stop was pressed or the deadline passed
    answer_text = ui_words(answer.text) if not answer.citations else answer.text
    view.chat[-1] = {"role": "assistant", "content": shown(answer_text)}
    return answer


def search(
    service: PageRAG,
    question: str,
    k: int,
    mode: SearchMode | None,
    doc_ids: Sequence[str] = (),
    *,
    work: WorkQueue,
    tags: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The `k` best pages, as JSON values (no server paths): doc_id, source, page, score;
    only from `doc_ids` and from pages with any of `tags` when given."""
    if not question or not question.strip():
        raise _Refused("type a question (or some words) to search for first")
    filters = search_filter(service, doc_ids, tags)
    with work.acquire():
        hits = service.search(question.strip(), k, filters, mode)
    return [
        {
            "label": n,
            "doc_id": h.doc_id,
            "source": h.source,
            "title": h.title,
            "page": h.page,
            "score": round(h.score, 4),
        }
        for n, h in enumerate(hits, 1)
    ]


def search_view(service: PageRAG, question: str, hits: Sequence[dict[str, Any]]) -> AskView:
    """The Ask tab's pages for search hits (no answer, nothing cited)."""
    images = service.library.images
    pages = [{**h, "image": str(images.path(h["doc_id"], h["page"])), "cited": False} for h in hits]
    view = AskView(chat=[], turns=[], pages=pages, question=question)
    view.gallery = gallery(service, question, pages, False)
    view.chips = [(f"[{p['label']}] {p['source']} p.{p['page']}", i) for i, p in enumerate(pages)]
    view.note = f"{_count(len(pages), 'page')} found; ask to get an answer from them."
    if not pages:
        view.note = "No page matches; try other words or another search mode."
    return view


class _Refused(UserError):
    http_status = 400


def _page(c: Citation) -> dict[str, Any]:
    return {
        "doc_id": c.doc_id,
        "source": c.source,
        "page": c.page,
        "score": c.score,
        "image": c.image,
        "label": c.label,
        "cited": c.cited,
        "boxes": [list(b) for b in c.boxes],  # where the answer boxed its evidence (pixels)
    }


def _chip(c: Citation) -> str:
    return f"{'★ ' if c.cited else ''}[{c.label}] {c.source} p.{c.page}"


def gallery(
    service: PageRAG,
    question: str,
    pages: Sequence[dict[str, Any]],
    show_map: bool,
    *,
    work: WorkQueue | None = None,
    ticket: Ticket | None = None,
) -> list[GalleryItem]:
    """The pages with their scores; with `show_map`, each with its similarity map (which needs
    the model to embed the question: a ticket is taken from `work` unless the caller holds
    one)."""
    captions = [
        f"[{p['label']}] {p['source']} · page {p['page']} · score {p['score']:.2f}"
        + (" · cited" if p["cited"] else "")
        for p in pages
    ]
    if not show_map or not pages:
        return [(_boxed(p["image"], p), c) for p, c in zip(pages, captions, strict=True)]
    keys = [(p["doc_id"], p["page"]) for p in pages]
    if ticket is None:
        assert work is not None, "similarity maps need the model: pass work= or ticket="
        with work.acquire():
            maps = page_heatmaps(service, question, keys)
    else:
        maps = page_heatmaps(service, question, keys)
    return [
        (_boxed(m.image, p), c + " · similarity map")
        for m, p, c in zip(maps, pages, captions, strict=True)
    ]


def _boxed(image: Any, page: dict[str, Any]) -> Any:
    """The page (path or image) with the answer's evidence boxes drawn on a copy, if any."""
    return draw_boxes(image, page["boxes"]) if page.get("boxes") else image


# -- library ------------------------------------------------------------------------------


@dataclass
class LibraryView:
    rows: list[list[Any]]  # source, pages, title, tags, added, id
    thumbnails: list[GalleryItem]
    choices: list[tuple[str, str]]  # (label, document id) for the filter and delete menus
    summary: str
    tags: list[str] = field(default_factory=list)  # every tag in the library: the tag filter


def library(service: PageRAG) -> LibraryView:
    docs = sorted(service.documents(), key=lambda d: d.source.lower())
    thumbs = []
    for d in docs:
        first = service.library.images.path(d.doc_id, 1)
        if first.is_file():
            thumbs.append((str(first), f"{d.source} · {_count(d.pages, 'page')}"))
    return LibraryView(
        rows=[
            [d.source, d.pages, d.title, ", ".join(d.tags), d.ingested_at[:16], d.doc_id[:SHORT_ID]]
            for d in docs
        ],
        thumbnails=thumbs,
        choices=[(f"{d.source} ({d.doc_id[:8]})", d.doc_id) for d in docs],
        summary=f"{_count(len(docs), 'document')}, {_count(sum(d.pages for d in docs), 'page')}",
        tags=sorted({t for d in docs for t in d.tags}, key=str.lower),
    )


def row_document(service: PageRAG, row: Sequence[Any] | None) -> str | None:
    """The full id of the document in a clicked table row (its last cell is the short id);
    None when the row is gone or holds no id."""
    if not row or not str(row[-1]).strip():
        return None
    try:
        return service.resolve(str(row[-1]))
    except UserError:  # deleted meanwhile
        return None


def document_fields(service: PageRAG, doc_id: str | None) -> tuple[str, str]:
    """The title and the tags (comma-separated) of `doc_id`, to edit; empty for none."""
    if not doc_id:
        return "", ""
    try:
        info = service.document(doc_id)
    except UserError:  # gone, or still being ingested: nothing to edit yet
        return "", ""
    return info.title, ", ".join(info.tags)


def parse_tags(text: str | None) -> list[str]:
    """Tags typed comma-separated ("finance, 2015"); blanks dropped."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@dataclass(frozen=True)
class Edit:
    """What saving a document's title and tags shows: one line, and the fields as stored."""

    message: str  # Markdown
    title: str
    tags: str
    saved: bool


def edit_document(service: PageRAG, doc_id: str | None, title: str, tags: str) -> Edit:
    """Give `doc_id` this title and these tags (comma-separated; empty clears them). A
    refused change (an empty or too long title, bad tags, an unknown id) stores nothing and
    says why; the fields are given back as typed."""
    try:
        if not doc_id:
            raise _Refused("choose a document first: click its row in the table")
        info = service.update_document(doc_id, title=title or "", tags=parse_tags(tags))
    except Exception as exc:
        message = problem(exc)
        if message is None:
            raise
        return Edit(f"**Not saved:** {message}", title, tags, saved=False)
    shown_tags = ", ".join(info.tags) or "none"
    return Edit(
        f"Saved **{_escape(info.source or info.doc_id[:SHORT_ID])}**: title "
        f"“{_escape(info.title)}”, tags: {_escape(shown_tags)}.",
        info.title,
        ", ".join(info.tags),
        saved=True,
    )


def documents(service: PageRAG) -> list[dict[str, Any]]:
    """The library as JSON values, for API clients of the UI."""
    return [
        {
            "doc_id": d.doc_id,
            "source": d.source,
            "title": d.title,
            "pages": d.pages,
            "tags": list(d.tags),
            "added": d.ingested_at,
        }
        for d in sorted(service.documents(), key=lambda d: d.source.lower())
    ]


def start_upload(jobs: JobManager, files: Sequence[str | Path], password: str = "") -> JobInfo:
    """Stage files dropped into the UI (Gradio's temporary copies, named as the user named
    them) and queue their ingestion job; `password` opens whichever of them is an encrypted
    PDF."""
    folder = jobs.upload_folder()
    with ExitStack() as stack:
        named = [(display_name(Path(f).name), stack.enter_context(open(f, "rb"))) for f in files]
        reserve = jobs.service.settings.disk_reserve_mb
        staged, rejected = stage_files(named, folder, reserve_mb=reserve)
    passwords = {s.name: password for s in staged} if password else None
    return jobs.submit_upload(staged, rejected, folder, passwords=passwords)


def follow(jobs: JobManager, job_id: str, poll: float = 0.2) -> Iterator[JobInfo]:
    """The job as it runs (every `poll` seconds), ending with its finished record."""
    while (view := jobs.get(job_id)) and view.running:
        yield view
        time.sleep(poll)
    assert view is not None
    yield view


def upload(
    jobs: JobManager,
    files: Sequence[str | Path],
    on_progress: Callable[[JobInfo], None] = lambda _job: None,
    poll: float = 0.2,
    password: str = "",
) -> JobInfo:
    """`start_upload`, then report progress while the job runs; returns the finished job."""
    job = start_upload(jobs, files, password)
    for job in follow(jobs, job.id, poll):  # noqa: B020 - the same job, newer each time
        on_progress(job)
    return job


_STAGES = {
    "reading": "Reading the files",
    "loading the model": "Loading the page model (the first time takes a while)",
    "rendering": "Rendering pages",
    "embedding": "Embedding pages",
    "storing": "Storing pages",
    "done": "Finishing",
}


def stage_label(job: JobInfo) -> str:
    """What the job is doing now, in words."""
    if job.state == "queued":
        return "Waiting for the ingestion ahead of it"
    if job.state == "running":
        return _STAGES.get(job.stage or "reading", job.stage)
    return "Failed" if job.state == "failed" else "Done"


def progress_text(job: JobInfo, what: str = "Adding") -> str:
    """One progress line (Markdown) for a job: stage, pages and files so far, the file."""
    parts = [f"**{what}: {stage_label(job)}{'…' if job.running else '.'}**"]
    if job.pages_total:
        done, total = job.pages_done, job.pages_total
        filled = round(20 * done / total)
        parts.append(f"`{'█' * filled}{'░' * (20 - filled)}` {done}/{total} pages")
    if job.files_total:
        parts.append(f"· {job.files_done}/{job.files_total} files")
    if job.current:
        parts.append(f"· {job.current}")
    return " ".join(parts)


def job_report(job: JobInfo) -> str:
    """A job's outcome in plain words (Markdown)."""
    lines = []
    if job.state == "failed" and job.message:
        lines.append(f"**Ingestion failed:** {ui_words(job.message)}")
    lines.append(
        f"Added {_count(job.indexed_documents, 'document')} "
        f"({_count(job.indexed_pages, 'page')}); "
        f"{_count(job.skipped_documents, 'file')} already in the library; "
        f"{_count(len(job.errors), 'file')} could not be read."
    )
    lines += [f"- not added: **{e.source}**: {ui_words(e.error)}" for e in job.errors]
    lines += [f"- note: **{w.source}**: {ui_words(w.warning)}" for w in job.warnings]
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def folder_problems(jobs: JobManager) -> str:
    """How the ingestion of the start-up folder (`pagerag serve --docs`) goes (live, while it
    runs) or went; uploads made in the UI show their own report."""
    lines = []
    for job in jobs.list():
        if job.kind != "folder":
            continue
        if job.running:
            lines.append(progress_text(job, "Start-up folder"))
        elif job.message:
            lines.append(f"Reading the start-up folder failed: {ui_words(job.message)}")
        if job.errors:
            lines.append(f"{_count(len(job.errors), 'file')} of the start-up folder:")
            lines += [f"- not added: **{e.source}**: {ui_words(e.error)}" for e in job.errors]
    return "\n".join(lines)


def any_running(jobs: JobManager) -> bool:
    return any(j.running for j in jobs.list())


def delete_prompt(service: PageRAG, doc_id: str | None) -> str:
    """What deleting `doc_id` would remove, as a question to confirm (Markdown); a
    `UserError` for an unknown id."""
    if not doc_id:
        raise _Refused("choose a document to delete first")
    full = service.resolve(doc_id)
    info = next((d for d in service.documents() if d.doc_id == full), None)
    source = info.source if info else "(being ingested)"
    pages = _count(info.pages, "page") if info else "its stored pages"
    return (
        f"**Delete {source}?** This removes its {pages}, their page images and its entry "
        f"(id `{full[:SHORT_ID]}`) from the library. It cannot be undone (add the file again "
        "to get it back)."
    )


def delete(service: PageRAG, doc_id: str | None) -> str:
    if not doc_id:
        return "Choose a document to delete first."
    try:
        info = service.delete(doc_id)
    except Exception as exc:
        message = problem(exc)
        if message is None:
            raise
        return message
    return f"Deleted **{info.source or info.doc_id[:SHORT_ID]}** ({_count(info.pages, 'page')})."


# -- status -------------------------------------------------------------------------------


def status(service: PageRAG, work: WorkQueue) -> str:
    info = service.info()
    queue = work.stats()
    mib = 1024 * 1024
    rows = [
        (
            "Retriever",
            f"{_escape(info.retriever_model)} "
            f"({_loaded(info.retriever_loaded, info.retriever_error)})",
        ),
        (
            "Generator",
            f"{_escape(info.generator_model)} "
            f"({_loaded(info.generator_loaded, info.generator_error)})",
        ),
        *(("Download", f"{_escape(d.model_id)}: {d.describe()}") for d in DOWNLOADS.active()),
        ("Device", f"{info.device} · {info.dtype}"),
        ("Index backend", info.backend),
        ("Documents", f"{info.documents} ({info.pending_documents} being ingested)"),
        ("Pages", info.pages),
        (
            "Waiting for visual vectors",
            f"{info.waiting_pages} pages (found by text search until the page model embeds them)"
            if info.waiting_pages
            else "none",
        ),
        (
            "Disk use",
            f"{info.bytes_on_disk / mib:.1f} MiB (index {info.index_bytes / mib:.1f} MiB, "
            f"page images {info.images_bytes / mib:.1f} MiB)",
        ),
        ("Data directory", f"`{info.data_dir}`"),
        (
            "Model queue",
            f"{queue['running']} running, {queue['waiting']} waiting "
            f"(max {queue['max_waiting']}), {queue['served']} served, {queue['rejected']} turned "
            f"away, {queue['timed_out']} timed out",
        ),
    ]
    return "| Part | State |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _loaded(flag: object, error: str = "") -> str:
    if error:
        return f"could not load: {_escape(ui_words(error))}"
    return "loaded" if flag else "not loaded yet"


_MARKDOWN = re.compile(r"([\\`*_\[\]<>|#])")


def _escape(text: str) -> str:
    """`text` shown as written inside Markdown (a model id or path may hold `_` or `*`)."""
    return _MARKDOWN.sub(r"\\\1", text)


# -- banner -------------------------------------------------------------------------------

_ROLES = {"ColQwen2": "page model", "Qwen2-VL": "answer model"}
_DOWNLOAD_MEANWHILE = {
    "ColQwen2": "Meanwhile text search works" + TEXT_MODE + " and documents can be added; "
    "visual search starts when it is done.",
    "Qwen2-VL": "Meanwhile search works" + FIND + "; answers start when it is done.",
}


def banner(service: PageRAG, downloads: DownloadRegistry = DOWNLOADS) -> str:
    """What keeps the models from working (Markdown; empty when nothing does): a download in
    progress, with its bytes and rate, or a model that could not load, with the reason, the
    setting to change and what works meanwhile."""
    lines = [_download_line(d) for d in downloads.active()]
    errors = service.load_errors  # not `info()`: this runs every few seconds per open page
    if error := errors.get("retriever"):
        count = service.library.waiting_count()
        waiting = (
            f" {count} stored pages are found by text search now and get their visual vectors "
            "once it loads."
            if count
            else ""
        )
        lines.append(
            f"**The page model could not be loaded:** {_escape(ui_words(error))}"
            f" {_meanwhile('PAGERAG_RETRIEVER_MODEL')}{waiting}"
        )
    if error := errors.get("generator"):
        lines.append(
            "**The answer model could not be loaded:** "
            f"{_escape(ui_words(error))} {_meanwhile('PAGERAG_GENERATOR_MODEL')}"
        )
    return "\n\n".join(lines)


def _download_line(d: Download) -> str:
    role = _ROLES.get(d.kind, "model")
    return (
        f"**Downloading the {role}** ({_escape(d.model_id)}) from the Hugging Face Hub, once: "
        f"{d.describe()}. {_DOWNLOAD_MEANWHILE.get(d.kind, '')}"
    ).rstrip()


def banner_busy(service: PageRAG, downloads: DownloadRegistry = DOWNLOADS) -> bool:
    """Whether the banner may change soon (a model is loading or downloading)."""
    return service.models_loading or bool(downloads.active())
