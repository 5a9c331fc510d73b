"""The OpenAI-compatible answerer against a real server: `transformers serve` (transformers' own
OpenAI-compatible server, the `serving` extra) serving the tiny random Qwen2-VL, which takes
image parts and streams. Only the refusals that server cannot make (a key check, a context
limit) come from a stand-in that answers as vLLM does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.config import Settings
from rag.models import load_answerer
from rag.models.generator import GenerationError
from rag.models.remote import (
    AnswerServerError,
    AnswerServerTimeout,
    AnswerServerUnreachable,
    RemoteAnswerer,
)
from rag.service import PageRAG
from tests.pdfs import make_pdf
from tests.serving import running_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def answer_server(
    tiny_generator_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`transformers serve` on the tiny Qwen2-VL; yields its OpenAI base URL."""
    port = _free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path_factory.mktemp("hub-cache")),
    }
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "transformers"), "serve", str(tiny_generator_dir),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        end = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > end:
                pytest.fail(f"transformers serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()  # it finishes a generation in progress before it exits
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def remote_settings(
    data: Path, retriever: Path, generator: Path, url: str, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data,
        "retriever_model": str(retriever),
        "generator_model": str(generator),  # the name `transformers serve` knows it by
        "answer_url": url,
        "device": "cpu",
        "max_visual_tokens": 32,
        "render_dpi": 50,
        "gen_min_pixels": 4 * 28 * 28,
        "gen_max_pixels": 16 * 28 * 28,
        "max_new_tokens": 8,
    }
    return Settings(_env_file=None, **{**values, **extra})


@pytest.fixture(scope="module")
def data_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_colqwen_dir: Path, tiny_retriever: Any
) -> Path:
    """A library ingested once with the tiny retriever; each test opens its own service."""
    library = tmp_path_factory.mktemp("library")
    make_pdf(library / "report.pdf", ["Revenue 2015", "Costs 2015", "Total 2015"])
    data = tmp_path_factory.mktemp("remote-data")
    settings = remote_settings(data, tiny_colqwen_dir, data / "none", "http://127.0.0.1:9/v1")
    service = PageRAG(settings, retriever=tiny_retriever)
    try:
        service.ingest([library])
    finally:
        service.close()
    return data


@pytest.fixture
def service_on(
    data_dir: Path, tiny_colqwen_dir: Path, tiny_generator_dir: Path, tiny_retriever: Any
):
    opened: list[PageRAG] = []

    def make(url: str, **extra: Any) -> PageRAG:
        settings = remote_settings(data_dir, tiny_colqwen_dir, tiny_generator_dir, url, **extra)
        opened.append(PageRAG(settings, retriever=tiny_retriever))
        return opened[-1]

    yield make
    for service in opened:
        service.close()


def test_the_setting_chooses_the_remote_answerer(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, answer_url=" http://gpu:8000/v1 ")
    answerer = load_answerer(settings)
    assert isinstance(answerer, RemoteAnswerer)
    assert (answerer.url, answerer.model_id) == ("http://gpu:8000/v1", settings.generator_model)
    assert Settings(_env_file=None, data_dir=tmp_path, answer_url="").answer_url is None


def test_a_url_that_is_not_http_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"PAGERAG_ANSWER_URL='gpu:8000' is not an http\(s\) URL"):
        Settings(_env_file=None, data_dir=tmp_path, answer_url="gpu:8000")


def test_answers_stream_from_the_server_and_cite_the_pages(answer_server: str, service_on) -> None:
    service = service_on(answer_server)
    stream = service.ask_stream("What was the total in 2015?", k=2)
    chunks = list(stream)
    answer = stream.answer
    assert len(chunks) >= 2 and "".join(chunks) == answer.text  # streamed, not in one piece
    assert [c.label for c in answer.citations] == [1, 2]
    assert 0 < answer.completion_tokens <= 8  # PAGERAG_MAX_NEW_TOKENS reached the server
    assert answer.generation_seconds > 0
    # The page images went as image parts: the same question costs more prompt tokens with
    # pages than without (the server counts the visual tokens of each image).
    answerer = service.generator
    assert isinstance(answerer, RemoteAnswerer)
    hits = service.search("What was the total in 2015?", 2)
    with_pages = answerer.answer("Total?", hits).prompt_tokens
    without = answerer.answer("Total?", []).prompt_tokens
    assert with_pages > without + 2 * 4  # at least gen_min_pixels' 4 tokens a page


def test_page_images_are_sent_inside_the_visual_token_budget(
    answer_server: str, service_on
) -> None:
    service = service_on(answer_server, visual_token_budget=64, gen_max_pixels=1024 * 28 * 28)
    answerer = service.generator
    hits = service.search("Revenue", 3)
    messages = answerer.messages("Revenue?", hits)
    urls = [p["image_url"]["url"] for p in messages[-1]["content"] if p["type"] == "image_url"]
    assert len(urls) == 3 and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    assert answerer.page_pixels(3) == 64 * 28 * 28 // 3  # the budget, shared by the pages
    import base64
    import io

    from PIL import Image

    for url in urls:
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert image.width * image.height <= answerer.page_pixels(3)


def test_closing_the_stream_early_leaves_the_server_serving(answer_server: str, service_on) -> None:
    service = service_on(answer_server, max_new_tokens=64)
    stream = service.ask_stream("Costs?", k=1)
    assert next(iter(stream))
    stream.close()
    assert service.ask("Costs?", k=1).completion_tokens > 0


def test_an_unknown_model_names_the_setting(answer_server: str, service_on) -> None:
    service = service_on(answer_server, generator_model="no-such/model")
    with pytest.raises(AnswerServerError, match="PAGERAG_GENERATOR_MODEL") as caught:
        service.ask("Costs?", k=1)
    assert "'no-such/model'" in str(caught.value) and "/models lists them" in str(caught.value)
    assert service.search("Costs", 1, mode="text")  # search keeps working


def test_an_unreachable_server_names_the_url_and_search_still_works(service_on) -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    service = service_on(url)
    with pytest.raises(AnswerServerUnreachable, match="PAGERAG_ANSWER_URL") as caught:
        service.ask("Costs?", k=1)
    assert url in str(caught.value) and "Search works meanwhile" in str(caught.value)
    assert caught.value.http_status == 503
    assert service.search("Costs", 1)


def test_a_slow_server_times_out_with_the_setting_to_raise(answer_server: str, service_on) -> None:
    service = service_on(answer_server, answer_timeout=0.001)
    with pytest.raises(AnswerServerTimeout, match="PAGERAG_ANSWER_TIMEOUT") as caught:
        service.ask("Costs?", k=1)
    assert caught.value.http_status == 504


# vLLM's own answers to a wrong key (`vllm serve --api-key`) and to a prompt over the model's
# context, which `transformers serve` never gives (it has no keys and no context check).
VLLM_CONTEXT = (
    "This model's maximum context length is 4096 tokens. However, you requested 5120 tokens "
    "(5000 in the messages, 120 in the completion). Please reduce the length of the messages "
    "or completion."
)


async def _vllm_refusals(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = dict(scope["headers"])
    if headers.get(b"authorization") != b"Bearer right-key":
        status, body = 401, b'{"error": "Unauthorized"}'
    else:
        status = 400
        body = (
            b'{"object": "error", "message": "' + VLLM_CONTEXT.encode() + b'", '
            b'"type": "BadRequestError", "param": null, "code": 400}'
        )
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def test_a_wrong_key_and_a_context_refusal_say_what_to_change(service_on) -> None:
    with running_server(_vllm_refusals) as base:
        service = service_on(base + "/v1", answer_api_key="wrong-key")
        with pytest.raises(AnswerServerError, match="refused the key") as caught:
            service.ask("Costs?", k=1)
        assert "PAGERAG_ANSWER_API_KEY" in str(caught.value) and "wrong-key" not in str(
            caught.value
        )
        service.close()  # one service at a time holds the data directory
        service = service_on(base + "/v1", answer_api_key="right-key")
        with pytest.raises(GenerationError, match="do not fit the answer model's context") as c2:
            service.ask("Costs?", k=2)
        assert "maximum context length is 4096" in str(c2.value)
        assert "PAGERAG_VISUAL_TOKEN_BUDGET" in str(c2.value)
