"""Backend-neutral pieces: ids, source paths, filters, payloads, pooling, the factory."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rag.index
from rag.config import Settings
from rag.index import EdgeIndex, ServerIndex, open_index, schema
from rag.index.pooling import pool_mean, pool_query
from rag.index.schema import (
    NAMESPACE,
    filter_conditions,
    normalize_path,
    path_prefixes,
    payload_to_hit,
    payload_to_record,
    point_id,
    record_to_payload,
    source_payload,
)
from rag.types import PageEmbedding, PageRecord, SearchFilter


def test_point_id_is_stable_and_distinct() -> None:
    assert point_id("abc", 1) == str(uuid.uuid5(NAMESPACE, "abc:1"))
    assert point_id("abc", 1) == point_id("abc", 1)
    assert len({point_id("abc", 1), point_id("abc", 2), point_id("abd", 1)}) == 3
    # Pinned: a changed namespace would silently duplicate every page on re-ingest.
    assert str(NAMESPACE) == "944471db-b43b-4c30-a808-6809f0deb56c"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a/b/c.pdf", "a/b/c.pdf"),
        ("./a/b/", "a/b"),
        ("a//b", "a/b"),
        ("a\\b\\c.pdf", "a/b/c.pdf"),
        ("./", ""),
        ("", ""),
    ],
)
def test_normalize_path(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


def test_path_prefixes_are_whole_components() -> None:
    assert path_prefixes(["a/b/c.pdf"]) == ["a", "a/b", "a/b/c.pdf"]
    assert path_prefixes(["./a/x.pdf", "a/y.pdf", "z.pdf"]) == ["a", "a/x.pdf", "a/y.pdf", "z.pdf"]
    assert "rep" not in path_prefixes(["reports/x.pdf"])


def test_source_payload_keeps_source_first_and_unique() -> None:
    payload = source_payload("b/x.pdf", ["a/x.pdf", "b/x.pdf"])
    assert payload["source"] == "b/x.pdf"
    assert payload["sources"] == ["b/x.pdf", "a/x.pdf"]
    assert set(payload["paths"]) == {"a", "a/x.pdf", "b", "b/x.pdf"}


def test_filter_conditions() -> None:
    assert filter_conditions(None) == []
    assert filter_conditions(SearchFilter()) == []
    assert filter_conditions(SearchFilter(source_prefix="./")) == []
    filters = SearchFilter(doc_ids=("d1", "d2"), source_prefix="./reports/2015/", tags=("t",))
    assert filter_conditions(filters) == [
        ("doc_id", ["d1", "d2"]),
        ("paths", ["reports/2015"]),
        ("tags", ["t"]),
    ]


def _record(**kw: Any) -> PageRecord:
    base: dict[str, Any] = dict(
        doc_id="d" * 64, page=2, pages=5, source="r/a.pdf", title="A", image="/img/2.png",
        width=100, height=200, grid=(4, 5), image_offset=3, text="hello", tags=("x", "y"),
        sources=("r/a.pdf", "s/a.pdf"), ingested_at="2025-01-01T00:00:00Z",
    )  # fmt: skip
    return PageRecord(**{**base, **kw})


def test_payload_round_trip() -> None:
    record = _record()
    payload = record_to_payload(record)
    assert payload["paths"] == ["r", "r/a.pdf", "s", "s/a.pdf"]
    assert payload["grid"] == [4, 5]
    assert payload_to_record(payload) == record
    hit = payload_to_hit(payload, 1.5)
    assert (hit.doc_id, hit.page, hit.score, hit.grid, hit.image_offset) == (
        record.doc_id, 2, 1.5, (4, 5), 3,
    )  # fmt: skip
    # A record with no `sources` is stored as seen under its `source`.
    assert record_to_payload(_record(sources=()))["sources"] == ["r/a.pdf"]


def test_pool_mean_is_the_unit_mean() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(20, 128)).astype(np.float32)
    emb = PageEmbedding(vectors=rows, grid=(4, 4), image_offset=4)
    pooled = pool_mean(emb)
    assert pooled.shape == (128,) and pooled.dtype == np.float32
    assert np.linalg.norm(pooled) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(pooled * np.linalg.norm(rows.mean(0)), rows.mean(0), rtol=1e-5)
    np.testing.assert_array_equal(pool_query(rows), pooled)
    assert not np.any(pool_query(np.zeros((3, 128), np.float32)))  # no NaN from a zero mean


def test_open_index_defaults_to_edge(tmp_path: Path) -> None:
    index = open_index(Settings(data_dir=tmp_path, prefetch_limit=7))
    try:
        assert isinstance(index, EdgeIndex)
        assert index.backend == "qdrant-edge"
        assert index.path == tmp_path / "index"
        assert index.prefetch_limit == 7
        assert index.storage == schema.DEFAULT_STORAGE  # unset: a new index gets the default
    finally:
        index.close()


def test_open_index_uses_the_server_url(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_connect(url: str, **kwargs: Any) -> str:
        seen.update(url=url, **kwargs)
        return "server"

    monkeypatch.setattr(rag.index.ServerIndex, "connect", staticmethod(fake_connect))
    settings = Settings(
        qdrant_url="http://qdrant:6333", qdrant_api_key="k", qdrant_collection="c",
        qdrant_shards=3, qdrant_replicas=2, prefetch_limit=50,
    )  # fmt: skip
    assert open_index(settings) == "server"
    assert seen == dict(
        url="http://qdrant:6333", api_key="k", collection="c", prefetch_limit=50,
        hnsw_ef=1024, prefer_grpc=False, upload_workers=4,
        shard_number=3, replication_factor=2, storage=None,
    )  # fmt: skip
    assert ServerIndex.backend == "qdrant-server"
