"""An answerer on any OpenAI-compatible chat server (vLLM, SGLang, Ollama, llama.cpp's server,
LM Studio, `transformers serve`, hosted APIs): the same prompt as the local Qwen2-VL, the page
images as image parts, the answer streamed. With PAGERAG_ANSWER_URL set, a CPU-only machine
answers with a GPU server elsewhere, and this process never imports torch to answer.

The official `openai` client does the HTTP, the server-sent events and the error types; this
module turns its errors into messages that name the setting to change.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from rag.answer import TextStream
from rag.crops import crop_pixels, page_crops
from rag.errors import UserError
from rag.models.protocols import Generated
from rag.prompt import Message, Turn, build_messages

if TYPE_CHECKING:
    import openai

    from rag.config import Settings
    from rag.models.generator import GeneratorPage

PIXELS_PER_TOKEN = 28 * 28  # Qwen2-VL's visual token; other families are near it


class AnswerServerError(UserError):
    """The answer server could not be reached, refused the request or failed; search works."""

    http_status = 502


class AnswerServerTimeout(AnswerServerError):
    http_status = 504


class AnswerServerUnreachable(AnswerServerError):
    http_status = 503


class RemoteAnswerer:
    """`AnswerWriter` over a chat-completions endpoint; build it with `RemoteAnswerer.load`."""

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        url: str,
        model: str,
        min_pixels: int,
        max_pixels: int,
        visual_token_budget: int,
        max_new_tokens: int,
        temperature: float,
        timeout: float,
    ) -> None:
        self.client = client
        self.url = url
        self.model_id = model
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.visual_token_budget = visual_token_budget
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.timeout = timeout

    @classmethod
    def load(cls, settings: Settings) -> RemoteAnswerer:
        import openai

        assert settings.answer_url is not None
        key = settings.answer_api_key.get_secret_value() if settings.answer_api_key else ""
        # One retry: a busy server's 429/503 often clears; more would hide an outage for minutes.
        client = openai.OpenAI(
            base_url=settings.answer_url,
            api_key=key or "none",  # the client insists on one; local servers ignore it
            timeout=settings.answer_timeout,
            max_retries=1,
        )
        return cls(
            client,
            url=settings.answer_url,
            model=settings.generator_model,
            min_pixels=settings.gen_min_pixels,
            max_pixels=settings.gen_max_pixels,
            visual_token_budget=settings.visual_token_budget,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            timeout=settings.answer_timeout,
        )

    def page_pixels(self, n_pages: int, reserved: int = 0) -> int:
        """The most pixels one page may have so that all of them stay inside the budget, after
        `reserved` pixels of crops (which leave the pages at least half of it)."""
        budget = self.visual_token_budget * PIXELS_PER_TOKEN
        share = max(budget - reserved, budget // 2) // max(n_pages, 1)
        return max(min(self.max_pixels, share), min(self.min_pixels, share))

    def messages(
        self, question: str, pages: Sequence[GeneratorPage], history: Sequence[Turn] = ()
    ) -> list[Message]:
        """`build_messages`, with each image placeholder filled by its page as a data URL."""
        cap = self.page_pixels(len(pages), crop_pixels(pages, self.max_pixels))
        urls = iter([url for page in pages for url in self._urls(page, cap)])
        messages = build_messages(question, pages, history)
        for message in messages:
            if isinstance(message["content"], list):
                message["content"] = [
                    {"type": "image_url", "image_url": {"url": next(urls)}}
                    if part["type"] == "image"
                    else part
                    for part in message["content"]
                ]
        return messages

    def _urls(self, page: GeneratorPage, cap: int) -> list[str]:
        """The page scaled to `cap`, then its crops (`rag.crops`) at full resolution."""
        if not getattr(page, "regions", ()):
            return [_data_url(page.image, cap)]
        opened = page.image if isinstance(page.image, Image.Image) else Image.open(page.image)
        image = opened.convert("RGB")
        crops = [_data_url(crop, self.max_pixels) for crop in page_crops(page, image)]
        return [_data_url(image, cap), *crops]

    def stream(
        self, question: str, pages: Sequence[GeneratorPage], history: Sequence[Turn] = ()
    ) -> TextStream[Generated]:
        return TextStream(self._chunks(question, pages, history))

    def answer(
        self, question: str, pages: Sequence[GeneratorPage], history: Sequence[Turn] = ()
    ) -> Generated:
        return self.stream(question, pages, history).finish()

    def _chunks(
        self, question: str, pages: Sequence[GeneratorPage], history: Sequence[Turn]
    ) -> Generator[str, None, Generated]:
        import openai

        started = time.perf_counter()
        messages = self.messages(question, pages, history)
        prepared = time.perf_counter()
        first_token_at: float | None = None
        parts: list[str] = []
        usage: Any = None
        try:
            # The messages are plain dicts of the TypedDicts' shape, which no overload accepts.
            response = self.client.chat.completions.create(  # type: ignore[call-overload]
                model=self.model_id,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=self.max_new_tokens,
                temperature=self.temperature,
            )
            try:
                for event in response:
                    usage = event.usage or usage
                    text = event.choices[0].delta.content if event.choices else None
                    if text:
                        first_token_at = first_token_at or time.perf_counter()
                        parts.append(text)
                        yield text
            finally:
                response.close()  # a reader that stops early ends the server's generation too
        except openai.OpenAIError as exc:
            raise self._explain(exc, len(pages)) from exc
        ended = time.perf_counter()
        return Generated(
            text="".join(parts),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            image_tokens=0,  # the server's own arithmetic; it does not report it
            prepare_seconds=prepared - started,
            first_token_seconds=(first_token_at or ended) - started,
            seconds=ended - started,
        )

    def _explain(self, exc: openai.OpenAIError, n_pages: int) -> UserError:
        """The client's error as one message that says what to change."""
        import openai

        where = f"the answer server at {self.url} (PAGERAG_ANSWER_URL)"
        if isinstance(exc, openai.APITimeoutError):
            return AnswerServerTimeout(
                f"{where} did not answer within {self.timeout:g} s; raise "
                "PAGERAG_ANSWER_TIMEOUT, lower PAGERAG_MAX_NEW_TOKENS, or check the server. "
                "Search works meanwhile."
            )
        if isinstance(exc, openai.APIConnectionError):
            return AnswerServerUnreachable(
                f"cannot reach {where}: {_cause(exc)}; start the server or fix the URL. "
                "Search works meanwhile."
            )
        if not isinstance(exc, openai.APIStatusError):
            return AnswerServerError(f"{where} sent an answer this client cannot read: {exc}")
        said = _server_message(exc)
        if exc.status_code in (401, 403):
            return AnswerServerError(
                f"{where} refused the key (HTTP {exc.status_code}: {said}); set "
                "PAGERAG_ANSWER_API_KEY to a key it accepts"
            )
        lowered = said.lower()
        if "context" in lowered or "too long" in lowered or "maximum" in lowered:
            from rag.models.generator import GenerationError

            return GenerationError(
                f"the question and {n_pages} page image{'s' if n_pages != 1 else ''} do not "
                f"fit the answer model's context ({said}); ask with fewer pages or lower "
                "PAGERAG_VISUAL_TOKEN_BUDGET or PAGERAG_MAX_NEW_TOKENS"
            )
        if exc.status_code == 404 or "model" in lowered:
            return AnswerServerError(
                f"{where} cannot answer with the model {self.model_id!r} (HTTP "
                f"{exc.status_code}: {said}); set PAGERAG_GENERATOR_MODEL to a model it serves "
                f"(GET {self.url.rstrip('/')}/models lists them)"
            )
        return AnswerServerError(f"{where} failed (HTTP {exc.status_code}: {said})")


def _data_url(image: Any, max_pixels: int) -> str:
    """The page as a JPEG data URL, scaled down to `max_pixels` (the server resizes again to
    its own grid; sending fewer bytes only saves the transfer)."""
    page = image if isinstance(image, Image.Image) else Image.open(image)
    page = page.convert("RGB")
    if page.width * page.height > max_pixels:
        scale = (max_pixels / (page.width * page.height)) ** 0.5
        page = page.resize(
            (max(1, int(page.width * scale)), max(1, int(page.height * scale))),
            Image.Resampling.LANCZOS,
        )
    buffer = io.BytesIO()
    page.save(buffer, "JPEG", quality=90)  # ~5x smaller than PNG; 9 pt text stays legible
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return " ".join(str(message).split())[:300]
    text = exc.response.text.strip() if exc.response is not None else ""
    return " ".join(text.split())[:300] or exc.message


def _cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return " ".join(str(exc).split())[:200] or type(exc).__name__
