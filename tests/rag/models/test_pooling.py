"""Index-time token pooling (PAGERAG_POOL_FACTOR): colpali-engine's hierarchical pooler on the
image rows, the patch map that puts them back on the grid, and a pooled index end to end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rag import patchmap
from rag.crops import shown_page
from rag.heatmap import page_heatmap, similarity_maps
from rag.index.base import IndexMismatchError
from rag.models.retriever import Retriever, pool_page
from rag.service import PageRAG
from rag.types import PageEmbedding
from tests.serving import make_library

FACTOR = 2


def _page(rows: int = 6, cols: int = 8, prefix: int = 3, suffix: int = 4) -> PageEmbedding:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(prefix + rows * cols + suffix, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return PageEmbedding(vectors, (rows, cols), prefix)


def test_only_the_image_rows_are_pooled_and_the_map_rebuilds_the_grid() -> None:
    emb = _page()
    n = 48
    pooled = pool_page(emb, 3)
    kept = len(pooled.vectors) - 3 - 4
    assert 1 <= kept <= n // 3 and pooled.grid == emb.grid and pooled.image_offset == 3
    np.testing.assert_array_equal(pooled.vectors[:3], emb.vectors[:3])  # prefix as it was
    np.testing.assert_array_equal(pooled.vectors[-4:], emb.vectors[-4:])  # suffix too
    index = patchmap.decode(pooled.patch_map, n)
    assert index is not None and sorted(set(index.tolist())) == list(range(kept))
    # Each pooled row is the unit mean of the patches it stands for; rows in reading order.
    image = emb.vectors[3 : 3 + n]
    for row in range(kept):
        mean = image[index == row].mean(axis=0)
        np.testing.assert_allclose(pooled.vectors[3 + row], mean / np.linalg.norm(mean), atol=1e-5)
    firsts = [int(np.flatnonzero(index == row)[0]) for row in range(kept)]
    assert firsts == sorted(firsts)
    expanded = patchmap.expand(pooled.vectors, emb.grid, 3, pooled.patch_map)
    assert expanded is not None and expanded.shape == emb.vectors.shape
    np.testing.assert_array_equal(expanded[3 : 3 + n], pooled.vectors[3 + index])
    assert pool_page(emb, 1) is emb and pool_page(pooled, 3) is pooled  # off; already pooled


def test_patch_maps_take_one_byte_a_patch_up_to_256_rows() -> None:
    small, large = np.arange(300) % 256, np.arange(300)
    assert len(patchmap.encode(small)) == 400  # 300 bytes in base64
    assert len(patchmap.encode(large)) == 800  # uint16
    for m in (small, large):
        decoded = patchmap.decode(patchmap.encode(m), 300)
        assert decoded is not None
        np.testing.assert_array_equal(decoded, m)
    assert patchmap.decode(patchmap.encode(small), 299) is None
    assert patchmap.decode("not base64!", 300) is None


def test_a_pooled_page_maps_each_patch_by_its_cluster() -> None:
    emb = _page()
    pooled = pool_page(emb, 4)
    query = emb.vectors[3 + np.array([0, 20, 47])]  # (3, dim): three of the page's patches
    maps = similarity_maps(query, pooled.vectors, emb.grid, 3, pooled.patch_map)
    index = patchmap.decode(pooled.patch_map, 48)
    assert maps.shape == (3, 6, 8) and index is not None
    expected = query @ pooled.vectors[3 + index].T  # (3, 48)
    np.testing.assert_allclose(maps.reshape(3, -1), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="re-ingest"):
        similarity_maps(query, pooled.vectors, (6, 7), 3, pooled.patch_map)  # another grid


@pytest.fixture(scope="module")
def pooled(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service("pooled", pool_factor=FACTOR)
    report = svc.ingest([make_library(tmp_path_factory.mktemp("pooled-library"))])
    assert report.indexed_pages == 5 and not report.failed
    yield svc
    svc.close()


def _stored(service: PageRAG) -> list[tuple[str, int]]:
    return [(d.doc_id, n) for d in service.documents() for n in service.index.page_ids(d.doc_id)]


def test_pooled_ingestion_stores_about_half_the_patch_rows(
    pooled: PageRAG, tiny_retriever: Retriever
) -> None:
    for doc_id, number in _stored(pooled):
        hit = pooled.index.page(doc_id, number)
        vectors = pooled.index.page_vectors(doc_id, number)
        assert hit is not None and vectors is not None and hit.patch_map
        n = hit.grid[0] * hit.grid[1]
        index = patchmap.decode(hit.patch_map, n)
        assert index is not None
        rows = int(index.max()) + 1
        assert n // (2 * FACTOR) <= rows <= n // FACTOR
        # Prefix and suffix rows stay: the page lost exactly n - rows image rows.
        with Image.open(hit.image) as image:
            unpooled = tiny_retriever.embed_pages([image.convert("RGB")])[0]
        assert len(vectors) == len(unpooled.vectors) - n + rows


def test_search_finds_the_page_a_query_was_taken_from(
    pooled: PageRAG, tiny_retriever: Retriever
) -> None:
    pages = _stored(pooled)
    assert len(pages) == 5
    for doc_id, number in pages:
        hit = pooled.index.page(doc_id, number)
        assert hit is not None
        with Image.open(hit.image) as image:
            emb = tiny_retriever.embed_pages([image.convert("RGB")])[0]
        n = emb.grid[0] * emb.grid[1]
        query = emb.vectors[emb.image_offset : emb.image_offset + n]  # its unpooled patches
        found = pooled.index.search(query, 1)
        assert (found[0].doc_id, found[0].page) == (doc_id, number)


def test_a_pooled_page_gets_a_heatmap_png(pooled: PageRAG, tmp_path: Path) -> None:
    hit = pooled.search("Costs 2015", 1, mode="text")[0]
    hmap = page_heatmap(pooled, "Costs 2015", hit.doc_id, hit.page)
    assert hmap.relevance.shape == hit.grid and 0 <= hmap.relevance.min() < hmap.relevance.max()
    out = tmp_path / "map.png"
    hmap.image.save(out)
    with Image.open(hit.image) as page, Image.open(out) as png:
        assert png.format == "PNG" and png.size == page.size


def test_a_pooled_page_gets_an_answer_crop(pooled: PageRAG) -> None:
    hit = pooled.search("Costs 2015", 1, mode="text")[0]
    vectors = pooled.index.page_vectors(hit.doc_id, hit.page)
    shown = shown_page(hit, pooled.embed_query("Costs 2015"), vectors, max_pixels=10**6)
    assert len(shown.regions) == 1
    x1, y1, x2, y2 = shown.regions[0]
    assert 0 <= x1 < x2 <= shown.size[0] and 0 <= y1 < y2 <= shown.size[1]


def test_an_index_refuses_another_pool_factor(
    make_serving_service: Callable[..., PageRAG], tiny_retriever: Retriever
) -> None:
    first = make_serving_service("pool-guard", pool_factor=FACTOR)
    settings = first.settings
    first.close()  # Edge holds its shard while open
    for factor in (1, 3):
        other = settings.model_copy(update={"pool_factor": factor})
        with pytest.raises(
            IndexMismatchError, match=f"pool_factor: index has 2, settings say {factor}"
        ):
            PageRAG(other, retriever=tiny_retriever)
    PageRAG(settings, retriever=tiny_retriever).close()  # the factor it was built with opens
