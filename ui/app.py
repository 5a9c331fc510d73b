"""The web UI: `build_ui(service)` returns Gradio Blocks wired to the `PageRAG` service.

Building is separate from launching: `rag.server.app.create_app` mounts the Blocks into the server
at `/`. On its own, `build_ui(service).launch(allowed_paths=[str(settings.images_dir)])` works
too (the gallery shows the stored page images). The work itself lives in `ui.actions`; this
module only lays out components and connects events.
"""

from __future__ import annotations

from collections.abc import Iterator
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
DOC_HEADERS = ["Source", "Pages", "Title", "Added (UTC)", "Id"]
INTRO = (
    "## PageRAG\nAsk questions about your PDFs (charts, tables and scans too): the answer is "
    "read from the page images and cites them like [1]. Other programs can use the "
    "[REST API](/docs)."
)


def build_ui(
    service: PageRAG, *, jobs: JobManager | None = None, work: WorkQueue | None = None
) -> gr.Blocks:
    """The UI for `service`; uploads run through `jobs` and model work waits in `work` (the
    server's, when mounted there, so the UI and the API share one line and one job list)."""
    settings = service.settings
    jobs = jobs or JobManager(service)
    work = work or WorkQueue(settings.queue_size, settings.request_timeout)
    # Gradio copies every image it shows into its cache: drop copies older than a day, hourly.
    with gr.Blocks(
        title="PageRAG", analytics_enabled=False, fill_width=True, delete_cache=(3600, 86400)
    ) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Ask", id="ask"):
                ask = _ask_tab(settings.ask_pages, settings.search_mode)
            with gr.Tab("Library", id="library"):
                lib = _library_tab()
            with gr.Tab("Status", id="status"):
                status = gr.Markdown(elem_id="status")
                refresh_status = gr.Button("Refresh", size="sm")
        _wire_ask(service, work, ask)
        _wire_library(demo, service, jobs, lib, ask["doc_filter"])
        refresh_status.click(lambda: actions.status(service, work), None, status)
        demo.load(lambda: actions.status(service, work), None, status)
    # Gradio's own queue lets every model event through to the service's shared line, which
    # decides (for the UI and the API alike) who waits and who is turned away.
    demo.queue(default_concurrency_limit=settings.queue_size + 1)
    # Gradio keeps every session's updated components (10,000 sessions by default; a launch()
    # argument, read from the Blocks when they are mounted): a bound on the server's memory.
    demo.state_session_capacity = settings.ui_sessions
    return demo


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
                    show_label=False,
                    scale=5,
                    elem_id="question",
                )
                c["send"] = gr.Button("Ask", variant="primary", scale=1, elem_id="ask-button")
            c["chips"] = gr.Radio(
                label="Sources (★ cited in the answer): click one to see its page",
                choices=[],
                elem_id="citations",
            )
            c["note"] = gr.Markdown(elem_id="ask-note")
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
                c["doc_filter"] = gr.Dropdown(
                    choices=[], multiselect=True, label="Only these documents (empty: all)"
                )
    # The conversation as shown lives on the server: the Chatbot is only ever an output, so an
    # event cannot hand the server a chat history of its own (with file objects in it).
    c["history"] = gr.State([])
    c["turns"] = gr.State([])
    c["last"] = gr.State({})  # {"question": ..., "pages": [...]}: for the map toggle
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
    ) -> Iterator[tuple[Any, ...]]:
        if not question or not question.strip():
            gr.Warning("Type a question first.")
            return
        cleared = False
        steps = actions.ask(
            service, question, chat, turns, int(k), docs or [], show_map, mode, work=work
        )
        for view in steps:
            if view.pages or view.note or not cleared:
                cleared = True
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
    ]
    c["send"].click(on_ask, inputs, outputs)
    c["question"].submit(on_ask, inputs, outputs)

    def on_chip(index: int | None) -> Any:
        return gr.Gallery(selected_index=index) if index is not None else gr.skip()

    c["chips"].input(on_chip, c["chips"], c["pages"])

    def on_map(show: bool, last: dict) -> Any:
        if not last.get("pages"):
            return gr.skip()
        try:
            return actions.gallery(service, last["question"], last["pages"], show, work=work)
        except Exception as exc:
            message = actions.problem(exc)
            if message is None:
                raise
            gr.Warning(message)
            return gr.skip()

    c["show_map"].input(on_map, [c["show_map"], c["last"]], c["pages"])

    def on_new() -> tuple[Any, ...]:
        return [], [], [], {}, [], gr.Radio(choices=[], value=None), "", ""

    c["new"].click(on_new, None, outputs)


# -- Library ------------------------------------------------------------------------------


def _library_tab() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            c["files"] = gr.File(
                file_count="multiple",
                label="Drop PDFs or images here (or click to choose)",
                elem_id="upload",
            )
            c["add"] = gr.Button("Add to library", variant="primary", elem_id="add-button")
            c["report"] = gr.Markdown(elem_id="upload-report")
            c["problems"] = gr.Markdown(elem_id="problems")
        with gr.Column(scale=3):
            c["summary"] = gr.Markdown(elem_id="library-summary")
            c["table"] = gr.Dataframe(
                headers=DOC_HEADERS,
                interactive=False,
                wrap=True,
                column_widths=["34%", "9%", "27%", "18%", "12%"],
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
                c["to_delete"] = gr.Dropdown(choices=[], label="Document to delete", scale=3)
                c["delete"] = gr.Button("Delete", variant="stop", scale=1)
                c["refresh"] = gr.Button("Refresh", scale=1)
    return c


def _wire_library(
    demo: gr.Blocks,
    service: PageRAG,
    jobs: JobManager,
    c: dict[str, Any],
    doc_filter: gr.Dropdown,
) -> None:
    listing = [c["summary"], c["table"], c["thumbs"], c["to_delete"], doc_filter, c["problems"]]

    def refresh(selected: list | None = None) -> tuple[Any, ...]:
        view = actions.library(service)
        ids = {doc_id for _, doc_id in view.choices}
        kept = [d for d in selected or [] if d in ids]
        return (
            view.summary,
            {"data": view.rows, "headers": DOC_HEADERS},
            view.thumbnails,
            gr.Dropdown(choices=view.choices, value=None),
            gr.Dropdown(choices=view.choices, value=kept),
            actions.folder_problems(jobs),
        )

    def on_add(
        files: list[str] | None, selected: list | None, progress: Any = gr.Progress()
    ) -> tuple[Any, ...]:
        if not files:
            gr.Warning("Drop or choose some PDFs first.")
            return (gr.skip(), gr.skip(), *refresh(selected))

        def show(job: dict[str, Any]) -> None:
            total = job["pages_total"]
            desc = f"{job['state']}: {job['current'] or 'reading files'}"
            progress((job["pages_done"], total or None), desc=desc, unit="pages")

        try:
            job = actions.upload(jobs, files, show)
        except QueueFull as exc:  # too many uploads waiting already
            return (f"**Not added:** {exc}", gr.skip(), *refresh(selected))
        return (actions.job_report(job), None, *refresh(selected))

    c["add"].click(on_add, [c["files"], doc_filter], [c["report"], c["files"], *listing])

    def on_delete(doc_id: str | None, selected: list | None) -> tuple[Any, ...]:
        return (actions.delete(service, doc_id), *refresh(selected))

    c["delete"].click(on_delete, [c["to_delete"], doc_filter], [c["report"], *listing])
    c["refresh"].click(refresh, doc_filter, listing)
    # Fill the library (and the Ask tab's document filter) whenever a browser opens the page.
    demo.load(refresh, doc_filter, listing)
