"""Qdrant Edge specifics: one process per directory, optimize(), WAL replay, threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rag.index import EdgeIndex
from rag.index.base import IndexUnavailableError
from rag.index.edge import _reads_allocate
from rag.index.schema import DIM
from rag.types import PageEmbedding, PageRecord, SearchFilter

from .test_contract import make_corpus, unit_rows


def big_corpus(n_pages: int, rows: int, seed: int = 0):
    """Enough float16 data (> Qdrant's ~10 MB indexing threshold) for optimize() to index."""
    rng = np.random.default_rng(seed)
    records, embeddings = [], []
    for page in range(1, n_pages + 1):
        center = 3 * rng.normal(size=DIM).astype(np.float32) / np.sqrt(DIM)
        embeddings.append(PageEmbedding(unit_rows(rng, rows, center), (16, 40), 10))
        records.append(PageRecord("b" * 64, page, n_pages, "big.pdf", "", "", 1, 1, (16, 40), 10))
    return records, embeddings


def test_second_open_fails_clearly(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path) as index:
        with pytest.raises(IndexUnavailableError, match="another PageRAG process"):
            EdgeIndex(tmp_path)
        assert index.count() == 0
        assert set(index._shard.info().payload_schema) == {
            "doc_id",
            "source",
            "paths",
            "tags",
            "page",
        }
    EdgeIndex(tmp_path).close()  # free again once closed


def test_unflushed_writes_survive_reopen(tmp_path: Path) -> None:
    corpus = make_corpus()
    index = EdgeIndex(tmp_path)
    index.upsert(corpus.records, corpus.embeddings)
    index.delete_document("f" * 64)
    index.close()  # no flush(): the WAL replays on load
    with EdgeIndex(tmp_path) as reopened:
        assert reopened.count() == len(corpus.records) - 7
        assert reopened.count(SearchFilter(doc_ids=("f" * 64,))) == 0


def test_meta_file_is_written_atomically(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path) as index:
        index.write_meta({"dim": 128})
        index.write_meta({"dim": 128, "model": "m"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "shard"]
    assert (tmp_path / "meta.json").read_text().startswith("{")


def test_optimize_builds_hnsw_and_search_stays_right(tmp_path: Path) -> None:
    records, embeddings = big_corpus(120, 400)  # 120 x 400 x 128 float16 = 12 MB
    # float16: 12 MB passes Qdrant's indexing threshold (turbo8 codes would be half of it).
    with EdgeIndex(tmp_path, prefetch_limit=10, storage="float16") as index:
        index.upsert(records, embeddings)
        rng = np.random.default_rng(3)
        queries = [
            (target, unit_rows(rng, 12, 4 * embeddings[target].vectors[:12]))
            for target in (0, 57, 119)
        ]
        before = [index.search_exact(q, 5) for _, q in queries]
        assert index.optimize() is True
        assert index._shard.info().indexed_vectors_count > 0
        assert index.optimize() is False  # nothing left to do
        for (target, q), exact in zip(queries, before, strict=True):
            assert index.search_exact(q, 5) == exact
            hits = index.search(q, 5)  # 120 pages > 10: HNSW prefetch, then exact MaxSim
            assert hits[0].page == target + 1
            assert hits[0] == exact[0]


def test_concurrent_searches(tmp_path: Path) -> None:
    corpus = make_corpus()
    with EdgeIndex(tmp_path) as index:
        index.upsert(corpus.records, corpus.embeddings)
        expected = [index.search(q, 5) for q in corpus.queries]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda i: index.search(corpus.queries[i % 3], 5), range(24)))
        assert all(r == expected[i % 3] for i, r in enumerate(results))


def test_a_metadata_update_while_pages_are_upserted_loses_nothing(tmp_path: Path) -> None:
    """PATCH /documents/{id} writes without the ingestion's write lock (rag/service.py
    `update_document`): the shard must take both writers at once."""
    import time

    from .test_contract import D

    corpus = make_corpus()
    index = EdgeIndex(tmp_path / "index")
    index.upsert(corpus.records, corpus.embeddings)
    others = [
        (r, e) for r, e in zip(corpus.records, corpus.embeddings, strict=True) if r.doc_id != D
    ]
    end = time.monotonic() + 2

    def upserts() -> None:
        while time.monotonic() < end:
            index.upsert([r for r, _ in others], [e for _, e in others])

    def updates() -> int:
        n = 0
        while time.monotonic() < end:
            index.set_document_fields(D, {"tags": [f"t{n}"]})
            n += 1
        index.set_document_fields(D, {"tags": ["final"]})
        return n

    with ThreadPoolExecutor(2) as pool:
        writing, updating = pool.submit(upserts), pool.submit(updates)
        writing.result()
        assert updating.result() > 0
    index.flush()
    assert index.count() == len(corpus.records)
    assert index.count(SearchFilter(tags=("final",))) == sum(r.doc_id == D for r in corpus.records)
    index.close()
    reopened = EdgeIndex(tmp_path / "index")
    assert reopened.count() == len(corpus.records)  # reopens whole
    reopened.close()


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_turbo_codes_are_cached_except_on_tmpfs(tmp_path: Path, where: str) -> None:
    """TurboQuant codes are searched 3.6x faster Cached (rag/index/edge.py `_memory`), but
    populating them on tmpfs allocates the files' holes (SIGBUS on a full one): Cold there."""
    import json
    import tempfile

    base = tmp_path
    if where == "tmpfs":
        if not Path("/dev/shm").is_dir() or not _reads_allocate(Path("/dev/shm")):
            pytest.skip("no tmpfs at /dev/shm")
        base = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        EdgeIndex(base / "index", storage="turbo8").close()
        config = json.loads((base / "index" / "shard" / "edge_config.json").read_text())
        vectors = config["vectors"]
        assert vectors["colqwen"]["datatype"] == "turbo8"
        assert vectors["colqwen"]["memory"] == ("cold" if where == "tmpfs" else "cached")
        assert vectors["clusters"]["memory"] == "cold"  # float16: Cold everywhere
    finally:
        if where == "tmpfs":
            import shutil

            shutil.rmtree(base, ignore_errors=True)
