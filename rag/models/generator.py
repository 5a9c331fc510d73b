"""The local answerer: a question and page images in, an answer out, streamed as it is written.

Any family in `rag.models.registry` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) loads; the checkpoint's
config.json says which. The families differ in their vision patch (14 pixels for Qwen2/2.5,
16 for Qwen3) and so in the pixels one visual token covers ((patch * merge)^2: 28x28 or
32x32); the visual-token budget is counted with the checkpoint's own processor arithmetic.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Generator as Generator_
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from rag.answer import TextStream
from rag.config import Settings
from rag.crops import page_crops
from rag.errors import UserError
from rag.models import registry
from rag.models.device import resolve_device_dtype
from rag.models.loading import (
    ModelLoadError,
    ModelSource,
    ModelSpec,
    load_checkpoint,
    resolve_model_source,
)
from rag.models.protocols import Generated
from rag.models.registry import Family
from rag.prompt import PromptPage, Turn, build_messages

if TYPE_CHECKING:
    from PIL import Image
    from transformers import ProcessorMixin

# `kind` is the answerer's role key too: downloads are tracked under it (rag.service, ui).
SPEC = ModelSpec(setting="PAGERAG_GENERATOR_MODEL", kind="Qwen2-VL")


class GenerationError(UserError):
    """The pages cannot be shown to the model, or the device ran out of memory."""

    http_status = 422


class GeneratorPage(PromptPage, Protocol):
    """A labelled page with its image: a path (as in `rag.types.Hit`) or a loaded image."""

    @property
    def image(self) -> str | Path | Image.Image: ...


class Generator:
    """Wraps a transformers Qwen-VL generation model; build it with `Generator.load`."""

    def __init__(
        self,
        model: Any,
        processor: ProcessorMixin,
        *,
        model_id: str,
        revision: str | None,
        device: torch.device,
        dtype: torch.dtype,
        min_pixels: int = 256 * 28 * 28,
        max_pixels: int = 1024 * 28 * 28,
        visual_token_budget: int = 3072,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        min_new_tokens: int = 0,  # > 0 forces a fixed length (benchmarks, tests)
        family: Family | None = None,
    ) -> None:
        self.model = model
        self.family = family or registry.family_of_model(model, "answerer")
        self.processor = processor
        self.model_id = model_id
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.visual_token_budget = visual_token_budget
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.min_new_tokens = min_new_tokens
        # transformers types processors as ProcessorMixin, which declares none of the parts a
        # Qwen2-VL processor has (image_processor, tokenizer, image_token_id, __call__): the
        # attr-defined / operator ignores on `self.processor` in this module are that.
        image_processor = processor.image_processor  # type: ignore[attr-defined]
        self.merge_size = int(image_processor.merge_size)
        # 28*28 for Qwen2-VL and Qwen2.5-VL, 32*32 for Qwen3-VL.
        self.pixels_per_token = (int(image_processor.patch_size) * self.merge_size) ** 2
        self.image_token_id = int(processor.image_token_id)  # type: ignore[attr-defined]

    @classmethod
    def load(cls, settings: Settings) -> Generator:
        device, dtype = resolve_device_dtype(settings)
        source = resolve_model_source(settings.generator_model, settings.generator_revision, SPEC)
        if source.is_adapter:
            raise SPEC.error(
                source.model_id,
                "it is a PEFT adapter; merge it into its base model and point to the result",
            )
        family = registry.detect_family(source.model_id, source.path, "answerer")
        model = _load_model(source, family, device, dtype)
        processor = _load_processor(source, family)
        _check_patches(model, processor, source.model_id, family)
        return cls(
            model,
            processor,
            family=family,
            model_id=source.model_id,
            revision=source.revision,
            device=device,
            dtype=dtype,
            min_pixels=settings.gen_min_pixels,
            max_pixels=settings.gen_max_pixels,
            visual_token_budget=settings.visual_token_budget,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
        )

    def pixel_limits(
        self, sizes: Sequence[tuple[int, int]], crops: Sequence[tuple[int, int]] = ()
    ) -> tuple[int, int]:
        """(min_pixels, max_pixels) per page so that the pages' tokens fit the budget together.

        `sizes` are (width, height); `crops` are images sent beside them (`rag.crops`), which
        the same limits resize: a crop under the cap stays at its full resolution, and the
        pages' share is what the crops leave (at least half the budget). The even share of
        the budget is exact for ordinary pages; rounding to whole 28x28 patches can overshoot
        for extreme aspect ratios, so the count is checked with the processor's own arithmetic
        and the cap lowered until it fits.
        """
        if not sizes:
            return self.min_pixels, self.max_pixels
        budget = self.visual_token_budget
        reserved = sum(w * h for w, h in crops) // self.pixels_per_token
        share = max(budget - reserved, budget // 2) // len(sizes)
        tokens = min(self.max_pixels // self.pixels_per_token, share)
        while tokens >= 1:
            max_px = tokens * self.pixels_per_token
            min_px = min(self.min_pixels, max_px)
            images = [*sizes, *crops]
            if sum(self._image_tokens(w, h, min_px, max_px) for w, h in images) <= budget:
                return min_px, max_px
            tokens = min(tokens - 1, tokens * 9 // 10)
        raise GenerationError(
            f"{len(sizes)} pages do not fit in PAGERAG_VISUAL_TOKEN_BUDGET={budget} visual "
            "tokens; raise it or ask with fewer pages."
        )

    def _image_tokens(self, width: int, height: int, min_px: int, max_px: int) -> int:
        try:
            patches = self.processor.image_processor.get_number_of_image_patches(  # type: ignore[attr-defined]
                height, width, {"min_pixels": min_px, "max_pixels": max_px}
            )
        except ValueError as exc:  # the Qwen-VL processors refuse aspect ratios over 200:1
            raise GenerationError(f"a {width}x{height} page image cannot be shown: {exc}") from exc
        return int(patches) // self.merge_size**2

    def prepare(
        self, question: str, pages: Sequence[GeneratorPage], history: Sequence[Turn] = ()
    ) -> dict[str, Any]:
        """The processor's tensors (on the model's device) for the question and the pages."""
        opened = [_open(p.image) for p in pages]
        crops = [page_crops(p, im) for p, im in zip(pages, opened, strict=True)]
        min_px, max_px = self.pixel_limits(
            [im.size for im in opened], [c.size for cs in crops for c in cs]
        )
        # In the order of the prompt's image entries: each page, then its crops.
        images = [im for page, cs in zip(opened, crops, strict=True) for im in (page, *cs)]
        text = self.processor.apply_chat_template(  # type: ignore[attr-defined]
            build_messages(question, pages, history), tokenize=False, add_generation_prompt=True
        )
        inputs = self.processor(  # type: ignore[operator]
            text=[text],
            images=images or None,
            size={"shortest_edge": min_px, "longest_edge": max_px},
            return_tensors="pt",
        )
        return inputs.to(self.device)

    def stream(
        self, question: str, pages: Sequence[GeneratorPage], history: Sequence[Turn] = ()
    ) -> Stream:
        """Start generating in a background thread; iterate the result for the text."""
        started = time.perf_counter()
        inputs = self.prepare(question, pages, history)
        prepared = time.perf_counter()
        tokenizer = self.processor.tokenizer  # type: ignore[attr-defined]
        streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        kwargs = {
            **inputs,
            "streamer": streamer,
            "generation_config": self._generation_config(),
            "stopping_criteria": StoppingCriteriaList([_StopWhenSet(stop)]),
        }
        prompt_tokens = int(inputs["input_ids"].shape[1])
        image_tokens = int((inputs["input_ids"] == self.image_token_id).sum())
        outcome: dict[str, Any] = {}

        def generate() -> None:
            try:
                # generate() is typed as taking GenerationConfig-shaped kwargs only; the dict
                # holds input tensors and the streamer too. Returns (1, prompt + new) ids.
                outcome["ids"] = self.model.generate(**kwargs)  # type: ignore[misc]
            except BaseException as exc:  # handed to the consumer, which re-raises it
                outcome["error"] = exc
                streamer.end()  # unblocks the consumer

        thread = threading.Thread(target=generate, name="pagerag-generate", daemon=True)
        thread.start()

        def finish(text: str) -> Generated:
            if "error" in outcome:
                raise _friendly(outcome["error"]) from outcome["error"]
            completion = int(outcome["ids"].shape[1]) - prompt_tokens
            ended = time.perf_counter()
            return Generated(
                text=text,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion,
                image_tokens=image_tokens,
                prepare_seconds=prepared - started,
                first_token_seconds=(streamer.first_token_at or ended) - started,
                seconds=ended - started,
            )

        return Stream(streamer, thread, stop, finish)

    def answer(
        self, question: str, pages: Sequence[GeneratorPage], history: Sequence[Turn] = ()
    ) -> Generated:
        return self.stream(question, pages, history).finish()

    def _generation_config(self) -> Any:
        # Start from the checkpoint's config (end-of-turn ids, repetition penalty) and override
        # the sampling: Qwen2-VL-Instruct ships top_k=1/top_p=0.001, which would make any
        # temperature greedy, and greedy runs warn about sampling flags left set.
        config = copy.deepcopy(self.model.generation_config)
        sample = self.temperature > 0
        config.do_sample = sample
        config.temperature = self.temperature if sample else None
        config.top_k = None
        config.top_p = None
        config.max_new_tokens = self.max_new_tokens
        config.min_new_tokens = min(self.min_new_tokens, self.max_new_tokens) or None
        return config


class Stream(TextStream[Generated]):
    """Text chunks as the model writes them; `result` is set when the iteration ends.

    Leaving early (closing the iterator, or dropping it) stops the generation at the next token,
    so an abandoned request does not keep the device busy.
    """

    def __init__(
        self,
        streamer: _Streamer,
        thread: threading.Thread,
        stop: threading.Event,
        finish: Callable[[str], Generated],
    ) -> None:
        self._thread = thread
        super().__init__(_chunks(streamer, thread, stop, finish))


def _chunks(
    streamer: _Streamer,
    thread: threading.Thread,
    stop: threading.Event,
    finish: Callable[[str], Generated],
) -> Generator_[str, None, Generated]:
    parts: list[str] = []
    try:
        for chunk in streamer:
            if chunk:  # the streamer emits "" while a word is incomplete
                parts.append(chunk)
                yield chunk
    finally:
        stop.set()  # a no-op when generation already ended
        thread.join()
    return finish("".join(parts))


class _Streamer(TextIteratorStreamer):
    """Also notes when the first new token arrives (text is released only at word ends)."""

    first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self.next_tokens_are_prompt and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        super().put(value)


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )  # type: ignore[return-value]  # torch.BoolTensor is a legacy alias of Tensor


def _friendly(exc: BaseException) -> BaseException:
    if isinstance(exc, torch.OutOfMemoryError):
        return GenerationError(
            "the device ran out of memory while answering; lower PAGERAG_VISUAL_TOKEN_BUDGET, "
            "PAGERAG_ASK_PAGES or PAGERAG_MAX_NEW_TOKENS."
        )
    return exc


def _open(image: str | Path | Image.Image) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise GenerationError(
            f"cannot read the page image {image} ({exc}); re-ingest its document."
        ) from exc


def _spec(family: Family) -> ModelSpec:
    """Errors once the family is known name it ("Cannot load the Qwen3-VL model ...")."""
    return ModelSpec(setting=SPEC.setting, kind=family.name)


def _load_model(
    source: ModelSource, family: Family, device: torch.device, dtype: torch.dtype
) -> Any:
    # A backbone without its LM head (an embedding checkpoint) would load, with a random head.
    return load_checkpoint(
        family.load_class(),
        source,
        device,
        dtype,
        _spec(family),
        required=family.weights,
        what=f"{family.name} generation",
    )


def _load_processor(source: ModelSource, family: Family) -> ProcessorMixin:
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(source.path))
    except (OSError, ValueError, TypeError) as exc:
        raise _spec(family).error(source.model_id, f"its processor does not load: {exc}") from exc
    if not getattr(processor, "image_processor", None) or not getattr(
        processor, "chat_template", None
    ):
        raise _spec(family).error(
            source.model_id,
            "its processor has no image processor or chat template (use an -Instruct checkpoint)",
        )
    return processor


def _check_patches(model: Any, processor: Any, model_id: str, family: Family) -> None:
    """The processor must cut pages into the patches the vision tower was built for: the
    token budget is counted with the processor's sizes, and a mismatch would fail or
    overflow it only at the first question."""
    vision = model.config.vision_config
    model_sizes = (int(vision.patch_size), int(vision.spatial_merge_size))
    image_processor = processor.image_processor
    processor_sizes = (int(image_processor.patch_size), int(image_processor.merge_size))
    if model_sizes != processor_sizes:
        raise _spec(family).error(
            model_id,
            f"its processor cuts {processor_sizes[0]}-pixel patches merged {processor_sizes[1]}"
            f"x{processor_sizes[1]}, but its vision tower expects {model_sizes[0]}-pixel patches "
            f"merged {model_sizes[1]}x{model_sizes[1]}; restore the checkpoint's processor files "
            "(preprocessor_config.json or processor_config.json)",
        )


__all__ = ["Generated", "GenerationError", "Generator", "ModelLoadError", "Stream"]
