"""Pooling (row bands, token clusters), the prefetch, and batched parallel uploads to a server."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from rag.config import Settings
from rag.index import EdgeIndex, ServerIndex, schema
from rag.index.base import PageIndex
from rag.index.pooling import (
    FALLBACK_BANDS,
    ROW_GROUP,
    image_grid,
    pool_clusters,
    pool_rows,
)
from rag.index.server import upload_batches
from rag.types import PageEmbedding

from .test_contract import make_corpus, oracle, unit_rows


def test_pool_rows_averages_bands_of_grid_rows_only() -> None:
    rng = np.random.default_rng(0)
    rows, cols, offset, suffix = 5, 3, 4, 2
    vectors = rng.normal(size=(offset + rows * cols + suffix, 128)).astype(np.float32)
    emb = PageEmbedding(vectors, (rows, cols), offset)
    pooled = pool_rows(emb, group=2)
    assert pooled.shape == (3, 128) and pooled.dtype == np.float32  # 2 + 2 + 1 rows
    grid = vectors[offset : offset + rows * cols].reshape(rows, cols, 128)
    for band, (r0, r1) in zip(pooled, [(0, 2), (2, 4), (4, 5)], strict=True):
        mean = grid[r0:r1].reshape(-1, 128).mean(0)
        np.testing.assert_allclose(band, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    # The prefix and suffix tokens play no part.
    changed = vectors.copy()
    changed[:offset] = 0
    changed[-suffix:] = 7
    np.testing.assert_array_equal(pool_rows(PageEmbedding(changed, (rows, cols), offset)), pooled)


def test_pool_rows_default_on_a_colqwen2_page() -> None:
    vectors = unit_rows(np.random.default_rng(1), 4 + 24 * 31 + 7)
    pooled = pool_rows(PageEmbedding(vectors, (24, 31), 4))
    assert pooled.shape == (24 // ROW_GROUP, 128)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("grid", "offset", "n"), [((16, 40), 10, 400), ((0, 0), 0, 30), ((2, 2), -1, 10)]
)
def test_pool_rows_falls_back_to_runs_of_rows(grid: tuple[int, int], offset: int, n: int) -> None:
    vectors = unit_rows(np.random.default_rng(2), n)
    emb = PageEmbedding(vectors, grid, offset)
    assert image_grid(emb) is None  # the grid does not fit the vectors
    pooled = pool_rows(emb)
    assert pooled.shape == (min(FALLBACK_BANDS, n), 128)
    first = vectors[: len(np.array_split(np.arange(n), FALLBACK_BANDS)[0])].mean(0)
    np.testing.assert_allclose(pooled[0], first / np.linalg.norm(first), rtol=1e-5, atol=1e-6)
    assert len(pool_rows(PageEmbedding(vectors[:3], (0, 0), 0))) == 3  # fewer rows than bands


def test_pool_rows_of_zero_rows_stays_finite() -> None:
    pooled = pool_rows(PageEmbedding(np.zeros((4 + 6, 128), np.float32), (2, 3), 4))
    assert np.isfinite(pooled).all() and not pooled.any()


def test_pool_clusters_starts_from_the_row_bands() -> None:
    vectors = unit_rows(np.random.default_rng(3), 4 + 24 * 31 + 7)
    emb = PageEmbedding(vectors, (24, 31), 4)
    np.testing.assert_array_equal(pool_clusters(emb, iterations=0), pool_rows(emb))
    pooled = pool_clusters(emb)
    assert pooled.shape == (12, 128) and pooled.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(pool_clusters(emb), pooled)  # deterministic


def test_pool_clusters_separate_what_row_bands_mix() -> None:
    # Every patch row holds two kinds of content side by side (say a table and a figure):
    # every row band is their blend, while the clusters find each kind on its own.
    rng = np.random.default_rng(4)
    a, b = unit_rows(rng, 2)
    rows, cols = 8, 10
    kinds = np.where(np.arange(cols) < 5, 0, 1)  # left half a, right half b
    grid = np.stack([a, b])[np.tile(kinds, rows)]  # (rows * cols, d)
    tokens = unit_rows(rng, rows * cols, 20 * grid)  # each token near its kind
    emb = PageEmbedding(tokens, (rows, cols), 0)

    def best(pooled: np.ndarray, kind: np.ndarray) -> float:
        return float((pooled @ kind).max())

    bands, clusters = pool_rows(emb), pool_clusters(emb)
    assert max(best(bands, a), best(bands, b)) < 0.8  # blends
    assert min(best(clusters, a), best(clusters, b)) > 0.95  # one centroid per kind


def test_pool_clusters_without_a_grid_and_of_zero_rows() -> None:
    vectors = unit_rows(np.random.default_rng(5), 40)
    pooled = pool_clusters(PageEmbedding(vectors, (0, 0), 0))
    assert pooled.shape == (FALLBACK_BANDS, 128) and np.isfinite(pooled).all()
    zeros = pool_clusters(PageEmbedding(np.zeros((10, 128), np.float32), (2, 3), 4))
    assert np.isfinite(zeros).all() and not zeros.any()


def test_settings_defaults_match_the_index_defaults(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.prefetch_limit == schema.PREFETCH_LIMIT
    assert settings.hnsw_ef == schema.HNSW_EF


@pytest.mark.parametrize("backend", ["edge", "memory"])
@pytest.mark.parametrize("hnsw_ef", [None, 64])
def test_prefetch_then_exact_rerank(backend: str, hnsw_ef: int | None, tmp_path: Path) -> None:
    corpus = make_corpus(seed=2, clustered=True)  # 30 pages
    index: PageIndex
    if backend == "edge":
        index = EdgeIndex(tmp_path, prefetch_limit=4, hnsw_ef=hnsw_ef)
    else:
        index = ServerIndex.local(None, prefetch_limit=4, hnsw_ef=hnsw_ef)
    with index:  # type: ignore[attr-defined]
        index.upsert(corpus.records, corpus.embeddings)
        rng = np.random.default_rng(5)
        for target in (3, 17, 28):
            emb = corpus.embeddings[target]
            rows = emb.vectors[emb.image_offset + rng.choice(20, size=8, replace=False)]
            query = unit_rows(rng, 8, 4 * rows)  # near one region of the target page
            hits = index.search(query, 3)
            assert len(hits) == 3
            record = corpus.records[target]
            assert (hits[0].doc_id, hits[0].page) == (record.doc_id, record.page)
            # Whatever the prefetch kept gets exact MaxSim scores.
            scores = {(d, p): s for d, p, s in oracle(corpus, query)}
            for hit in hits:
                assert hit.score == pytest.approx(scores[hit.doc_id, hit.page], rel=1e-3, abs=1e-2)


def test_bad_search_parameters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hnsw_ef"):
        EdgeIndex(tmp_path, hnsw_ef=0)
    with pytest.raises(ValueError, match="upload_workers"):
        ServerIndex.local(None, upload_workers=0)


# -- uploads ------------------------------------------------------------------------------


class Flaky:
    """A `send` that fails the first `failures` calls for a batch with `error`."""

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ConnectionError("connection reset")
        self.sent: list[int] = []
        self.calls: dict[int, int] = {}
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, batch: list[int]) -> None:
        with self._lock:
            self.threads.add(threading.current_thread().name)
            key = batch[0]
            self.calls[key] = self.calls.get(key, 0) + 1
            if self.calls[key] <= self.failures:
                raise self.error
            self.sent.extend(batch)


@pytest.mark.parametrize("workers", [1, 4])
def test_upload_batches_sends_everything_once(workers: int) -> None:
    batches = [list(range(i, i + 3)) for i in range(0, 30, 3)]
    send = Flaky()
    upload_batches(send, batches, workers)
    assert sorted(send.sent) == list(range(30))
    if workers > 1:
        assert all(name.startswith("qdrant-up") for name in send.threads)


def test_upload_batches_retries_transient_errors() -> None:
    send = Flaky(failures=2)
    upload_batches(send, [[1], [2]], workers=2, retries=3, backoff_s=0)
    assert sorted(send.sent) == [1, 2] and send.calls == {1: 3, 2: 3}
    too_flaky = Flaky(failures=5)
    with pytest.raises(ConnectionError):
        upload_batches(too_flaky, [[1]], workers=1, retries=2, backoff_s=0)
    assert too_flaky.calls == {1: 3}


class Rejected(Exception):
    status_code = 400  # as qdrant-client's UnexpectedResponse: a bad request stays bad


@pytest.mark.parametrize("error", [Rejected("bad vector"), ValueError("bad input")])
def test_upload_batches_raises_permanent_errors_at_once(error: Exception) -> None:
    send = Flaky(failures=1, error=error)
    with pytest.raises(type(error)):
        upload_batches(send, [[1]], workers=1, retries=3, backoff_s=0)
    assert send.calls == {1: 1}


def test_server_upsert_goes_through_upload_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = make_corpus()
    seen: list[tuple[int, int]] = []

    def spy(send, batches, workers, **_kw):  # type: ignore[no-untyped-def]
        seen.append((len(batches), workers))
        for batch in batches:
            send(batch)

    monkeypatch.setattr("rag.index.server.upload_batches", spy)
    with ServerIndex.local(None, batch_size=8, upload_workers=3) as index:
        index.upsert(corpus.records, corpus.embeddings)
        assert index.count() == len(corpus.records)
    assert seen == [(4, 1)]  # 30 pages in batches of 8; local mode sends one at a time


class _Failing:
    """Wraps an EdgeShard whose optimize() fails with `message`."""

    def __init__(self, shard: object, message: str) -> None:
        self._inner, self._message = shard, message

    def optimize(self) -> bool:
        raise Exception(self._message)  # as qdrant_edge does: a bare Exception

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_optimize_without_disk_space_warns_and_keeps_the_index(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = make_corpus()
    with EdgeIndex(tmp_path) as index:
        index.upsert(corpus.records, corpus.embeddings)
        real = index._shard
        index._shard = _Failing(  # type: ignore[assignment]
            real,
            "Service runtime error: Not enough space available for optimization, "
            "needed: 36.86 GiB, available: 35.04 GiB",
        )
        assert index.optimize() is False
        assert "not optimised" in caplog.text and "twice the index" in caplog.text
        assert index.count() == len(corpus.records)
        assert len(index.search(corpus.queries[0], 3)) == 3
        index._shard = _Failing(real, "something else broke")  # type: ignore[assignment]
        with pytest.raises(Exception, match="something else broke"):
            index.optimize()
        index._shard = real
