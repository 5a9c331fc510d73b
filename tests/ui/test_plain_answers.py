"""Answers are shown as plain text in the web UI: a page can steer what the model writes, so
no HTML, no remote image and no link in an answer may be rendered (the browser half of this is
in test_browser.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gradio as gr
import pytest

from rag.server.modelqueue import WorkQueue
from rag.service import PageRAG
from tests.scripted import ScriptedGenerator
from tests.serving import make_library
from ui import actions
from ui.app import build_ui

HOSTILE_ANSWER = [
    "PWNED. ",
    "<img src=http://evil.example/x.png onerror=alert(1)> ",
    "![x](http://evil.example/y.png) ",
    "[click](http://evil.example/z) ",
    "<script>alert(2)</script>",
    "<a href=http://evil.example>a</a>\nsecond line $$x$$",
]


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service(
        "plain",
    )
    svc.generator = ScriptedGenerator(*HOSTILE_ANSWER)
    svc.ingest([make_library(tmp_path_factory.mktemp("plain-library"))])
    yield svc
    svc.close()


def test_the_chatbot_renders_no_markdown_html_or_latex(service: PageRAG) -> None:
    demo = build_ui(service)
    [chat] = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "chat"]
    assert isinstance(chat, gr.Chatbot)
    assert chat.render_markdown is False and chat.sanitize_html is True
    assert chat.latex_delimiters == [] and chat.allow_tags is False


def test_a_hostile_answer_reaches_the_chat_as_text(service: PageRAG) -> None:
    question = "What is <b>this</b>?"
    final = list(actions.ask(service, question, [], [], 2, [], False, work=WorkQueue(16, 60.0)))[-1]
    user, bot = final.chat[-2]["content"], final.chat[-1]["content"]
    assert user == "What is &lt;b>this&lt;/b>?"
    # No "<" left, so no tag can form when the browser parses the message.
    assert "<" not in bot and "&lt;img src=http://evil.example/x.png" in bot
    assert "&lt;script>" in bot and "&lt;a href" in bot
    # Markdown stays literal (the Chatbot does not render it); line breaks are kept.
    assert "![x](http://evil.example/y.png)" in bot and "[click](http://evil.example/z)" in bot
    assert "\nsecond line" in bot
    # The conversation's memory keeps the words as written, for the next question.
    assert final.turns == [(question, "".join(HOSTILE_ANSWER))]


def test_the_streamed_text_is_escaped_chunk_by_chunk(service: PageRAG) -> None:
    views = [
        v.chat[-1]["content"]
        for v in actions.ask(service, "Total?", [], [], 2, [], False, work=WorkQueue(16, 60.0))
    ]
    assert all("<" not in text for text in views)
    assert views[-1] == actions.shown("".join(HOSTILE_ANSWER))
