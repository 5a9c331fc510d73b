"""The Qwen2-VL generator on a tiny random checkpoint, loaded through the production code path.

The answers are noise (random weights); these tests check the mechanics around them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from rag.config import Settings
from rag.models.generator import GenerationError, Generator
from rag.models.loading import ModelLoadError

SIZES = [(612, 792), (1224, 1584), (300, 200)]  # (width, height): letter pages, a small figure


@dataclass(frozen=True)
class Page:
    source: str
    page: int
    image: Image.Image | str


@pytest.fixture(scope="module")
def pages() -> list[Page]:
    return [
        Page(f"doc{i}.pdf", i + 1, Image.new("RGB", size, (255, 255 - 40 * i, 255)))
        for i, size in enumerate(SIZES)
    ]


def _with(generator: Generator, **options: object) -> Generator:
    """The session's generator with other options; the model and processor are shared."""
    other = copy.copy(generator)
    for name, value in options.items():
        setattr(other, name, value)
    return other


def test_load_from_a_local_directory(tiny_generator: Generator, tiny_generator_dir: Path) -> None:
    assert tiny_generator.model_id == str(tiny_generator_dir)
    assert tiny_generator.device == torch.device("cpu")
    assert next(tiny_generator.model.parameters()).dtype == torch.float32
    assert tiny_generator.pixels_per_token == 28 * 28
    config = tiny_generator._generation_config()
    assert config.do_sample is False and config.max_new_tokens == 16  # greedy by default
    sampled = _with(tiny_generator, temperature=0.7)._generation_config()
    assert sampled.do_sample is True and sampled.temperature == 0.7


def test_images_reach_the_processor_with_the_pixel_limits(
    tiny_generator: Generator, pages: list[Page]
) -> None:
    gen = _with(tiny_generator, visual_token_budget=1000)  # the per-page cap decides
    inputs = gen.prepare("What is the total?", pages)
    grids = inputs["image_grid_thw"].tolist()
    assert len(grids) == len(pages)
    for (width, height), (t, h, w) in zip(SIZES, grids, strict=True):
        # Qwen2-VL's own resize rule with the configured limits, in 14-pixel patches.
        rh, rw = smart_resize(height, width, 28, gen.min_pixels, gen.max_pixels)
        assert (t, h, w) == (1, rh // 14, rw // 14)
        assert gen.min_pixels <= rh * rw <= gen.max_pixels
    ids = inputs["input_ids"][0]
    image_tokens = int((ids == gen.image_token_id).sum())
    assert image_tokens == sum(h * w // 4 for _, h, w in grids)
    # Every page is labelled in the prompt, in order, before its image.
    text = gen.processor.tokenizer.decode(ids)
    positions = [text.index(f"[{n}] doc{n - 1}.pdf, page {n}") for n in (1, 2, 3)]
    assert positions == sorted(positions)
    assert text.count("<|vision_start|>") == len(pages)
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_the_visual_token_budget_is_respected(tiny_generator: Generator) -> None:
    gen = _with(tiny_generator, visual_token_budget=24)  # 3 pages x 8 tokens, not 16 each
    # Ordinary pages and extreme aspect ratios, where rounding to patches overshoots.
    for sizes in (SIZES, [(2000, 20), (20, 2000), (1224, 1584)], [(50, 50)] * 3):
        batch = [Page("p.pdf", i, Image.new("RGB", s)) for i, s in enumerate(sizes, 1)]
        inputs = gen.prepare("q", batch)
        assert int((inputs["input_ids"] == gen.image_token_id).sum()) <= 24
        assert int(inputs["image_grid_thw"].prod(dim=1).sum()) // 4 <= 24
    assert gen.pixel_limits([(1224, 1584)] * 3) == (4 * 28 * 28, 8 * 28 * 28)
    with pytest.raises(GenerationError, match="PAGERAG_VISUAL_TOKEN_BUDGET"):
        _with(tiny_generator, visual_token_budget=2).pixel_limits([(600, 800)] * 3)


def test_stream_yields_chunks_that_make_the_answer(
    tiny_generator: Generator, pages: list[Page]
) -> None:
    # Sampling from random weights gives varied tokens, so the streamer cuts several words.
    gen = _with(tiny_generator, temperature=1.0, max_new_tokens=40, min_new_tokens=40)
    torch.manual_seed(0)
    stream = gen.stream("What is the total?", pages, [("Earlier?", "Yes [1].")])
    assert stream.result is None
    chunks = list(stream)
    result = stream.result
    assert result is not None
    assert len(chunks) >= 3 and all(chunks)
    assert "".join(chunks) == result.text
    assert result.completion_tokens == 40
    assert result.prompt_tokens > result.image_tokens > 0
    assert 0 < result.prepare_seconds <= result.first_token_seconds <= result.seconds


def test_greedy_answers_are_repeatable(tiny_generator: Generator, pages: list[Page]) -> None:
    gen = _with(tiny_generator, min_new_tokens=8, max_new_tokens=8)
    first = gen.answer("What is the total?", pages[:1])
    assert first.completion_tokens == 8
    assert gen.answer("What is the total?", pages[:1]).text == first.text


def test_history_reaches_the_prompt(tiny_generator: Generator, pages: list[Page]) -> None:
    inputs = tiny_generator.prepare("And then?", pages[:1], [("What was sold?", "Charts [1].")])
    text = tiny_generator.processor.tokenizer.decode(inputs["input_ids"][0])
    assert "<|im_start|>user\nWhat was sold?<|im_end|>" in text
    assert "<|im_start|>assistant\nCharts.<|im_end|>" in text
    assert text.index("What was sold?") < text.index("[1] doc0.pdf") < text.index("And then?")


def test_leaving_a_stream_early_stops_generating(
    tiny_generator: Generator, pages: list[Page]
) -> None:
    gen = _with(tiny_generator, temperature=1.0, max_new_tokens=5000, min_new_tokens=5000)
    torch.manual_seed(0)
    stream = gen.stream("q", pages[:1])
    started = time.perf_counter()
    next(stream)
    stream.close()
    assert not stream._thread.is_alive()
    assert time.perf_counter() - started < 10  # 5000 tokens would take far longer
    assert stream.result is None


def test_errors_in_the_generation_thread_reach_the_reader(
    tiny_generator: Generator, pages: list[Page]
) -> None:
    def out_of_memory(**_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    model = SimpleNamespace(generation_config=tiny_generator.model.generation_config)
    model.generate = out_of_memory
    gen = _with(tiny_generator, model=model)
    with pytest.raises(GenerationError, match="PAGERAG_VISUAL_TOKEN_BUDGET"):
        gen.answer("q", pages[:1])


def test_an_unreadable_page_image_is_a_clear_error(
    tiny_generator: Generator, tmp_path: Path
) -> None:
    with pytest.raises(GenerationError, match="re-ingest"):
        tiny_generator.prepare("q", [Page("a.pdf", 1, str(tmp_path / "gone.png"))])


def test_missing_model_names_the_setting(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, generator_model=str(tmp_path / "none"), device="cpu"
    )
    with pytest.raises(ModelLoadError, match="PAGERAG_GENERATOR_MODEL") as info:
        Generator.load(settings)
    assert str(tmp_path / "none") in str(info.value)


def test_a_colqwen_checkpoint_is_refused(tmp_path: Path, tiny_colqwen_dir: Path) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, generator_model=str(tiny_colqwen_dir), device="cpu"
    )
    with pytest.raises(ModelLoadError, match="not a Qwen2-VL generation checkpoint"):
        Generator.load(settings)
