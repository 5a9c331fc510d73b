"""The web UI: `build_ui(service)` returns Gradio Blocks wired to the `PageRAG` service.

Building is separate from launching: `rag.server.app.create_app` mounts the Blocks into the server
at `/` (with `THEME` and `CSS`). On its own,
`build_ui(service).launch(allowed_paths=[str(settings.images_dir)], theme=THEME, css=CSS)` works
too (the gallery shows the stored page images). The work itself lives in `ui.actions`; this
module only lays out components and connects events.

Events that other programs may call (gradio_client, `/gradio_api/call/NAME`) are named: `ask`,
`search`, `upload`, `delete`, `documents` and `status`; the rest are the page's own and hidden
from the API (saving a document's title and tags too: the REST API's PATCH does that). Document
ids in `ask`, `search` and `delete` are checked on the server (a full id or a prefix of 4 or
more hex digits), so a fresh session needs no refresh first; `ask` and `search` take tags to
filter by last, so older clients that send none still work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from rag.config import SearchMode
from rag.server.jobs import JobManager
from rag.server.modelqueue import QueueFull, WorkQueue
from rag.service import PageRAG
from ui import actions

# System fonts only: the default theme would fetch web fonts from the internet.
THEME = gr.themes.Soft(
    primary_hue="indigo",
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
)
# Phone widths (issue 11, item 8): words and ids are never broken inside; a table too wide
# for the screen scrolls sideways instead; gallery captions wrap instead of being cut.
CSS = """
#documents th, #documents td, #status th, #status td {
  word-break: normal !important; overflow-wrap: break-word !important; hyphens: none;
}
#documents th, #documents td:nth-child(2), #documents td:nth-child(6), #status td:first-child {
  white-space: nowrap !important;
}
#status table { table-layout: auto; }
@media (max-width: 640px) {
  #thumbs .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
  #pages .thumbnail-item, #thumbs .thumbnail-item {
    aspect-ratio: auto !important; height: auto !important; display: flex;
    flex-direction: column; overflow: visible !important;
  }
  #pages .thumbnail-item > img { height: 220px !important; }
  #thumbs .thumbnail-item > img { height: 140px !important; }
  #pages .caption-label, #thumbs .caption-label {
    position: static !important; max-width: none !important; white-space: normal !important;
    overflow: visible !important; text-overflow: clip !important; border: 0 !important;
    overflow-wrap: break-word;
  }
}
"""
DOC_HEADERS = ["Source", "Pages", "Title", "Tags", "Added (UTC)", "Id"]
INTRO = (
    "## PageRAG\nAsk questions about your PDFs (charts, tables and scans too): the answer is "
    "read from the page images and cites them like [1]. Other programs can use the "
    "[REST API](/docs)."
)
PRIVATE = "private"  # events the page uses itself: not offered to API clients
POLL_SECONDS = 2.0  # the Library tab's refresh while an ingestion job runs
BANNER_SECONDS = 2.0  # the banner's refresh while a model loads or downloads


# What a UI the server mounts for a library checks before a change: raises a UserError naming
# the key needed unless the session (known by its login name, `gr.Request.username`) may do
# `action` ("uploading") there.
Access = Callable[[str | None, str], None]


def build_ui(
    service: PageRAG,
    *,
    jobs: JobManager | None = None,
    work: WorkQueue | None = None,
    access: Access | None = None,
    libraries_url: str | None = None,
) -> gr.Blocks:
    """The UI for `service`; uploads run through `jobs` and model work waits in `work` (the
    server's, when mounted there, so the UI and the API share one line and one job list).
    `access`: the session's rights in this library (None: one library, no keys).
    `libraries_url`: the server's page of the libraries this session may open."""
    settings = service.settings
    jobs = jobs or JobManager(service)
    work = work or WorkQueue(settings.queue_size, settings.request_timeout)
    # Gradio copies every image it shows into its cache: drop copies older than a day, hourly.
    with gr.Blocks(
        title="PageRAG", analytics_enabled=False, fill_width=True, delete_cache=(3600, 86400)
    ) as demo:
        intro = INTRO
        if libraries_url is not None:
            intro += f" Library: **{settings.library}** ([other libraries]({libraries_url}))."
        gr.Markdown(intro, elem_id="intro")
        # A model downloading (its progress, what works meanwhile) or unable to load (why, and
        # the setting to change); empty otherwise.
        banner = gr.Markdown(elem_id="banner", label="banner")
        banner_timer = gr.Timer(BANNER_SECONDS, active=False)
        with gr.Tabs():
            with gr.Tab("Ask", id="ask"):
                ask = _ask_tab(settings.ask_pages, settings.search_mode)
            with gr.Tab("Library", id="library"):
                lib = _library_tab()
            with gr.Tab("Status", id="status"):
                status = gr.Markdown(elem_id="status", label="status")
                refresh_status = gr.Button("Refresh", size="sm")
        _wire_ask(service, work, ask)
        _wire_library(demo, service, jobs, lib, ask["doc_filter"], ask["tag_filter"], access)
        refresh_status.click(lambda: actions.status(service, work), None, status, api_name="status")
        demo.load(lambda: actions.status(service, work), None, status, api_visibility=PRIVATE)
        _wire_banner(demo, service, banner, banner_timer, [ask, lib])
    # Gradio's own queue lets every model event through to the service's shared line, which
    # decides (for the UI and the API alike) who waits and who is turned away.
    demo.queue(default_concurrency_limit=settings.queue_size + 1)
    # Gradio keeps every session's updated components (10,000 sessions by default; a launch()
    # argument, read from the Blocks when they are mounted): a bound on the server's memory.
    demo.state_session_capacity = settings.ui_sessions
    return demo


def _wire_banner(
    demo: gr.Blocks,
    service: PageRAG,
    banner: gr.Markdown,
    timer: gr.Timer,
    tabs: list[dict[str, Any]],
) -> None:
    """The banner is filled when the page opens and refreshed while a model loads or
    downloads; asking, searching or adding documents (which may start a load) restarts it."""
    quiet: dict[str, Any] = {"api_visibility": PRIVATE, "show_progress": "hidden"}

    def update() -> tuple[Any, Any]:
        return actions.banner(service), gr.Timer(active=actions.banner_busy(service))

    demo.load(update, None, [banner, timer], **quiet)
    timer.tick(update, None, [banner, timer], **quiet)
    ask, lib = tabs
    for trigger in (ask["send"].click, ask["question"].submit, ask["find"].click, lib["add"].click):
        trigger(lambda: gr.Timer(active=True), None, timer, **quiet)


def _refusal(access: Access | None, request: gr.Request | None, action: str) -> str | None:
    """Why this session may not change the library (`action`: "uploading"), shown as a toast
    too; None when it may."""
    if access is None:
        return None
    try:
        access(getattr(request, "username", None), action)
    except Exception as exc:
        return _warn(exc)
    return None


def _warn(exc: Exception) -> str:
    """A user error's message, shown as a toast too; re-raises anything else (a bug)."""
    message = actions.problem(exc)
    if message is None:
        raise exc
    gr.Warning(message)
    return message


# -- Ask ----------------------------------------------------------------------------------


def _ask_tab(ask_pages: int, search_mode: str) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            # Answers are shown as plain text: a page can steer what the model writes, so an
            # answer must not be able to show a remote image (a request to a stranger's
            # server, leaking the reader's address), a link or any HTML. No Markdown, no
            # LaTeX, no custom tags; and `actions.shown` escapes `<`, because even without
            # Markdown the Chatbot parses a message as HTML.
            c["chat"] = gr.Chatbot(
                label="Conversation",
                height=460,
                elem_id="chat",
                buttons=["copy"],
                placeholder="Ask a question about the documents in the library.",
                render_markdown=False,
                sanitize_html=True,
                latex_delimiters=[],
                allow_tags=False,
            )
            with gr.Row():
                c["question"] = gr.Textbox(
                    placeholder="e.g. What was the total in November 2015?",
                    label="Question",
                    show_label=False,
                    scale=5,
                    min_width=180,
                    elem_id="question",
                )
                c["send"] = gr.Button(
                    "Ask", variant="primary", scale=1, min_width=70, elem_id="ask-button"
                )
                c["stop"] = gr.Button(
                    "Stop",
                    variant="stop",
                    scale=1,
                    min_width=70,
                    interactive=False,
                    elem_id="stop-button",
                )
            c["note"] = gr.Markdown(elem_id="ask-note", label="note")
            c["chips"] = gr.Radio(
                label="Sources (★ cited in the answer): click one to see its page",
                choices=[],
                elem_id="citations",
            )
            with gr.Row():
                c["find"] = gr.Button("Find pages only", size="sm", elem_id="find-button")
                c["new"] = gr.Button("New conversation", size="sm")
        with gr.Column(scale=2):
            c["show_map"] = gr.Checkbox(
                label="Show similarity maps (where the question matched each page)",
                elem_id="show-map",
            )
            c["pages"] = gr.Gallery(
                label="Retrieved pages",
                columns=2,
                height=520,
                object_fit="contain",
                fit_columns=False,
                elem_id="pages",
            )
            with gr.Accordion("Settings", open=False):
                c["k"] = gr.Slider(1, 10, value=ask_pages, step=1, label="Pages to read")
                c["mode"] = gr.Radio(
                    choices=[
                        ("Hybrid (pictures and text)", "hybrid"),
                        ("Visual (page pictures)", "visual"),
                        ("Text layer only", "text"),
                    ],
                    value=search_mode,
                    label="How pages are found",
                )
                # Custom values: an API client names documents by id without loading the
                # menu first; the server checks them (`actions.resolve_docs`).
                c["doc_filter"] = gr.Dropdown(
                    choices=[],
                    multiselect=True,
                    allow_custom_value=True,
                    label="Only these documents (empty: all)",
                )
                c["tag_filter"] = gr.Dropdown(
                    choices=[],
                    multiselect=True,
                    allow_custom_value=True,
                    label="Only pages with any of these tags (empty: all)",
                    elem_id="tag-filter",
                )
    # The conversation as shown lives on the server: the Chatbot is only ever an output, so an
    # event cannot hand the server a chat history of its own (with file objects in it).
    c["history"] = gr.State([])
    c["turns"] = gr.State([])
    c["last"] = gr.State({})  # {"question": ..., "pages": [...]}: for the map toggle
    c["hits"] = gr.JSON(visible=False, label="hits")  # the search endpoint's answer
    return c


def _wire_ask(service: PageRAG, work: WorkQueue, c: dict[str, Any]) -> None:
    outputs = [
        c["chat"],
        c["history"],
        c["turns"],
        c["last"],
        c["pages"],
        c["chips"],
        c["note"],
        c["question"],
    ]

    def on_ask(
        question: str,
        chat: list,
        turns: list,
        k: float,
        docs: list | None,
        show_map: bool,
        mode: SearchMode,
        tags: list | None,
    ) -> Iterator[tuple[Any, ...]]:
        if not question or not question.strip():
            gr.Warning("Type a question first.")
            return
        sent = -1
        steps = actions.ask(
            service,
            question,
            chat,
            turns,
            int(k),
            docs or [],
            show_map,
            mode,
            work=work,
            tags=tags or [],
        )
        for view in steps:
            if view.revision != sent:  # pages, chips or note changed: send everything
                sent = view.revision
                last = {"question": view.question, "pages": view.pages}
                chips = gr.Radio(choices=view.chips, value=None)
                yield (view.chat, view.chat, view.turns, last, view.gallery, chips, view.note, "")
            else:  # while text streams in, only the chat changes
                yield (view.chat, view.chat, *(gr.skip() for _ in outputs[2:]))

    inputs = [
        c["question"],
        c["history"],
        c["turns"],
        c["k"],
        c["doc_filter"],
        c["show_map"],
        c["mode"],
        c["tag_filter"],
    ]
    stop_on = (lambda: gr.Button(interactive=True), None, c["stop"])
    stop_off = (lambda: gr.Button(interactive=False), None, c["stop"])
    quiet: dict[str, Any] = {"api_visibility": PRIVATE, "show_progress": "hidden"}
    # Stop is enabled, then the answer runs, then Stop is disabled again: one chain, in order.
    asked = [
        c["send"].click(*stop_on, **quiet).then(on_ask, inputs, outputs, api_name="ask"),
        c["question"]
        .submit(*stop_on, **quiet)
        .then(on_ask, inputs, outputs, api_visibility=PRIVATE),
    ]
    for event in asked:
        event.then(*stop_off, **quiet)

    def on_stop() -> tuple[Any, ...]:
        # Cancelling closes on_ask's generator: the stream closes, the generation stops and
        # the model is free. The partial answer stays in view (and out of the model's memory
        # of the conversation).
        return "Stopped: the rest of the answer was not written.", gr.Button(interactive=False)

    c["stop"].click(on_stop, None, [c["note"], c["stop"]], cancels=asked, api_visibility=PRIVATE)

    def on_search(
        question: str, k: float, mode: SearchMode, docs: list | None, tags: list | None
    ) -> Any:
        try:
            return actions.search(
                service, question, int(k), mode, docs or [], work=work, tags=tags or []
            )
        except Exception as exc:
            raise gr.Error(_warn(exc)) from exc

    def show_hits(question: str, hits: list | None) -> tuple[Any, ...]:
        view = actions.search_view(service, question, hits or [])
        last = {"question": view.question, "pages": view.pages}
        return last, view.gallery, gr.Radio(choices=view.chips, value=None), view.note

    c["find"].click(
        on_search,
        [c["question"], c["k"], c["mode"], c["doc_filter"], c["tag_filter"]],
        c["hits"],
        api_name="search",
    ).success(
        show_hits,
        [c["question"], c["hits"]],
        [c["last"], c["pages"], c["chips"], c["note"]],
        api_visibility=PRIVATE,
    )

    def on_chip(index: int | None) -> Any:
        return gr.Gallery(selected_index=index) if index is not None else gr.skip()

    c["chips"].input(on_chip, c["chips"], c["pages"], api_visibility=PRIVATE)

    def on_map(show: bool, last: dict) -> Any:
        if not last.get("pages"):
            return gr.skip()
        try:
            return actions.gallery(service, last["question"], last["pages"], show, work=work)
        except Exception as exc:
            _warn(exc)
            return gr.skip()

    c["show_map"].input(on_map, [c["show_map"], c["last"]], c["pages"], api_visibility=PRIVATE)

    def on_new() -> tuple[Any, ...]:
        return [], [], [], {}, [], gr.Radio(choices=[], value=None), "", ""

    c["new"].click(on_new, None, outputs, api_visibility=PRIVATE)


# -- Library ------------------------------------------------------------------------------


def _library_tab() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=280):
            c["files"] = gr.File(
                file_count="multiple",
                label="Drop PDFs or images here (or click to choose)",
                elem_id="upload",
            )
            c["password"] = gr.Textbox(
                type="password",
                label="Password (only for encrypted PDFs; used for the files added with it)",
                max_lines=1,
                elem_id="upload-password",
            )
            c["add"] = gr.Button("Add to library", variant="primary", elem_id="add-button")
            # The one progress display of an upload: stage, pages, files, the file.
            c["progress"] = gr.Markdown(elem_id="upload-status", label="progress")
            c["report"] = gr.Markdown(elem_id="upload-report", label="report")
            c["problems"] = gr.Markdown(elem_id="problems", label="start-up folder")
        with gr.Column(scale=3, min_width=280):
            c["summary"] = gr.Markdown(elem_id="library-summary", label="summary")
            c["table"] = gr.Dataframe(
                headers=DOC_HEADERS,
                interactive=False,
                wrap=True,
                # Fixed widths: a phone scrolls the table sideways instead of squeezing
                # "Pages" to a letter per line.
                column_widths=["220px", "72px", "170px", "150px", "150px", "130px"],
                label="Documents",
                elem_id="documents",
            )
            c["thumbs"] = gr.Gallery(
                label="First pages",
                columns=6,
                height=260,
                object_fit="contain",
                fit_columns=False,
                elem_id="thumbs",
            )
            with gr.Row():
                c["to_delete"] = gr.Dropdown(
                    choices=[],
                    allow_custom_value=True,
                    label="Document (click its row in the table, or choose it here)",
                    scale=3,
                    min_width=180,
                    elem_id="to-delete",
                )
                c["delete"] = gr.Button("Delete…", variant="stop", scale=1, min_width=90)
                c["refresh"] = gr.Button("Refresh", scale=1, min_width=90)
            with gr.Group(visible=False, elem_id="delete-confirm") as c["confirm"]:
                c["confirm_text"] = gr.Markdown(elem_id="delete-confirm-text")
                with gr.Row():
                    c["yes"] = gr.Button("Yes, delete it", variant="stop", elem_id="delete-yes")
                    c["no"] = gr.Button("Cancel", elem_id="delete-no")
            # For the document chosen above; search filters by the tags as soon as it is saved.
            with gr.Accordion("Edit title and tags", open=False, elem_id="edit-document") as c[
                "edit"
            ]:
                c["title"] = gr.Textbox(label="Title", max_lines=1, elem_id="edit-title")
                c["tags"] = gr.Textbox(
                    label="Tags (comma-separated; empty: none)",
                    placeholder="e.g. finance, 2015",
                    max_lines=1,
                    elem_id="edit-tags",
                )
                c["save"] = gr.Button("Save", variant="primary", elem_id="edit-save")
                c["edit_result"] = gr.Markdown(elem_id="edit-result", label="edit result")
            c["timer"] = gr.Timer(POLL_SECONDS, active=False)
            c["seen"] = gr.State(())  # the listing last sent: unchanged ones are skipped
    return c


def _wire_library(
    demo: gr.Blocks,
    service: PageRAG,
    jobs: JobManager,
    c: dict[str, Any],
    doc_filter: gr.Dropdown,
    tag_filter: gr.Dropdown,
    access: Access | None = None,
) -> None:
    listing = [
        c["summary"],
        c["table"],
        c["thumbs"],
        c["to_delete"],
        doc_filter,
        tag_filter,
        c["problems"],
        c["seen"],
    ]
    quiet: dict[str, Any] = {"api_visibility": PRIVATE, "show_progress": "hidden"}

    def refresh(
        to_delete: str | None = None,
        selected: list | None = None,
        tags: list | None = None,
        seen: tuple = (),
        force: bool = True,
    ) -> tuple[Any, ...]:
        """The library's components; choices made in the menus are kept while their document
        (or tag) is still there. Unless `force`, an unchanged listing is not sent again (the
        timer's refresh must not reset what the user is doing)."""
        view = actions.library(service)
        problems = actions.folder_problems(jobs)
        signature = tuple(map(tuple, view.rows))
        if not force and signature == tuple(seen):
            return (*(gr.skip() for _ in listing[:-2]), problems, gr.skip())
        ids = {doc_id for _, doc_id in view.choices}
        kept = [d for d in selected or [] if d in ids]
        return (
            view.summary,
            {"data": view.rows, "headers": DOC_HEADERS},
            view.thumbnails,
            gr.Dropdown(choices=view.choices, value=to_delete if to_delete in ids else None),
            gr.Dropdown(choices=view.choices, value=kept),
            gr.Dropdown(choices=view.tags, value=[t for t in tags or [] if t in view.tags]),
            problems,
            signature,
        )

    menus = [c["to_delete"], doc_filter, tag_filter, c["seen"]]

    def on_add(
        files: list[str] | None, password: str | None, request: gr.Request
    ) -> Iterator[tuple[Any, ...]]:
        """The upload's progress, then its report (the library stays usable meanwhile)."""
        if why := _refusal(access, request, "uploading"):
            yield "", gr.skip(), gr.skip(), f"**Not added:** {why}"
            return
        if not files:
            gr.Warning("Drop or choose some PDFs first.")
            return
        yield "**Adding: Reading the files…**", gr.skip(), gr.skip(), ""
        try:
            job = actions.start_upload(jobs, files, password or "")
        except QueueFull as exc:  # too many uploads waiting already
            yield "", gr.skip(), gr.skip(), f"**Not added:** {actions.ui_words(str(exc))}"
            return
        except Exception as exc:
            yield "", gr.skip(), gr.skip(), f"**Not added:** {_warn(exc)}"
            return
        for job in actions.follow(jobs, job.id, poll=0.3):  # noqa: B020 - newer each time
            if job.running:
                yield actions.progress_text(job), gr.skip(), gr.skip(), gr.skip()
        yield "", None, "", actions.job_report(job)

    upload = c["add"].click(
        on_add,
        [c["files"], c["password"]],
        [c["progress"], c["files"], c["password"], c["report"]],
        api_name="upload",
        show_progress="hidden",
    )
    upload.then(refresh, menus, listing, **quiet)
    # Refresh the listing while the job runs (documents appear as they are stored).
    c["add"].click(lambda: gr.Timer(active=True), None, c["timer"], **quiet)

    def on_tick(
        to_delete: str | None, selected: list | None, tags: list | None, seen: tuple
    ) -> tuple[Any, ...]:
        still = actions.any_running(jobs)
        return (*refresh(to_delete, selected, tags, seen, force=False), gr.Timer(active=still))

    c["timer"].tick(on_tick, menus, [*listing, c["timer"]], **quiet)

    def on_load(to_delete: str | None, selected: list | None, tags: list | None) -> tuple[Any, ...]:
        return (*refresh(to_delete, selected, tags), gr.Timer(active=actions.any_running(jobs)))

    # Fill the library (and the Ask tab's document and tag filters) whenever a browser opens
    # the page; while a start-up ingestion runs, the timer keeps it current.
    demo.load(on_load, menus[:3], [*listing, c["timer"]], **quiet)
    c["refresh"].click(refresh, menus, listing, **quiet)

    def documents() -> list[dict[str, Any]]:
        """The library: doc_id, source, title, pages, tags, added (UTC), sorted by source."""
        return actions.documents(service)

    gr.api(documents, api_name="documents")

    # Deleting asks first, naming what goes; API clients call `delete` directly.
    def on_ask_delete(doc_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        if why := _refusal(access, request, "deleting a document"):
            return gr.Group(visible=False), "", f"**Not deleted:** {why}"
        try:
            text = actions.delete_prompt(service, doc_id)
        except Exception as exc:
            return gr.Group(visible=False), "", _warn(exc)
        return gr.Group(visible=True), text, gr.skip()

    confirm = [c["confirm"], c["confirm_text"], c["report"]]
    c["delete"].click(on_ask_delete, c["to_delete"], confirm, **quiet)
    hide = (lambda: (gr.Group(visible=False), ""), None, confirm[:2])
    c["no"].click(*hide, **quiet)
    c["to_delete"].change(*hide, **quiet)

    def on_delete(doc_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        if why := _refusal(access, request, "deleting a document"):
            return f"**Not deleted:** {why}", gr.Group(visible=False)
        return actions.delete(service, doc_id), gr.Group(visible=False)

    c["yes"].click(on_delete, c["to_delete"], [c["report"], c["confirm"]], api_name="delete").then(
        refresh, menus, listing, **quiet
    )

    # A click on a table row chooses its document (for editing and deleting).
    def on_row(event: gr.SelectData) -> Any:
        doc_id = actions.row_document(service, event.row_value)
        return doc_id if doc_id else gr.skip()

    c["table"].select(on_row, None, c["to_delete"], **quiet)
    fields = [c["title"], c["tags"]]

    def on_choose(doc_id: str | None) -> tuple[Any, ...]:
        return (*actions.document_fields(service, doc_id), "")

    c["to_delete"].change(on_choose, c["to_delete"], [*fields, c["edit_result"]], **quiet)

    def on_save(doc_id: str | None, title: str, tags: str, request: gr.Request) -> tuple[Any, ...]:
        if why := _refusal(access, request, "editing a document"):
            return f"**Not saved:** {why}", gr.skip(), gr.skip()
        edit = actions.edit_document(service, doc_id, title, tags)
        return edit.message, edit.title, edit.tags

    c["save"].click(on_save, [c["to_delete"], *fields], [c["edit_result"], *fields], **quiet).then(
        refresh, menus, listing, **quiet
    )
