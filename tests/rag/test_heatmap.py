"""Similarity maps over stored multivectors: orientation, scaling, overlays, lookups."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from rag.heatmap import (
    HeatmapError,
    overlay,
    page_heatmap,
    page_heatmaps,
    relevance,
    similarity_maps,
)
from rag.service import PageRAG
from tests.serving import make_library


def test_maps_follow_the_patch_grid_row_by_row() -> None:
    rows, cols, dim, offset = 3, 4, 8, 2
    rng = np.random.default_rng(0)
    page = rng.normal(size=(offset + rows * cols + 3, dim)).astype(np.float32)
    page /= np.linalg.norm(page, axis=1, keepdims=True)
    target = offset + 1 * cols + 2  # row 1, column 2
    query = np.stack([page[target], page[offset]])  # (2, dim)
    maps = similarity_maps(query, page, (rows, cols), offset)
    assert maps.shape == (2, rows, cols)
    assert np.unravel_index(maps[0].argmax(), maps[0].shape) == (1, 2)
    assert np.unravel_index(maps[1].argmax(), maps[1].shape) == (0, 0)
    expected = query @ page[offset : offset + rows * cols].T  # (2, rows * cols)
    np.testing.assert_allclose(maps.reshape(2, -1), expected, rtol=1e-5, atol=1e-6)


def test_relevance_is_scaled_to_unit_range_and_flat_maps_stay_flat() -> None:
    maps = np.array([[[1.0, 2.0], [3.0, 5.0]], [[1.0, 2.0], [3.0, 5.0]]])
    rel = relevance(maps)
    assert rel.min() == 0 and rel.max() == pytest.approx(1)
    assert np.all(relevance(np.ones((2, 3, 3))) == 0)


def test_overlay_keeps_the_page_size_and_marks_the_strong_region() -> None:
    page = Image.new("RGB", (200, 100), "white")
    rel = np.zeros((2, 4))
    rel[0, 3] = 1.0  # top right
    out = overlay(page, rel)
    assert out.size == page.size and out.mode == "RGB"
    blue = np.asarray(out, dtype=float)[..., 2]  # the ramp goes from blue-ish to yellow
    assert blue[:50, 150:].mean() < blue[50:, :100].mean() - 60
    assert blue[50:, :100].mean() > 200  # weak regions stay close to the page (white)


def test_bad_grids_are_reported() -> None:
    page = np.ones((10, 4), dtype=np.float32)
    with pytest.raises(HeatmapError, match="re-ingest"):
        similarity_maps(np.ones((2, 4), dtype=np.float32), page, (3, 4), 0)
    with pytest.raises(HeatmapError, match="re-ingest"):
        similarity_maps(np.ones((2, 4), dtype=np.float32), page, (0, 0), 0)


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service(
        "heatmap",
    )
    svc.ingest([make_library(tmp_path_factory.mktemp("heatmap-library"))])
    yield svc
    svc.close()


def test_stored_pages_are_mapped_with_their_search_score(service: PageRAG) -> None:
    hits = service.search("Costs 2015", 3, mode="visual")  # MaxSim scores
    maps = page_heatmaps(service, "Costs 2015", [(h.doc_id, h.page) for h in hits])
    for hit, hmap in zip(hits, maps, strict=True):
        with Image.open(hit.image) as page:
            assert hmap.image.size == page.size
        assert hmap.score == pytest.approx(hit.score, rel=1e-5)
        assert hmap.relevance.shape == hit.grid
        assert hmap.relevance.min() >= 0 and hmap.relevance.max() <= 1
    with pytest.raises(HeatmapError, match="no page 9"):
        page_heatmap(service, "Costs", hits[0].doc_id, 9)
