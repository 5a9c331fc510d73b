"""One contract, every backend: Qdrant Edge, qdrant-client local mode (memory and directory) and,
when PAGERAG_QDRANT_URL is set, a real Qdrant server (`-m qdrant_server`).

The oracle for scores is colpali-engine's `score_multi_vector` on the page vectors the index
keeps (`page_vectors`: the float16 values, or the decoded TurboQuant codes of a "turbo8" index)
and the float16-rounded query Qdrant scores (core.py rounds it so every backend agrees). So
"exact" means exact MaxSim over the stored representation, whichever `PAGERAG_VECTOR_STORAGE`
chose. Tolerance rtol=1e-3, atol=1e-2 as for any float16 data: Qdrant sums in its own (SIMD)
order. Observed here: below 1e-6 on the same rounded values, 1.5e-4 against a float32 query.
Ids and order must match exactly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from colpali_engine.models import ColQwen2Processor
from qdrant_client import QdrantClient

from rag.index import EdgeIndex, ServerIndex
from rag.index.base import IndexMismatchError, PageIndex, check_meta
from rag.index.schema import DEFAULT_STORAGE, DIM, storage_rows
from rag.index.text import RRF_K
from rag.types import PageEmbedding, PageRecord, SearchFilter

RTOL, ATOL = 1e-3, 1e-2

# doc_id -> (source, extra sources, tags, pages)
DOCS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], int]] = {
    "d" * 64: ("reports/2015/annual.pdf", (), ("finance",), 10),
    "e" * 64: ("reports/2016/annual.pdf", ("archive/2016.pdf",), ("finance", "annual"), 8),
    "f" * 64: ("rep/notes.pdf", (), ("misc",), 7),
    "a" * 64: ("./papers/colpali.pdf", (), (), 5),
}
N_PAGES = sum(d[3] for d in DOCS.values())  # 30


@dataclass
class Corpus:
    records: list[PageRecord]
    embeddings: list[PageEmbedding]
    queries: list[np.ndarray]


def unit_rows(rng: np.random.Generator, n: int, center: np.ndarray | None = None) -> np.ndarray:
    rows = rng.normal(size=(n, DIM)).astype(np.float32)
    if center is not None:
        rows += center
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_corpus(seed: int = 0, clustered: bool = False) -> Corpus:
    """30 pages of 40-80 unit rows; clustered: every page drawn around its own center."""
    rng = np.random.default_rng(seed)
    records, embeddings = [], []
    for doc_id, (source, extra, tags, pages) in DOCS.items():
        for page in range(1, pages + 1):
            grid = (int(rng.integers(5, 9)), int(rng.integers(6, 9)))
            offset = int(rng.integers(2, 8))
            n = offset + grid[0] * grid[1] + 2  # prefix tokens, patch grid, suffix tokens
            center = (
                3 * rng.normal(size=DIM).astype(np.float32) / np.sqrt(DIM) if clustered else None
            )
            vectors = unit_rows(rng, n, center)
            embeddings.append(PageEmbedding(vectors=vectors, grid=grid, image_offset=offset))
            records.append(
                PageRecord(
                    doc_id=doc_id,
                    page=page,
                    pages=pages,
                    source=source,
                    title=f"Title {source}",
                    image=f"/data/pages/{doc_id[:8]}/{page}.png",
                    width=1190,
                    height=1684,
                    grid=grid,
                    image_offset=offset,
                    text=f"text of page {page}",
                    tags=tags,
                    sources=(source, *extra),
                    ingested_at="2025-01-01T00:00:00Z",
                )
            )
    queries = [unit_rows(rng, 12) for _ in range(3)]
    return Corpus(records, embeddings, queries)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus()


def oracle(
    corpus: Corpus,
    query: np.ndarray,
    keep: Callable[[PageRecord], bool] = lambda r: True,
    index: PageIndex | None = None,
):
    """[(doc_id, page, score)] best first, by colpali-engine on the stored values: those
    `index` gives back (`page_vectors`), without one the float16 values."""
    chosen = [(r, e) for r, e in zip(corpus.records, corpus.embeddings, strict=True) if keep(r)]
    if not chosen:
        return []
    if index is None:
        pages = [torch.from_numpy(storage_rows(e.vectors)) for _, e in chosen]
    else:
        stored = [index.page_vectors(r.doc_id, r.page) for r, _ in chosen]
        assert all(v is not None for v in stored)
        pages = [torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in stored]
    # batch_size=1: every page scored on its own, so no zero padding rows can enter a max.
    q = torch.from_numpy(storage_rows(query))  # Qdrant rounds the query to float16 as well
    scores = ColQwen2Processor.score_multi_vector([q], pages, batch_size=1, device="cpu")
    scores = scores[0].tolist()
    ranked = sorted(zip(chosen, scores, strict=True), key=lambda x: -x[1])
    return [(r.doc_id, r.page, s) for (r, _), s in ranked]


def assert_matches(hits, expected) -> None:
    assert [(h.doc_id, h.page) for h in hits] == [(d, p) for d, p, _ in expected]
    np.testing.assert_allclose(
        [h.score for h in hits], [s for _, _, s in expected], rtol=RTOL, atol=ATOL
    )


# -- backends -------------------------------------------------------------------------------

BACKENDS = [
    "edge",
    "memory",
    "local-path",
    pytest.param("server", marks=pytest.mark.qdrant_server),
]
Opener = Callable[..., PageIndex]


@pytest.fixture(params=BACKENDS)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """open(prefetch_limit=...) -> a fresh or reopened index at one fixed location."""
    kind: str = request.param
    url = os.environ.get("PAGERAG_QDRANT_URL")
    if kind == "server" and not url:
        pytest.skip("set PAGERAG_QDRANT_URL to run against a real Qdrant server")
    collection = f"pagerag_test_{uuid.uuid4().hex[:12]}"
    opened: list[PageIndex] = []

    def open_index(prefetch_limit: int = 200, storage: str | None = DEFAULT_STORAGE) -> PageIndex:
        kw = {"prefetch_limit": prefetch_limit, "storage": storage}
        if kind == "edge":
            index: PageIndex = EdgeIndex(tmp_path / "index", **kw)  # type: ignore[arg-type]
        elif kind == "memory":
            if opened:
                pytest.skip("an in-memory index cannot be reopened")
            index = ServerIndex.local(None, **kw)
        elif kind == "local-path":
            index = ServerIndex.local(tmp_path / "qdrant", **kw)
        else:
            index = ServerIndex.connect(
                str(url),
                api_key=os.environ.get("PAGERAG_QDRANT_API_KEY"),
                collection=collection,
                **kw,
            )
        opened.append(index)
        return index

    open_index.kind = kind  # type: ignore[attr-defined]
    yield open_index
    for index in opened:
        index.close()
    if kind == "server":
        client = QdrantClient(url=url, api_key=os.environ.get("PAGERAG_QDRANT_API_KEY"))
        client.delete_collection(collection)
        client.close()


@pytest.fixture
def index(opener: Opener, corpus: Corpus) -> PageIndex:
    idx = opener()
    idx.upsert(corpus.records, corpus.embeddings)
    return idx


# -- writes and counts ----------------------------------------------------------------------


def test_upsert_count_and_page_ids(index: PageIndex, corpus: Corpus) -> None:
    assert index.count() == N_PAGES
    for doc_id, (_, _, _, pages) in DOCS.items():
        assert index.page_ids(doc_id) == list(range(1, pages + 1))
    assert index.page_ids("0" * 64) == []


def test_reupsert_is_idempotent(index: PageIndex, corpus: Corpus) -> None:
    index.upsert(corpus.records[:7], corpus.embeddings[:7])
    index.upsert(corpus.records, corpus.embeddings)
    assert index.count() == N_PAGES
    q = corpus.queries[0]
    assert_matches(index.search(q, 5), oracle(corpus, q, index=index)[:5])


def test_upsert_rejects_bad_input(index: PageIndex, corpus: Corpus) -> None:
    rec, emb = corpus.records[0], corpus.embeddings[0]
    bad = [
        np.zeros((0, DIM), np.float32),
        np.ones((4, 64), np.float32),
        np.full((4, DIM), np.nan, np.float32),
    ]
    for vectors in bad:
        with pytest.raises(ValueError):
            index.upsert([rec], [PageEmbedding(vectors, emb.grid, emb.image_offset)])
    with pytest.raises(ValueError):
        index.upsert([rec], [])
    with pytest.raises(ValueError):
        index.search(np.ones((3, 7), np.float32), 3)
    assert index.count() == N_PAGES


# -- search ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 10, N_PAGES])
def test_search_is_exact_maxsim_below_prefetch_limit(
    index: PageIndex, corpus: Corpus, k: int
) -> None:
    for q in corpus.queries:
        expected = oracle(corpus, q, index=index)[:k]
        exact = index.search_exact(q, k)
        assert_matches(exact, expected)
        assert index.search(q, k) == exact  # same ids, same order, same scores


def test_search_exact_when_filter_leaves_few_pages(opener: Opener, corpus: Corpus) -> None:
    # 30 pages > prefetch_limit=12, but the filter leaves 10: the result must still be exact.
    index = opener(prefetch_limit=12)
    index.upsert(corpus.records, corpus.embeddings)
    filters = SearchFilter(doc_ids=("d" * 64,))
    q = corpus.queries[1]
    expected = oracle(corpus, q, lambda r: r.doc_id == "d" * 64, index)
    assert_matches(index.search(q, 10, filters), expected)


def test_two_stage_search_finds_the_target_page(opener: Opener) -> None:
    clustered = make_corpus(seed=1, clustered=True)
    index = opener(prefetch_limit=5)  # 30 pages: the prefetch really runs
    index.upsert(clustered.records, clustered.embeddings)
    rng = np.random.default_rng(7)
    for target in (0, 13, 29):
        rows = clustered.embeddings[target].vectors[rng.choice(40, size=12, replace=False)]
        query = unit_rows(rng, 12, 4 * rows)  # close to 12 rows of the target page
        hits = index.search(query, 3)
        record = clustered.records[target]
        assert (hits[0].doc_id, hits[0].page) == (record.doc_id, record.page)
        # The rerank is exact MaxSim on whatever the prefetch kept.
        scores = {(d, p): s for d, p, s in oracle(clustered, query, index=index)}
        for hit in hits:
            assert hit.score == pytest.approx(scores[hit.doc_id, hit.page], rel=RTOL, abs=ATOL)


def test_hits_carry_the_payload(index: PageIndex, corpus: Corpus) -> None:
    hit = index.search(corpus.queries[0], 1)[0]
    record = next(r for r in corpus.records if (r.doc_id, r.page) == (hit.doc_id, hit.page))
    assert hit.source == record.source
    assert hit.image == record.image
    assert hit.title == record.title
    assert hit.text == record.text
    assert hit.grid == record.grid
    assert hit.image_offset == record.image_offset
    assert index.search(corpus.queries[0], 0) == []


# -- filters --------------------------------------------------------------------------------

D, E, F, A = "d" * 64, "e" * 64, "f" * 64, "a" * 64
FILTERS = {
    "doc_ids": (SearchFilter(doc_ids=(D, F)), {D, F}),
    "prefix-dir": (SearchFilter(source_prefix="reports"), {D, E}),
    "prefix-slashes": (SearchFilter(source_prefix="./reports/2015/"), {D}),
    "prefix-is-component": (SearchFilter(source_prefix="rep"), {F}),
    "prefix-file": (SearchFilter(source_prefix="rep/notes.pdf"), {F}),
    "prefix-other-source": (SearchFilter(source_prefix="archive"), {E}),
    "prefix-dot-source": (SearchFilter(source_prefix="papers"), {A}),
    "prefix-none": (SearchFilter(source_prefix="repo"), set()),
    "tags": (SearchFilter(tags=("annual", "misc")), {E, F}),
    "combined": (SearchFilter(source_prefix="reports", tags=("finance",), doc_ids=(E, F)), {E}),
    "empty": (SearchFilter(), {D, E, F, A}),
    # Documents still being ingested are excluded by the service this way.
    "exclude": (SearchFilter(exclude_doc_ids=(D, A)), {E, F}),
    "exclude-combined": (SearchFilter(source_prefix="reports", exclude_doc_ids=(E,)), {D}),
    "exclude-and-include": (SearchFilter(doc_ids=(D, F), exclude_doc_ids=(F,)), {D}),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_filters(index: PageIndex, corpus: Corpus, name: str) -> None:
    filters, docs = FILTERS[name]
    assert index.count(filters) == sum(DOCS[d][3] for d in docs)
    q = corpus.queries[2]
    expected = oracle(corpus, q, lambda r: r.doc_id in docs, index)[:8]
    assert_matches(index.search(q, 8, filters), expected)
    assert_matches(index.search_exact(q, 8, filters), expected)


def test_delete_document(index: PageIndex, corpus: Corpus) -> None:
    index.delete_document(D)
    assert index.page_ids(D) == []
    assert index.count() == N_PAGES - DOCS[D][3]
    assert index.count(SearchFilter(doc_ids=(D,))) == 0
    assert all(h.doc_id != D for h in index.search(corpus.queries[0], N_PAGES))
    index.delete_document(D)  # deleting twice is harmless


def test_set_sources_moves_the_prefix_match(index: PageIndex, corpus: Corpus) -> None:
    index.set_sources(D, "moved/2015.pdf", ["moved/2015.pdf", "old/reports/a.pdf"])
    assert index.count(SearchFilter(source_prefix="reports")) == DOCS[E][3]
    assert index.count(SearchFilter(source_prefix="moved")) == DOCS[D][3]
    assert index.count(SearchFilter(source_prefix="old/reports")) == DOCS[D][3]
    hits = index.search(corpus.queries[0], 3, SearchFilter(doc_ids=(D,)))
    assert {h.source for h in hits} == {"moved/2015.pdf"}
    assert index.page_ids(D) == list(range(1, DOCS[D][3] + 1))  # vectors untouched


def test_document_fields_change_on_every_page_and_filter_at_once(
    index: PageIndex, corpus: Corpus
) -> None:
    index.set_document_fields(F, {"title": "Notes, renamed", "tags": ["finance", "q3"]})
    assert index.count(SearchFilter(tags=("q3",))) == DOCS[F][3]
    assert index.count(SearchFilter(tags=("finance",))) == DOCS[D][3] + DOCS[E][3] + DOCS[F][3]
    assert index.count(SearchFilter(tags=("misc",))) == 0
    hits = index.search(corpus.queries[0], 50, SearchFilter(doc_ids=(F,)))
    assert len(hits) == DOCS[F][3] and {h.title for h in hits} == {"Notes, renamed"}
    assert {h.title for h in index.search(corpus.queries[0], 50, SearchFilter(doc_ids=(D,)))} != {
        "Notes, renamed"
    }  # other documents untouched


# -- vectors, metadata, persistence ---------------------------------------------------------


def test_page_vectors_round_trip(index: PageIndex, corpus: Corpus) -> None:
    record, emb = corpus.records[11], corpus.embeddings[11]
    stored = index.page_vectors(record.doc_id, record.page)
    assert stored is not None
    assert stored.dtype == np.float32
    assert stored.shape == emb.vectors.shape
    np.testing.assert_allclose(stored, emb.vectors, atol=1e-2)  # float16 or Turbo8 codes
    assert index.page_vectors(record.doc_id, 999) is None


def test_page_lookup_matches_what_search_returns(index: PageIndex, corpus: Corpus) -> None:
    record, emb = corpus.records[11], corpus.embeddings[11]
    [hit] = index.search_exact(emb.vectors, 1, SearchFilter(doc_ids=(record.doc_id,)))
    found = index.page(record.doc_id, record.page)
    assert found is not None and found.score == 0.0
    assert replace(found, score=hit.score) == hit
    assert index.page(record.doc_id, 999) is None
    assert index.page("0" * 64, 1) is None


def test_optimize_keeps_every_page_and_the_exact_ranking(index: PageIndex, corpus: Corpus) -> None:
    query = corpus.embeddings[3].vectors
    before = index.search_exact(query, 5)
    assert isinstance(index.optimize(), bool)
    assert index.count() == len(corpus.records)
    assert [(h.doc_id, h.page) for h in index.search_exact(query, 5)] == [
        (h.doc_id, h.page) for h in before
    ]


def test_meta_round_trip_and_check(opener: Opener) -> None:
    index = opener()
    assert index.read_meta() is None
    meta = {"retriever_model": "vidore/colqwen2-v1.0", "dim": 128, "schema_version": 1}
    check_meta(index, meta)  # a new index takes the expected meta
    assert index.read_meta() == meta
    check_meta(index, meta)  # the same settings open it again
    with pytest.raises(IndexMismatchError, match="retriever_model"):
        check_meta(index, {**meta, "retriever_model": "other/model"})
    index.write_meta({"dim": 128})  # a write replaces, it does not merge
    assert index.read_meta() == {"dim": 128}
    index.write_meta(meta)
    index.close()
    if opener.kind == "memory":  # type: ignore[attr-defined]
        return
    reopened = opener()
    assert reopened.read_meta() == meta
    with pytest.raises(IndexMismatchError):
        check_meta(reopened, {**meta, "dim": 96})


def test_reopen_keeps_points(opener: Opener, corpus: Corpus) -> None:
    if opener.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("an in-memory index cannot be reopened")
    index = opener()
    index.upsert(corpus.records, corpus.embeddings)
    index.flush()
    q = corpus.queries[0]
    before = index.search(q, 5)
    index.close()
    reopened = opener()
    assert reopened.count() == N_PAGES
    assert reopened.search(q, 5) == before
    if opener.kind != "server":  # type: ignore[attr-defined]
        assert reopened.bytes_on_disk() > 0


# -- text channel (BM25) and hybrid search ----------------------------------------------------

RARE = "zanzibar"  # in exactly one page's text
NO_TEXT = {(D, 2), (E, 5), (A, 1), (A, 4)}  # scans: no text layer, so no text vector


def with_texts(corpus: Corpus) -> Corpus:
    """The corpus with varied page texts: one rare term, a shared term, some pages empty."""
    records = []
    for r in corpus.records:
        if (r.doc_id, r.page) in NO_TEXT:
            text = ""
        elif (r.doc_id, r.page) == (F, 3):
            text = f"Shipping notice: the {RARE} consignment arrived on 12 March."
        else:
            topic = "revenue" if r.page % 2 else "expenditure"
            text = f"Quarterly report, {topic} table for page {r.page} of {r.source}."
        records.append(replace(r, text=text))
    return Corpus(records, corpus.embeddings, corpus.queries)


@pytest.fixture
def text_corpus(corpus: Corpus) -> Corpus:
    return with_texts(corpus)


@pytest.fixture
def text_index(opener: Opener, text_corpus: Corpus) -> PageIndex:
    idx = opener()
    idx.upsert(text_corpus.records, text_corpus.embeddings)
    return idx


def rrf(channels: list[list], weights: list[float], k: int = RRF_K) -> dict[tuple[str, int], float]:
    """Qdrant's weighted reciprocal rank fusion: sum of 1 / (rank / weight + k - 1)."""
    fused: dict[tuple[str, int], float] = {}
    for hits, weight in zip(channels, weights, strict=True):
        for rank, hit in enumerate(hits, 1):
            key = (hit.doc_id, hit.page)
            fused[key] = fused.get(key, 0.0) + 1 / (rank / weight + k - 1)
    return fused


def test_text_search_ranks_the_rare_term_first(text_index: PageIndex) -> None:
    hits = text_index.search_text(f"When did the {RARE} shipment arrive?", 5)
    assert (hits[0].doc_id, hits[0].page) == (F, 3)
    assert RARE in hits[0].text and hits[0].source == "rep/notes.pdf"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # BM25 scores only pages holding a query term; stop words alone match nothing.
    assert [(h.doc_id, h.page) for h in text_index.search_text(RARE, 10)] == [(F, 3)]
    assert text_index.search_text("the of and", 10) == []
    assert text_index.search_text("   ", 10) == []
    assert text_index.search_text(RARE, 0) == []


def test_text_search_skips_pages_without_text(text_index: PageIndex) -> None:
    hits = text_index.search_text("quarterly report table page", N_PAGES)
    assert len(hits) == N_PAGES - len(NO_TEXT) - 1  # every page with that text
    assert not {(h.doc_id, h.page) for h in hits} & NO_TEXT


def test_filters_apply_to_the_text_channel(text_index: PageIndex) -> None:
    # One index for every filter (not parametrized): building one takes most of a test's time.
    for name, (filters, docs) in FILTERS.items():
        hits = text_index.search_text("quarterly revenue expenditure", N_PAGES, filters)
        assert {h.doc_id for h in hits} == docs, name
        hybrid = text_index.search_hybrid(np.ones((2, DIM), np.float32), RARE, N_PAGES, filters)
        assert {h.doc_id for h in hybrid} == docs, name
        assert ((F, 3) in {(h.doc_id, h.page) for h in hybrid}) == (F in docs), name


@pytest.mark.parametrize("text_weight", [1.0, 2.5])
def test_hybrid_is_rrf_of_both_channels(
    text_index: PageIndex, text_corpus: Corpus, text_weight: float
) -> None:
    q = text_corpus.queries[0]
    text = f"{RARE} revenue"
    hits = text_index.search_hybrid(q, text, N_PAGES, text_weight=text_weight)
    # Every page comes back, those without text too: the visual channel ranks all of them.
    assert len(hits) == N_PAGES
    assert {(h.doc_id, h.page) for h in hits} >= NO_TEXT
    expected = rrf(
        [text_index.search_exact(q, N_PAGES), text_index.search_text(text, N_PAGES)],
        [1.0, text_weight],
    )
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.doc_id, hit.page], rel=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert text_index.search_hybrid(q, text, 0) == []


def test_hybrid_without_text_terms_is_the_visual_ranking(
    text_index: PageIndex, text_corpus: Corpus
) -> None:
    q = text_corpus.queries[1]
    hybrid = text_index.search_hybrid(q, "the of", 8)  # stop words only: no text channel
    assert [(h.doc_id, h.page) for h in hybrid] == [
        (h.doc_id, h.page) for h in text_index.search_exact(q, 8)
    ]


def test_hybrid_with_the_pooled_prefetch(opener: Opener, text_corpus: Corpus) -> None:
    index = opener(prefetch_limit=5)  # 30 pages: the two-stage visual channel really runs
    index.upsert(text_corpus.records, text_corpus.embeddings)
    hits = index.search_hybrid(text_corpus.queries[2], RARE, 10)
    assert (hits[0].doc_id, hits[0].page) == (F, 3)
    assert 5 <= len(hits) <= 10  # pooled candidates plus the text match
    visual = {(h.doc_id, h.page) for h in index.search(text_corpus.queries[2], 5)}
    assert visual <= {(h.doc_id, h.page) for h in hits}


def test_set_page_text_replaces_the_text_vector(text_index: PageIndex) -> None:
    text_index.set_page_text(A, 1, "Handwritten note about Zanzibar cloves")
    found = {(h.doc_id, h.page) for h in text_index.search_text(RARE, 10)}
    assert found == {(F, 3), (A, 1)}
    assert text_index.search_text("cloves", 1)[0].text.startswith("Handwritten")
    text_index.set_page_text(F, 3, "")
    assert [(h.doc_id, h.page) for h in text_index.search_text(RARE, 10)] == [(A, 1)]
    assert text_index.count() == N_PAGES


def test_reupsert_keeps_one_text_vector_per_page(
    text_index: PageIndex, text_corpus: Corpus
) -> None:
    text_index.upsert(text_corpus.records, text_corpus.embeddings)
    assert [(h.doc_id, h.page) for h in text_index.search_text(RARE, 10)] == [(F, 3)]
    text_index.delete_document(F)
    assert text_index.search_text(RARE, 10) == []


def test_index_from_before_the_text_vector_is_a_mismatch(tmp_path: Path) -> None:
    # Schema 1 indexes have the visual vectors only; opening one must say "re-index".
    from qdrant_edge import EdgeConfig, EdgeShard

    from rag.index.edge import edge_config
    from rag.index.server import vectors_config

    old = edge_config()
    EdgeShard.create(str(tmp_path / "edge" / "shard"), EdgeConfig(vectors=old.vectors)).close()
    with pytest.raises(IndexMismatchError, match=r"[Rr]e-index"):
        EdgeIndex(tmp_path / "edge")
    client = QdrantClient(location=":memory:")
    client.create_collection("old", vectors_config=vectors_config())
    with pytest.raises(IndexMismatchError, match=r"[Rr]e-index"):
        ServerIndex(client, "old")


# -- pages stored before the retriever could load (issue 11, item 1) -------------------------


def test_pages_without_visual_vectors_then_add_visual(opener: Opener, text_corpus: Corpus) -> None:
    """Text-only points are found by text search only (visual and exact search skip them);
    `add_visual` gives them their vectors and grid, after which every search equals the oracle."""
    idx = opener()
    records, embeddings = text_corpus.records, text_corpus.embeddings
    waiting = {i for i, r in enumerate(records) if r.doc_id == F}
    idx.upsert(
        [replace(r, grid=(0, 0)) if i in waiting else r for i, r in enumerate(records)],
        [None if i in waiting else e for i, e in enumerate(embeddings)],
    )
    assert idx.count() == N_PAGES
    q = text_corpus.queries[0]
    assert_matches(idx.search(q, 5), oracle(text_corpus, q, lambda r: r.doc_id != F, idx)[:5])
    assert F not in {h.doc_id for h in idx.search_exact(q, N_PAGES)}
    [found] = idx.search_text(RARE, 5)
    assert (found.doc_id, found.page) == (F, 3)
    assert idx.page_vectors(F, 3) is None and idx.page(F, 3) is not None
    for i in sorted(waiting):
        assert idx.add_visual(records[i].doc_id, records[i].page, embeddings[i])
    assert not idx.add_visual("0" * 64, 1, embeddings[0])  # no such page: nothing written
    assert idx.count() == N_PAGES
    assert_matches(idx.search_exact(q, 5), oracle(text_corpus, q, index=idx)[:5])
    page, [rare] = idx.page(F, 3), [r for r in records if (r.doc_id, r.page) == (F, 3)]
    assert page is not None and page.grid == rare.grid and RARE in page.text
    assert [(h.doc_id, h.page) for h in idx.search_text(RARE, 5)] == [(F, 3)]


# -- vector storage (PAGERAG_VECTOR_STORAGE, schema.STORAGES) ---------------------------------

# Primary storages: what they keep is what search_exact scores (the quantized options score
# codes and rescore only the best, so their search is approximate by design).
PRIMARY_STORAGES = ["float16", "turbo8", "turbo8-pooled4"]


@pytest.mark.parametrize("storage", PRIMARY_STORAGES)
def test_exact_maxsim_over_the_stored_vectors(opener: Opener, corpus: Corpus, storage: str) -> None:
    """search_exact, and search within the prefetch limit, are exact MaxSim over the stored
    representation: colpali-engine on `page_vectors` (the decoded codes of "turbo8")."""
    index = opener(storage=storage)
    index.upsert(corpus.records, corpus.embeddings)
    index.optimize()
    record, emb = corpus.records[4], corpus.embeddings[4]
    stored = index.page_vectors(record.doc_id, record.page)
    assert stored is not None and stored.shape == emb.vectors.shape
    error = float(np.abs(stored - storage_rows(emb.vectors)).max())
    local = opener.kind != "edge"  # type: ignore[attr-defined]
    if storage == "float16" or local:  # local mode ignores the datatype: float16 values
        assert error == 0.0
    else:  # 8-bit codes: close to the float16 values, not equal
        assert 0.0 < error < 0.02
    for q in corpus.queries:
        expected = oracle(corpus, q, index=index)
        assert_matches(index.search_exact(q, N_PAGES), expected)
        assert_matches(index.search(q, 10), expected[:10])
    filters = SearchFilter(doc_ids=("e" * 64,))
    expected = oracle(corpus, corpus.queries[2], lambda r: r.doc_id == "e" * 64, index)
    assert_matches(index.search(corpus.queries[2], 10, filters), expected)


def test_index_built_with_another_storage_is_a_mismatch(opener: Opener, corpus: Corpus) -> None:
    if opener.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("an in-memory index cannot be reopened")
    index = opener(storage="float16")
    index.upsert(corpus.records[:3], corpus.embeddings[:3])
    meta = {"schema_version": 1, "vector_storage": "float16"}
    check_meta(index, meta)
    index.close()
    # The metadata guard (rag/service.py index_meta) refuses it on every backend ...
    reopened = opener(storage="float16")
    with pytest.raises(IndexMismatchError, match=r"vector_storage.*re-index"):
        check_meta(reopened, {**meta, "vector_storage": "turbo8"})
    reopened.close()
    if opener.kind == "edge":  # type: ignore[attr-defined]
        # ... and Edge checks its shard's own config before loading it, metadata or not.
        with pytest.raises(IndexMismatchError, match="PAGERAG_VECTOR_STORAGE=float16"):
            opener(storage="turbo8")
    # Unset, the storage is the existing index's own: an upgrade opens old indexes as they are.
    again = opener(storage=None)
    assert again.storage == "float16"
    check_meta(again, meta)
    again.close()


def test_index_from_before_the_storage_setting_reads_as_float16(
    opener: Opener, corpus: Corpus
) -> None:
    """An index whose metadata has no vector_storage / pool_factor (built before they existed)
    stores float16, unpooled pages: it opens with those, and is refused with others."""
    if opener.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("an in-memory index cannot be reopened")
    index = opener(storage="float16")
    index.upsert(corpus.records[:2], corpus.embeddings[:2])
    index.write_meta({"schema_version": 1})
    check_meta(index, {"schema_version": 1, "vector_storage": "float16", "pool_factor": 1})
    with pytest.raises(IndexMismatchError, match=r"pool_factor: index has 1, settings say 3"):
        check_meta(index, {"schema_version": 1, "vector_storage": "float16", "pool_factor": 3})
    index.close()


def test_unknown_storage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PAGERAG_VECTOR_STORAGE"):
        EdgeIndex(tmp_path, storage="float8")
    with pytest.raises(ValueError, match="turbo8"):
        ServerIndex.local(None, storage="float8")
