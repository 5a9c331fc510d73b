"""What the web UI does, without Gradio: each function takes the service (and the job manager)
and returns plain values that `ui.app` puts into components. Tests call these directly."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.config import SearchMode
from rag.errors import UserError
from rag.heatmap import page_heatmaps
from rag.server.jobs import JobManager, display_name, stage_files
from rag.server.modelqueue import Ticket, WorkQueue
from rag.service import PageRAG
from rag.types import Answer, Citation, SearchFilter

Message = dict[str, str]  # a Chatbot message: {"role": "user" | "assistant", "content": ...}
Turn = tuple[str, str]
GalleryItem = tuple[Any, str]  # (image path or PIL image, caption)


@dataclass
class AskView:
    """Everything the Ask tab shows; yielded again after every streamed chunk."""

    chat: list[Message]
    turns: list[Turn]
    pages: list[dict[str, Any]] = field(default_factory=list)  # the last answer's citations
    question: str = ""
    gallery: list[GalleryItem] = field(default_factory=list)
    chips: list[tuple[str, int]] = field(default_factory=list)  # (label, gallery index)
    note: str = ""


def shown(text: str) -> str:
    """Text for the chat, to be shown as plain text. The Chatbot renders no Markdown (see
    `ui.app`) but still parses a message as HTML: with every `<` written `&lt;` no tag can
    form, so no image, link or script; the rest stays as written (an entity such as `&amp;`
    would show as its character, which is harmless)."""
    return text.replace("<", "&lt;")


def problem(exc: BaseException) -> str | None:
    """A plain-words message for an error a user can act on; None for a bug."""
    return str(exc) if isinstance(exc, UserError) else None


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
) -> Iterator[AskView]:
    """Stream an answer into the chat, then show its pages. Earlier turns go to the model as
    the conversation's history, so follow-up questions can refer to them."""
    question = question.strip()
    view = AskView(chat=[*chat, {"role": "user", "content": shown(question)}], turns=list(turns))
    view.chat.append({"role": "assistant", "content": ""})
    yield view
    flt = SearchFilter(doc_ids=tuple(doc_ids)) if doc_ids else None
    try:
        with work.acquire() as ticket:
            answer = yield from _stream(service, ticket, question, k, flt, mode, view)
            view.question = question
            view.pages = [_page(c) for c in answer.citations]
            view.chips = [(_chip(c), i) for i, c in enumerate(answer.citations)]
            view.gallery = gallery(
                service, question, view.pages, show_map, work=work, ticket=ticket
            )
    except Exception as exc:
        message = problem(exc)
        if message is None:
            raise
        view.chat[-1] = {"role": "assistant", "content": shown(f"Not answered: {message}")}
        view.note = message
        yield view
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
    flt: SearchFilter | None,
    mode: SearchMode | None,
    view: AskView,
) -> Generator[AskView, None, Answer]:
    """Yields the view as text arrives; returns the final `Answer`."""
    stream = service.ask_stream(question, k, flt, view.turns, mode=mode)
    try:
        for chunk in stream:
            text = view.chat[-1]["content"] + shown(chunk)
            view.chat[-1] = {"role": "assistant", "content": text}
            yield view
            ticket.check()
        answer = stream.answer
    finally:
        stream.close()  # the reader left (or the deadline passed): stop generating
    view.chat[-1] = {"role": "assistant", "content": shown(answer.text)}
    return answer


def _page(c: Citation) -> dict[str, Any]:
    return {
        "doc_id": c.doc_id,
        "source": c.source,
        "page": c.page,
        "score": c.score,
        "image": c.image,
        "label": c.label,
        "cited": c.cited,
    }


def _chip(c: Citation) -> str:
    return f"{'★ ' if c.cited else ''}[{c.label}] {c.source} p.{c.page}"


def gallery(
    service: PageRAG,
    question: str,
    pages: Sequence[dict[str, Any]],
    show_map: bool,
    *,
    work: WorkQueue,
    ticket: Ticket | None = None,
) -> list[GalleryItem]:
    """The pages with their scores; with `show_map`, each with its similarity map (which needs
    the model to embed the question: a ticket is taken unless the caller holds one)."""
    captions = [
        f"[{p['label']}] {p['source']} · page {p['page']} · score {p['score']:.2f}"
        + (" · cited" if p["cited"] else "")
        for p in pages
    ]
    if not show_map or not pages:
        return [(p["image"], c) for p, c in zip(pages, captions, strict=True)]
    keys = [(p["doc_id"], p["page"]) for p in pages]
    if ticket is None:
        with work.acquire():
            maps = page_heatmaps(service, question, keys)
    else:
        maps = page_heatmaps(service, question, keys)
    return [(m.image, c + " · similarity map") for m, c in zip(maps, captions, strict=True)]


# -- library ------------------------------------------------------------------------------


@dataclass
class LibraryView:
    rows: list[list[Any]]  # source, pages, title, added, id
    thumbnails: list[GalleryItem]
    choices: list[tuple[str, str]]  # (label, document id) for the filter and delete menus
    summary: str


def library(service: PageRAG) -> LibraryView:
    docs = sorted(service.documents(), key=lambda d: d.source.lower())
    thumbs = []
    for d in docs:
        first = service.library.images.path(d.doc_id, 1)
        if first.is_file():
            thumbs.append((str(first), f"{d.source} · {d.pages} pages"))
    return LibraryView(
        rows=[[d.source, d.pages, d.title, d.ingested_at[:16], d.doc_id[:12]] for d in docs],
        thumbnails=thumbs,
        choices=[(f"{d.source} ({d.doc_id[:8]})", d.doc_id) for d in docs],
        summary=f"{_count(len(docs), 'document')}, {_count(sum(d.pages for d in docs), 'page')}",
    )


def upload(
    jobs: JobManager,
    files: Sequence[str | Path],
    on_progress: Callable[[dict[str, Any]], None] = lambda _job: None,
    poll: float = 0.2,
) -> dict[str, Any]:
    """Stage files dropped into the UI (Gradio's temporary copies, named as the user named
    them), run the ingestion job, report progress while it runs; returns the finished job."""
    folder = jobs.upload_folder()
    with ExitStack() as stack:
        named = [(display_name(Path(f).name), stack.enter_context(open(f, "rb"))) for f in files]
        reserve = jobs.service.settings.disk_reserve_mb
        staged, rejected = stage_files(named, folder, reserve_mb=reserve)
    job = jobs.submit_upload(staged, rejected, folder)
    while (view := jobs.get(job.id)) and view["state"] in ("queued", "running"):
        on_progress(view)
        time.sleep(poll)
    assert view is not None
    on_progress(view)
    return view


def job_report(job: dict[str, Any]) -> str:
    """A job's outcome in plain words (Markdown)."""
    lines = []
    if job["state"] == "failed" and job["message"]:
        lines.append(f"**Ingestion failed:** {job['message']}")
    lines.append(
        f"Added {_count(job['indexed_documents'], 'document')} "
        f"({_count(job['indexed_pages'], 'page')}); "
        f"{_count(job['skipped_documents'], 'file')} already in the library; "
        f"{_count(len(job['errors']), 'file')} could not be read."
    )
    for error in job["errors"]:
        lines.append(f"- not added: **{error['source']}**: {error['error']}")
    for warning in job["warnings"]:
        lines.append(f"- note: **{warning['source']}**: {warning['warning']}")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def folder_problems(jobs: JobManager) -> str:
    """How the ingestion of the start-up folder (`pagerag serve --docs`) went; uploads made
    in the UI show their own report."""
    lines = []
    for job in jobs.list():
        if job["kind"] != "folder":
            continue
        if job["state"] in ("queued", "running"):
            done, total = job["pages_done"], job["pages_total"]
            lines.append(f"Reading the start-up folder: {done}/{total} pages so far.")
        elif job["message"]:
            lines.append(f"Reading the start-up folder failed: {job['message']}")
        if job["errors"]:
            lines.append(f"{_count(len(job['errors']), 'file')} of the start-up folder:")
            lines += [f"- not added: **{e['source']}**: {e['error']}" for e in job["errors"]]
    return "\n".join(lines)


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
    return f"Deleted **{info.source or info.doc_id[:12]}** ({info.pages} pages)."


# -- status -------------------------------------------------------------------------------


def status(service: PageRAG, work: WorkQueue) -> str:
    info = service.info()
    queue = work.stats()
    mib = 1024 * 1024
    rows = [
        ("Retriever", f"{info.retriever_model} ({_loaded(info.retriever_loaded)})"),
        (
            "Generator",
            f"{info.generator_model} ({_loaded(info.generator_loaded)})",
        ),
        ("Device", f"{info.device} · {info.dtype}"),
        ("Index backend", info.backend),
        ("Documents", f"{info.documents} ({info.pending_documents} being ingested)"),
        ("Pages", info.pages),
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
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _loaded(flag: object) -> str:
    return "loaded" if flag else "not loaded yet"
