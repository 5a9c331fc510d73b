"""The web UI without a browser: `build_ui` wiring and the actions its events run."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from rag.models.download import DOWNLOADS
from rag.server.jobs import JobInfo, JobManager
from rag.server.modelqueue import WorkQueue
from rag.service import PageRAG
from rag.types import SearchFilter
from tests.pdfs import make_pdf
from tests.serving import make_library
from ui import actions
from ui.app import build_ui

WORK = WorkQueue(max_waiting=16, timeout=120.0)  # the line a server would hand the UI


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service(
        "ui",
        new_tokens=16,
    )
    svc.ingest([make_library(tmp_path_factory.mktemp("ui-library"))])
    yield svc
    svc.close()


def test_build_ui_builds_without_launching(service: PageRAG) -> None:
    demo = build_ui(service)
    assert isinstance(demo, gr.Blocks) and not demo.is_running
    tabs = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == ["Ask", "Library", "Status"]
    ids = {b.elem_id for b in demo.blocks.values()}
    assert {"chat", "question", "pages", "citations", "show-map", "upload", "documents"} <= ids
    assert {"tag-filter", "edit-title", "edit-tags", "edit-save", "edit-result"} <= ids
    assert "banner" in ids


def test_ask_streams_the_answer_then_shows_pages_and_chips(service: PageRAG) -> None:
    texts = []
    for view in actions.ask(service, "Total 2015?", [], [], 2, [], False, work=WORK):
        texts.append(view.chat[-1]["content"])  # the same view object, updated step by step
    assert texts[0] == ""  # the question shows at once, before any model work
    streamed = [t for t in texts if t]
    assert len(set(streamed)) >= 2  # the text grew in several steps
    assert all(b.startswith(a) for a, b in itertools.pairwise(streamed))
    answer = texts[-1]
    assert view.chat == [
        {"role": "user", "content": "Total 2015?"},
        {"role": "assistant", "content": answer},
    ]
    assert len(view.gallery) == 2 and [i for _, i in view.chips] == [0, 1]
    image, caption = view.gallery[0]
    assert Path(image).is_file() and caption.startswith("[1] ") and "score" in caption
    assert view.turns == [("Total 2015?", answer)]
    assert "retrieval" in view.note
    assert [p["label"] for p in view.pages] == [1, 2] and view.question == "Total 2015?"


def test_pages_show_when_retrieval_ends_before_the_text(service: PageRAG) -> None:
    seen = [
        (view.chat[-1]["content"], len(view.gallery), view.note)
        for view in actions.ask(service, "Total 2015?", [], [], 2, [], False, work=WORK)
    ]
    assert seen[0] == ("", 0, "Finding the pages…")
    pages = next(i for i, (_, shown, _) in enumerate(seen) if shown)
    text = next(i for i, (words, _, _) in enumerate(seen) if words)
    assert pages < text and seen[pages] == ("", 2, "Reading the 2 pages…")


def test_closing_the_answer_stops_it_and_frees_the_model(service: PageRAG) -> None:
    steps = actions.ask(service, "Total 2015?", [], [], 2, [], False, work=WORK)
    for view in steps:
        if view.chat[-1]["content"]:  # the first words: Stop is pressed here
            break
    steps.close()
    assert WORK.stats()["running"] == 0
    assert service._model_lock.acquire(timeout=5)  # the generation let the model go
    service._model_lock.release()


def test_follow_up_questions_send_the_history(
    service: PageRAG, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    original = service.ask_stream

    def spy(question: str, k: Any, filters: Any, history: Any, **kwargs: Any) -> Any:
        seen.append(list(history))
        return original(question, k, filters, history, **kwargs)

    monkeypatch.setattr(service, "ask_stream", spy)
    first = list(actions.ask(service, "Revenue?", [], [], 1, [], False, work=WORK))[-1]
    second = list(
        actions.ask(service, "And costs?", first.chat, first.turns, 1, [], False, work=WORK)
    )[-1]
    assert seen == [[], [("Revenue?", first.turns[0][1])]]
    assert len(second.chat) == 4 and len(second.turns) == 2


def test_document_filter_and_similarity_maps(service: PageRAG) -> None:
    [minutes] = [d.doc_id for d in service.documents() if d.source == "minutes.pdf"]
    final = list(actions.ask(service, "Budget", [], [], 5, [minutes], True, "visual", work=WORK))[
        -1
    ]
    assert {p["source"] for p in final.pages} == {"minutes.pdf"} and len(final.pages) == 2
    for (image, caption), page in zip(final.gallery, final.pages, strict=True):
        assert isinstance(image, Image.Image) and caption.endswith("similarity map")
        with Image.open(page["image"]) as original:
            assert image.size == original.size
    plain = actions.gallery(service, final.question, final.pages, False, work=WORK)
    assert [i for i, _ in plain] == [p["image"] for p in final.pages]
    maps = actions.gallery(
        service, final.question, final.pages, True, work=WORK
    )  # takes its own ticket
    assert all(isinstance(i, Image.Image) for i, _ in maps)
    assert WORK.stats()["running"] == 0


def test_a_busy_server_says_so_in_the_chat(service: PageRAG) -> None:
    work = WorkQueue(max_waiting=0, timeout=1.0)
    with work.acquire():  # somebody else is using the model
        final = list(actions.ask(service, "Total?", [], [], 2, [], False, work=work))[-1]
    assert final.chat[-1]["content"].startswith("Not answered:")
    assert "busy" in final.note
    assert final.turns == [] and final.gallery == []


def test_upload_reports_progress_and_plain_errors_then_delete(
    service: PageRAG, tmp_path: Path, corpus: Path
) -> None:
    jobs = JobManager(service)
    drop = tmp_path / "gradio-upload"  # Gradio hands over temporary copies, named as sent
    good = make_pdf(drop / "a" / "board minutes.pdf", ["Board", "Votes", "Motions"])
    empty = drop / "b" / "empty.pdf"
    empty.parent.mkdir(parents=True)
    empty.write_bytes((corpus / "empty.pdf").read_bytes())
    updates: list[JobInfo] = []
    job = actions.upload(jobs, [good, empty], updates.append, poll=0.01)
    assert job.state == "done" and updates[-1] == job
    assert any(u.pages_total == 3 for u in updates)
    # Every update while it ran has a stage label, from the first one on.
    labels = [actions.stage_label(u) for u in updates if u.running]
    assert labels and all(labels)
    report = actions.job_report(job)
    assert "Added 1 document (3 pages)" in report
    assert "**empty.pdf**: the file is empty" in report and "1 file could not be read" in report
    assert actions.folder_problems(jobs) == ""  # uploads report on their own
    folder = jobs.submit_paths([empty, tmp_path / "missing.pdf"])
    jobs.wait(folder.id)
    problems = actions.folder_problems(jobs)
    assert "2 files of the start-up folder" in problems and "**empty.pdf**" in problems
    view = actions.library(service)
    row = next(r for r in view.rows if r[0] == "board minutes.pdf")
    assert row[1] == 3 and len(row[-1]) == actions.SHORT_ID
    assert any(c.startswith("board minutes.pdf") for _, c in view.thumbnails)
    doc_id = next(v for label, v in view.choices if label.startswith("board minutes.pdf"))
    prompt = actions.delete_prompt(service, doc_id)
    assert "Delete board minutes.pdf?" in prompt and "3 pages" in prompt
    assert doc_id[:12] in prompt
    assert "board minutes.pdf" in {r[0] for r in actions.library(service).rows}  # not yet
    assert "Deleted **board minutes.pdf** (3 pages)" in actions.delete(service, doc_id)
    assert all(r[0] != "board minutes.pdf" for r in actions.library(service).rows)
    gone = actions.delete(service, doc_id)
    assert "no document" in gone and "the Library tab lists them" in gone
    assert "pagerag" not in gone
    assert "Choose a document" in actions.delete(service, None)
    jobs.close()


def test_edit_title_and_tags_then_search_by_the_new_tag(service: PageRAG, tmp_path: Path) -> None:
    service.ingest([make_pdf(tmp_path / "in" / "agenda.pdf", ["Budget agenda for the board"])])
    row = next(r for r in actions.library(service).rows if r[0] == "agenda.pdf")
    doc_id = actions.row_document(service, row)  # a click on its table row chooses it
    assert doc_id and len(doc_id) == 64
    title, tags = actions.document_fields(service, doc_id)
    assert title and tags == ""  # the PDF's own title, no tags yet
    try:
        edit = actions.edit_document(service, doc_id, "  Board  agenda ", "board, 2015 ,, board")
        assert edit.saved and edit.title == "Board agenda" and edit.tags == "2015, board"
        assert edit.message == "Saved **agenda.pdf**: title “Board agenda”, tags: 2015, board."
        view = actions.library(service)
        row = next(r for r in view.rows if r[0] == "agenda.pdf")
        assert row[2:4] == ["Board agenda", "2015, board"]
        assert {"2015", "board"} <= set(view.tags)  # the Ask tab's tag filter offers them
        assert actions.document_fields(service, doc_id) == ("Board agenda", "2015, board")
        found = actions.search(service, "Budget", 5, None, work=WORK, tags=["board"])
        assert [h["source"] for h in found] == ["agenda.pdf"]
        assert found[0]["title"] == "Board agenda"
        final = list(
            actions.ask(service, "Budget?", [], [], 3, [], False, work=WORK, tags=["2015"])
        )
        assert {p["source"] for p in final[-1].pages} == {"agenda.pdf"}
        assert actions.search(service, "Budget", 5, None, work=WORK, tags=["nowhere"]) == []

        # Refused: the message says why, and nothing changes.
        for bad_title, bad_tags in [("", "x"), ("   ", "x"), ("t" * 301, "x"), ("ok", "y" * 65)]:
            refused = actions.edit_document(service, doc_id, bad_title, bad_tags)
            assert not refused.saved and refused.message.startswith("**Not saved:** ")
            assert (refused.title, refused.tags) == (bad_title, bad_tags)  # kept as typed
            words = "a title needs 1 to 300" if bad_title != "ok" else "at most 32 tags of 1 to 64"
            assert words in refused.message, refused.message
            assert actions.document_fields(service, doc_id) == ("Board agenda", "2015, board")
        assert "choose a document first" in actions.edit_document(service, None, "T", "").message
        gone = actions.edit_document(service, "abcdef12", "T", "")
        assert "no document with id" in gone.message and "Library tab" in gone.message

        cleared = actions.edit_document(service, doc_id[:8], "Board agenda", "")  # a prefix
        assert cleared.saved and cleared.tags == "" and cleared.message.endswith("tags: none.")
        assert actions.search(service, "Budget", 5, None, work=WORK, tags=["board"]) == []
    finally:
        service.delete(doc_id)
    assert actions.row_document(service, row) is None  # deleted: the row chooses nothing
    assert actions.document_fields(service, doc_id) == ("", "")


def test_progress_text_names_the_stage_and_counts() -> None:
    job = JobInfo(id="j", kind="upload", state="running", stage="loading the model")
    assert actions.progress_text(job).startswith("**Adding: Loading the page model")
    job = JobInfo(
        id="j",
        kind="upload",
        state="running",
        stage="embedding",
        files_total=2,
        pages_total=10,
        pages_done=5,
        current="a.pdf",
    )
    text = actions.progress_text(job)
    assert "Embedding pages" in text and "5/10 pages" in text and "0/2 files" in text
    assert "a.pdf" in text
    assert actions.stage_label(JobInfo(id="j", kind="upload")) == (
        "Waiting for the ingestion ahead of it"
    )


def test_an_encrypted_pdf_is_opened_with_the_password_given(
    service: PageRAG, tmp_path: Path
) -> None:
    from reportlab.lib.pdfencrypt import StandardEncryption
    from reportlab.pdfgen import canvas

    path = tmp_path / "drop" / "locked.pdf"
    path.parent.mkdir(parents=True)
    pdf = canvas.Canvas(str(path), encrypt=StandardEncryption("s3cret", ownerPassword="o"))
    pdf.drawString(72, 700, "secret quarterly figures")
    pdf.showPage()
    pdf.save()
    jobs = JobManager(service)
    try:
        refused = actions.upload(jobs, [path], poll=0.01)
        report = actions.job_report(refused)
        assert "encrypted" in report and "Password field" in report
        assert "--password" not in report
        opened = actions.upload(jobs, [path], poll=0.01, password="s3cret")
        assert "Added 1 document (1 page)" in actions.job_report(opened)
    finally:
        jobs.close()
    data = service.settings.manifest_path.parent
    stored = b"".join(f.read_bytes() for f in data.glob(service.settings.manifest_path.name + "*"))
    assert b"s3cret" not in stored  # the job records never keep a password
    [doc] = [d for d in service.documents() if d.source == "locked.pdf"]
    service.delete(doc.doc_id)


def test_cli_advice_is_replaced_by_what_to_do_in_the_ui(service: PageRAG) -> None:
    from ingest.render import _pdfium_reason

    encrypted = actions.ui_words(_pdfium_reason(Exception("Incorrect password error")))
    assert "`" not in encrypted and "Password field" in encrypted
    try:
        service.resolve("0000")
    except Exception as exc:
        message = actions.problem(exc)
    assert message is not None and "pagerag" not in message and "Library tab" in message
    nothing = service.ask("q", filters=SearchFilter(doc_ids=("0" * 64,)))  # the filter's advice
    assert "pagerag" not in actions.ui_words(nothing.text)


def test_status_lists_models_index_and_queue(service: PageRAG) -> None:
    text = actions.status(service, WORK)
    for words in ("Retriever", "Generator", "Device", "qdrant-edge", "Pages", "Model queue"):
        assert words in text


def test_the_banner_shows_a_download_and_what_works_meanwhile(service: PageRAG) -> None:
    assert actions.banner(service) == ""  # both models loaded, nothing downloading
    try:
        with DOWNLOADS.track("org/big-model", "ColQwen2") as progress:
            progress(total=4_400_000_000, unit="B", disable=True).update(1_100_000_000)
            text = actions.banner(service)
            status = actions.status(service, WORK)
            assert actions.banner_busy(service)
    finally:
        DOWNLOADS.forget("org/big-model")
    assert text.startswith("**Downloading the page model** (org/big-model) from the Hugging")
    assert "1.10 GB of 4.40 GB (25%)" in text and "text search works" in text
    assert "Text layer only" in text and "pagerag" not in text
    assert "| Download | org/big-model: 1.10 GB of 4.40 GB" in status
    assert actions.banner(service) == "" and not actions.banner_busy(service)
