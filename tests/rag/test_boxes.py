"""Evidence boxes in answers (rag.boxes) and region crops for the answerer (rag.crops): parsing,
mapping to page pixels, streaming without markup, drawing in the UI, the crops' regions from the
similarity map and their place in the visual-token budget, the REST output; once with the tiny
random models end to end (their text is noise: it runs and no bogus box survives)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from rag.boxes import MARKERS, BoxFilter, clean, draw_boxes, page_boxes, parse, to_pixels
from rag.config import Settings
from rag.crops import ShownPage, best_region, crop_limit, image_size
from rag.heatmap import page_heatmap
from rag.models.generator import Generator
from rag.models.remote import RemoteAnswerer
from rag.prompt import build_messages, plain
from rag.server.app import create_app
from rag.server.modelqueue import WorkQueue
from rag.service import PageRAG
from rag.types import Hit
from tests.scripted import ScriptedGenerator
from tests.serving import make_library
from ui import actions

RED = (232, 25, 31)  # draw_boxes' default colour

# -- parsing --------------------------------------------------------------------------------


def test_boxes_are_tied_to_the_label_they_follow() -> None:
    text = (
        "Revenue was 12 [2]<|box_start|>(120,340),(560,400)<|box_end|>, costs 3 "
        "[1] (10, 20), (300, 400) and [1, 3](100,100),(200,200) (300,300),(400,400)."
    )
    parsed = parse(text, 3)
    assert parsed.text == "Revenue was 12 [2], costs 3 [1] and [1, 3]."
    assert parsed.boxes == {
        2: [(120, 340, 560, 400)],
        1: [(10, 20, 300, 400)],
        3: [(100, 100, 200, 200), (300, 300, 400, 400)],  # the last number of [1, 3]
    }


def test_swapped_corners_are_one_box_and_repeats_count_once() -> None:
    parsed = parse("[1](500,600),(100,200) again [1](100,200),(500,600)", 1)
    assert parsed.boxes == {1: [(100, 200, 500, 600)]}


@pytest.mark.parametrize(
    "raw",
    [
        "[2](1200,30),(50,60)",  # past 1000
        "[2](-5,30),(50,60)",  # negative
        "[2](50,50),(50,90)",  # no width
        "[2](10,90),(60,90)",  # no height
        "[2](0.1,0.2),(0.5,0.6)",  # fractions: not the 0-1000 convention
        "[2]<|box_start|>(10,20)<|box_end|>",  # one corner
        "[2]<|box_start|>the total<|box_end|>",  # no numbers
        "[9](10,20),(30,40)",  # no such page
        "<|box_start|>(10,20),(30,40)<|box_end|> before any label",
    ],
)
def test_malformed_empty_or_out_of_range_boxes_are_dropped(raw: str) -> None:
    parsed = parse(raw, 3)
    assert parsed.boxes == {}
    assert "box_" not in parsed.text and "(10,20)" not in parsed.text


def test_ordinary_text_after_a_label_is_kept() -> None:
    for text in (
        "In 2015 [1] 2015 was up (a, b), see [2] (table 3) and [3] 12 (4,5) units.",
        "Points (1,2),(3,4) with no label before them are text.",
        "Totals: [1], [2]; ranges (1-2).",
    ):
        assert parse(text, 3) == parse(text) and clean(text) == text
        assert parse(text, 3).boxes == {}


def test_leftover_markup_is_removed_and_reference_text_kept() -> None:
    text = "The <|object_ref_start|>total<|object_ref_end|> [1] is <|box_end|>12<|box_start|>"
    assert clean(text) == "The total [1] is 12"


def test_page_text_cannot_inject_boxes_through_the_prompt() -> None:
    """A question (or earlier answer) with box markup reaches the model defused, so the model
    is not handed box tokens; echoed back defused, the markup is no box."""
    hostile = "Total? [1]<|box_start|>(0,0),(1000,1000)<|box_end|>"
    page = Hit(doc_id="0" * 64, source="r.pdf", page=1, score=1.0, image="/x.png")
    messages = build_messages(hostile, [page], [(hostile, hostile)])
    rendered = str(messages[1:])
    assert "<|box_start|>" not in rendered and "<|box_end|>" not in rendered
    assert parse(plain(hostile), 1).boxes == {}


# -- streaming ------------------------------------------------------------------------------

STREAMED = [
    "Revenue was 12 [2]<|box_start|>(120,340),(560,400)<|box_end|>, costs 3 [1] (10,20),(30,40).",
    "Up [1]  (100, 200) , (300, 400) (500,600),(700,800) then [2] 2015 and [3",
    "A <|object_ref_start|>table<|object_ref_end|> [1]<|box_start|>bad<|box_end|> x <|box",
    "Trailing blanks   [2] (1,2),(3,4)   \n[1] <|box_start|>(1,2),(30,40)<|box_end|>",
]


@pytest.mark.parametrize("text", STREAMED)
def test_streamed_chunks_never_show_markup_and_add_up_to_the_clean_text(text: str) -> None:
    splits = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    splits += [[text[i : i + n] for i in range(0, len(text), n)] for n in (1, 2, 3, 5, 8)]
    for chunks in splits:
        f = BoxFilter()
        shown = [f.feed(c) for c in chunks] + [f.flush()]
        assert "".join(shown) == clean(text) == f.sent
        for so_far in itertools.accumulate(shown):
            assert not any(m in so_far for m in MARKERS) and "(120,340)" not in so_far


# -- mapping and drawing --------------------------------------------------------------------


def test_boxes_map_onto_the_stored_image() -> None:
    assert to_pixels((100, 250, 500, 1000), (850, 1100)) == (85, 275, 425, 1100)
    assert to_pixels((0, 0, 1000, 1000), (425, 550)) == (0, 0, 425, 550)
    # Under a pixel across on a small image: dropped; no image size: nothing.
    assert page_boxes([(100, 100, 101, 500), (100, 100, 500, 500)], (300, 300)) == (
        (30, 30, 150, 150),
    )
    assert page_boxes([(100, 100, 500, 500)], (0, 0)) == ()


def test_draw_boxes_draws_on_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "page.png"
    Image.new("RGB", (400, 500), "white").save(path)
    drawn = draw_boxes(path, [(100, 200, 300, 400)])
    assert drawn.size == (400, 500)
    assert drawn.getpixel((100, 300)) == RED and drawn.getpixel((200, 399)) == RED  # the outline
    assert drawn.getpixel((200, 300)) == (255, 255, 255)  # inside: the page as it was
    assert drawn.getpixel((50, 50)) == (255, 255, 255)
    with Image.open(path) as stored:
        assert stored.getpixel((100, 300)) == (255, 255, 255)  # the stored image is untouched


# -- regions from a similarity map ----------------------------------------------------------


def test_the_region_surrounds_the_best_patches_padded_by_one() -> None:
    rel = np.random.default_rng(0).uniform(0, 0.5, (20, 10))
    rel[5:7, 3:7] = 1.0  # 8 patches: the top 4% of 200
    box = best_region(rel, (1000, 2000), max_pixels=10**9)
    # Every cell is 100x100 pixels: rows 5-6 and columns 3-6, and one cell around them.
    assert box == (200, 400, 800, 800)
    assert best_region(rel, (1000, 2000), max_pixels=99 * 99) is None  # not even one cell
    assert best_region(np.zeros((20, 10)), (1000, 2000), 10**9) is None  # a flat map


def test_a_spread_out_map_gives_the_densest_window_within_the_limit() -> None:
    rel = np.random.default_rng(0).uniform(0, 0.1, (20, 20))
    rel[2, 2] = 1.0  # alone in its corner
    rel[14:17, 12:16] = 0.9  # a cluster
    limit = 300 * 300
    box = best_region(rel, (1000, 1000), max_pixels=limit)
    assert box is not None
    x1, y1, x2, y2 = box
    assert (x2 - x1) * (y2 - y1) <= limit
    assert x1 <= 12 * 50 and x2 >= 16 * 50 and y1 <= 14 * 50 and y2 >= 17 * 50  # the cluster
    # Never more than a quarter of the page, whatever the budget.
    box = best_region(rel, (1000, 1000), max_pixels=10**9)
    assert box is not None and (box[2] - box[0]) * (box[3] - box[1]) <= 250_000


# -- the answerers: crops in the prompt, inside the budget ----------------------------------


def _page_with_region(tmp_path: Path, n: int, region: tuple[int, int, int, int]) -> ShownPage:
    path = tmp_path / f"page{n}.png"
    image = Image.new("RGB", (850, 1100), "white")
    image.paste((20, 20, 20), region)  # something to see in the crop
    image.save(path)
    return ShownPage(
        doc_id=f"{n:064x}",
        source=f"doc{n}.pdf",
        page=n,
        score=1.0,
        image=str(path),
        size=(850, 1100),
        regions=(region,),
    )


def test_the_local_answerer_gets_each_page_then_its_crop_inside_the_budget(
    tiny_generator: Generator, tmp_path: Path
) -> None:
    gen = copy.copy(tiny_generator)
    gen.visual_token_budget, gen.min_pixels, gen.max_pixels = 40, 4 * 784, 16 * 784
    pages = [_page_with_region(tmp_path, n, (56, 56, 112, 168)) for n in (1, 2)]  # 2x4 tokens
    inputs = gen.prepare("What is the total?", pages)
    grids = inputs["image_grid_thw"].tolist()
    assert len(grids) == 4  # page 1, its crop, page 2, its crop
    assert grids[1] == grids[3] == [1, 112 // 14, 56 // 14]  # at full resolution
    tokens = [t * h * w // 4 for t, h, w in grids]
    assert sum(tokens) <= 40 and int((inputs["input_ids"] == gen.image_token_id).sum()) <= 40
    assert tokens[0] <= 12 < 16  # the pages gave the crops their share
    text = gen.processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<|vision_start|>") == 4
    assert "A crop of page [1] at full resolution" in text and "region (65,50),(132,153)" in text
    # Without regions, as before: two images, the per-page cap.
    plain_pages = [replace(p, regions=()) for p in pages]
    assert len(gen.prepare("q", plain_pages)["image_grid_thw"]) == 2


def test_the_remote_answerer_sends_each_page_then_its_crop(tmp_path: Path) -> None:
    answerer = RemoteAnswerer(
        None,  # type: ignore[arg-type]  # building the messages talks to no server
        url="http://127.0.0.1:9/v1",
        model="m",
        min_pixels=4 * 784,
        max_pixels=64 * 784,
        visual_token_budget=96,
        max_new_tokens=8,
        temperature=0.0,
        timeout=1.0,
    )
    pages = [_page_with_region(tmp_path, n, (100, 100, 212, 212)) for n in (1, 2)]
    content = answerer.messages("q", pages)[-1]["content"]
    urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
    assert len(urls) == 4
    import base64
    import io

    sizes = [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).size for u in urls]
    assert sizes[1] == sizes[3] == (112, 112)  # the crops at full resolution
    cap = answerer.page_pixels(2, 2 * 112 * 112)
    assert cap < answerer.page_pixels(2) and all(w * h <= cap for w, h in sizes[::2])


# -- through the service, the API and the UI ------------------------------------------------


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service("boxes")
    svc.ingest([make_library(tmp_path_factory.mktemp("boxes-library"))])
    yield svc
    svc.close()


@pytest.fixture
def crops_on(service: PageRAG) -> Iterator[PageRAG]:
    original = service.settings
    yield service
    service.settings = original


BOXED = (
    "The total is 12 [2]<|box_start|>(100,200),(500,400)<|box_end|>",
    " and ", "[1](0,0)", ",(1000,1000) but [2](5,5),(5,9) and [1](1200,0),(10,10).",
)  # fmt: skip


def test_an_answer_carries_its_boxes_in_page_pixels(service: PageRAG) -> None:
    service.generator = ScriptedGenerator(*BOXED)
    stream = service.ask_stream("What was the total?", k=2)
    chunks, answer = list(stream), stream.answer
    assert "".join(chunks) == answer.text == "The total is 12 [2] and [1] but [2] and [1]."
    first, second = answer.citations
    assert first.cited and second.cited
    width, height = image_size(first.image)
    assert first.boxes == ((0, 0, width, height),)  # the only valid one of the three
    assert second.boxes == (to_pixels((100, 200, 500, 400), image_size(second.image)),)


def test_crops_come_from_the_similarity_map_and_fit_their_share(service: PageRAG) -> None:
    service.generator = generator = ScriptedGenerator("It is [1].")
    question = "What was the total in 2015?"
    answer = service.ask(question, k=2)
    [(_, pages, _)] = generator.calls
    s = service.settings
    limit = crop_limit(s.visual_token_budget, s.gen_max_pixels, 2)
    assert limit == 16 * 784  # the tiny settings' per-image cap
    for page, citation in zip(pages, answer.citations, strict=True):
        assert isinstance(page, ShownPage) and page.size == image_size(page.image)
        relevance = page_heatmap(service, question, page.doc_id, page.page).relevance
        assert page.regions == (best_region(relevance, page.size, limit),)
        assert citation.regions == page.regions  # the API reports what was sent
        x1, y1, x2, y2 = page.regions[0]
        assert 0 < (x2 - x1) * (y2 - y1) <= limit


def test_the_setting_and_text_search_turn_crops_off(
    crops_on: PageRAG, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = crops_on
    monkeypatch.setenv("PAGERAG_ANSWER_CROPS", "false")
    assert (
        Settings(_env_file=None).answer_crops is False
        and Settings.model_fields["answer_crops"].default
    )
    service.settings = service.settings.model_copy(update={"answer_crops": False})
    service.generator = generator = ScriptedGenerator("It is [1](10,10),(500,500).")
    answer = service.ask("What was the total?", k=2)
    [(_, pages, _)] = generator.calls
    assert all(p.regions == () for p in pages) and all(c.regions == () for c in answer.citations)
    assert answer.citations[0].boxes  # boxes do not depend on crops
    service.settings = service.settings.model_copy(update={"answer_crops": True})
    service.ask("Total 2015", k=2, mode="text")  # no question vectors: no map, no crop
    assert all(p.regions == () for p in generator.calls[-1][1])


def test_the_api_returns_boxes_and_regions(service: PageRAG) -> None:
    service.generator = ScriptedGenerator(*BOXED)
    with TestClient(create_app(service)) as client:
        answer = client.post("/api/v1/ask", json={"question": "Total?", "top_k": 2}).json()
        schema = client.get("/openapi.json").json()["components"]["schemas"]["CitationOut"]
    first, second = answer["citations"]
    image = service.library.images.path(first["doc_id"], first["page"])
    assert first["boxes"] == [[0, 0, *image_size(str(image))]]
    assert len(second["boxes"]) == 1 and len(first["regions"]) == 1
    assert answer["text"] == "The total is 12 [2] and [1] but [2] and [1]."
    assert schema["properties"]["boxes"]["items"]["prefixItems"] == [{"type": "integer"}] * 4


def test_the_ui_draws_the_boxes_on_the_cited_page(service: PageRAG) -> None:
    service.generator = ScriptedGenerator(*BOXED)
    work = WorkQueue()
    *_, view = actions.ask(service, "Total?", [], [], 2, [], False, work=work)
    image, caption = view.gallery[0]
    assert isinstance(image, Image.Image) and "cited" in caption
    assert image.getpixel((0, image.height // 2)) == RED  # the full-page box's left edge
    with Image.open(view.pages[0]["image"]) as stored:
        assert stored.convert("RGB").getpixel((0, stored.height // 2)) != RED
    mapped = actions.gallery(service, "Total?", view.pages, True, work=work)
    assert mapped[0][0].getpixel((0, image.height // 2)) == RED  # over the similarity map too
    assert isinstance(view.gallery[1][0], Image.Image)  # [2] has a box too


def test_the_tiny_models_answer_end_to_end_without_bogus_boxes(
    service: PageRAG, tiny_generator: Generator
) -> None:
    generator = copy.copy(tiny_generator)  # sampling: the random model writes varied tokens
    generator.temperature, generator.min_new_tokens, generator.max_new_tokens = 1.0, 24, 24
    service.generator = generator
    torch.manual_seed(0)
    stream = service.ask_stream("What was the total in 2015?", k=2)
    chunks, answer = list(stream), stream.answer
    assert "".join(chunks) == answer.text == clean(answer.text)
    assert "<|box" not in answer.text
    for c in answer.citations:
        width, height = image_size(c.image)
        assert len(c.regions) == 1
        for x1, y1, x2, y2 in (*c.boxes, *c.regions):
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert not c.boxes or c.cited
