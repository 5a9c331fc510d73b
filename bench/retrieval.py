"""Retrieval benchmark: PageRAG's two-stage search on N synthetic ColQwen2 pages.

    python bench/retrieval.py --pages 10000 --json

Measures, on the same deterministic data (bench/synthetic.py), in one run:
- the product index (`EdgeIndex`, through the `PageIndex` API): upsert rate, build/optimise
  time, bytes on disk per page, resident memory, query latency p50/p95 and recall@10 against
  exact MaxSim, for the product defaults and a sweep of prefetch sizes / HNSW ef;
- exact brute force with colpali-engine's `score_multi_vector` (the baseline every ratio uses);
- qdrant-client's local mode through `ServerIndex.local` where it finishes in reasonable time
  (by default only up to 1,000 pages).

The exact top-10 of every query (the recall reference) is computed over all pages: a bfloat16
pass keeps 100 candidates per query, colpali-engine rescores them in float32 on the float16
values the index stores, and the run checks that the margin between the 10th exact score and
the best page left out exceeds twice the worst bfloat16 error seen (`ground_truth_certified`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import synthetic
import torch
from _common import emit, latency_ms, log, machine, memory_mb, nproc
from synthetic import DIM, GRID, PREFIX, QUERY_ROWS, ROWS, Dataset

from rag.index import EdgeIndex, ServerIndex, schema
from rag.index.base import PageIndex
from rag.types import PageEmbedding, PageRecord

K = 10
WORDS = [
    *("total", "revenue", "fiscal", "year", "table", "quarter", "report", "annual", "net"),
    *("income", "expenses", "region", "sales", "growth", "percent", "figure", "chart"),
    *("county", "district", "state", "budget", "fund", "balance", "salary", "notice"),
]


def storage(x: np.ndarray) -> np.ndarray:
    """float32 holding the float16 values the index stores (Qdrant rounds queries too)."""
    return np.asarray(x, dtype=np.float16).astype(np.float32)


def read_pages(ds: Dataset, start: int, stop: int) -> np.ndarray:
    """Pages [start, stop) as float32, read with plain file I/O (no mmap: keeps RSS honest)."""
    header = ds.pages.offset  # type: ignore[attr-defined]
    count = (stop - start) * ROWS * DIM
    with ds.path.open("rb") as fh:
        fh.seek(header + start * ROWS * DIM * 2)
        data = np.fromfile(fh, dtype=np.float16, count=count)
    return data.reshape(stop - start, ROWS, DIM).astype(np.float32)


def chunks(ds: Dataset, size: int) -> Iterator[tuple[int, np.ndarray]]:
    n = len(ds.pages)
    for start in range(0, n, size):
        yield start, read_pages(ds, start, min(start + size, n))


# -- exact reference ----------------------------------------------------------------------


def score_exact(queries: Sequence[np.ndarray], pages: np.ndarray) -> np.ndarray:
    """colpali-engine's MaxSim (float32) of every query against every page: (Q, n)."""
    from colpali_engine.models import ColQwen2Processor

    scores = ColQwen2Processor.score_multi_vector(
        [torch.from_numpy(q) for q in queries],
        list(torch.from_numpy(pages)),
        batch_size=128,
        device="cpu",
    )
    return scores.numpy()


def ground_truth(ds: Dataset, candidates: int = 100) -> dict[str, Any]:
    """Exact top-K page indexes per query (cached next to the data: it is the slow part)."""
    cache = ds.path.with_name(f"{ds.path.stem}-truth-q{len(ds.queries)}.npz")
    if cache.exists():
        with np.load(cache) as saved:
            found = {key: saved[key] for key in saved.files}
        if len(found["top"]) == len(ds.queries):
            return {k: (v if k in ("top", "scores") else v.item()) for k, v in found.items()}
    truth = _ground_truth(ds, candidates)
    np.savez(cache, **truth)
    return truth


class Candidates:
    """The exact top-K of every query, found in one pass over the pages in any order: a bfloat16
    MaxSim keeps `candidates` pages per query (`add`), colpali-engine rescores those in float32
    on the float16 values the index stores (`finish`), and the margin between the 10th exact
    score and the best page left out must exceed twice the worst bfloat16 error seen."""

    def __init__(self, queries: np.ndarray, candidates: int = 100):
        self.q = storage(queries)
        self.candidates = candidates
        self.qt = torch.from_numpy(self.q.reshape(-1, DIM)).bfloat16().T.contiguous()
        self.best_s = np.full((len(self.q), candidates), -np.inf, dtype=np.float32)
        self.best_i = np.zeros((len(self.q), candidates), dtype=np.int64)

    def add(self, start: int, chunk: np.ndarray) -> None:
        """Pages [start, start + len(chunk)) as float32 (n, ROWS, DIM)."""
        n, n_q = len(chunk), len(self.q)
        pages = torch.from_numpy(chunk.reshape(-1, DIM)).bfloat16()
        sim = pages @ self.qt  # (n*ROWS, Q*rows) bf16
        approx = sim.view(n, ROWS, n_q, QUERY_ROWS).amax(1).float().sum(-1).T.numpy()  # (Q, n)
        all_s = np.concatenate([self.best_s, approx], axis=1)
        ids = np.broadcast_to(np.arange(start, start + n), (n_q, n))
        all_i = np.concatenate([self.best_i, ids], 1)
        keep = np.argpartition(-all_s, self.candidates - 1, axis=1)[:, : self.candidates]
        self.best_s = np.take_along_axis(all_s, keep, 1)
        self.best_i = np.take_along_axis(all_i, keep, 1)

    def finish(self, pages: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        """Rescore; `pages(ids)` gives those pages as float32 (len(ids), ROWS, DIM)."""
        n_q = len(self.q)
        top = np.zeros((n_q, K), dtype=np.int64)
        top_scores = np.zeros((n_q, K), dtype=np.float32)
        worst_err, min_margin = 0.0, np.inf
        for j in range(n_q):
            ids = np.sort(self.best_i[j])
            exact = score_exact([self.q[j]], pages(ids))[0]
            approx = dict(zip(self.best_i[j].tolist(), self.best_s[j].tolist(), strict=True))
            errors = [abs(approx[i] - s) for i, s in zip(ids.tolist(), exact, strict=True)]
            worst_err = max(worst_err, *errors)
            order = np.argsort(-exact)[:K]
            top[j], top_scores[j] = ids[order], exact[order]
            min_margin = min(min_margin, float(exact[order[-1]] - self.best_s[j].min()))
        return {
            "top": top,
            "scores": top_scores,
            "bf16_max_error": worst_err,
            "certified": bool(min_margin > 2 * worst_err),
            "min_margin": min_margin,
        }


def _ground_truth(ds: Dataset, candidates: int) -> dict[str, Any]:
    """Exact top-K via bfloat16 candidates + float32 rescoring by colpali-engine."""
    started = time.perf_counter()
    found = Candidates(ds.queries, candidates)
    for start, chunk in chunks(ds, 256):
        found.add(start, chunk)
    out = found.finish(lambda ids: np.stack([read_pages(ds, i, i + 1)[0] for i in ids]))
    out["seconds"] = time.perf_counter() - started
    out["target_is_first"] = float(np.mean(out["top"][:, 0] == ds.targets))
    return out


def matmul_maxsim(query: np.ndarray, pages: torch.Tensor) -> torch.Tensor:
    """Exact MaxSim of one query against (n, ROWS, DIM) float32 pages: one matrix product and
    a max, no padding or per-batch copies (the fastest brute force we know in torch)."""
    n = len(pages)
    sims = pages.reshape(-1, DIM) @ torch.from_numpy(query).T  # (n*ROWS, rows)
    return sims.view(n, ROWS, -1).amax(1).sum(-1)  # (n,)


def time_exact_baseline(ds: Dataset, n_queries: int, in_memory_gb: float) -> dict[str, Any]:
    """Per-query brute force over every page, float32 on the CPU: colpali-engine's
    `score_multi_vector` (the reference implementation) and a plain matrix product."""
    q = storage(ds.queries[:n_queries])
    n = len(ds.pages)
    fits = n * ROWS * DIM * 4 / 2**30 <= in_memory_gb
    corpus = read_pages(ds, 0, n) if fits else None
    out: dict[str, Any] = {
        "mode": "in-memory float32" if fits else "streamed from the float16 file",
        "queries": n_queries,
    }
    for name, score in (
        ("score_multi_vector", lambda query, pages: score_exact([query], pages)),
        ("matmul", lambda query, pages: matmul_maxsim(query, torch.from_numpy(pages))),
    ):
        times = []
        for query in q:
            started = time.perf_counter()
            if corpus is not None:
                score(query, corpus)
            else:  # too big for RAM as float32: read it from the float16 file, as one would
                for _, chunk in chunks(ds, 2048):
                    score(query, chunk)
            times.append(time.perf_counter() - started)
        out[name] = latency_ms(times)
        log(f"  exact with {name}: {out[name]}")
    del corpus
    return out


# -- the product index --------------------------------------------------------------------


def page_batch(start: int, vectors: np.ndarray) -> tuple[list[PageRecord], list[PageEmbedding]]:
    records, embeddings = [], []
    for offset, rows in enumerate(vectors):
        index = start + offset
        doc_id, page = synthetic.doc_and_page(index)
        rng = np.random.default_rng(index)
        text = " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=150))  # ~1 KB
        source = f"reports/{int(doc_id, 16) % 100:02d}/doc{int(doc_id, 16)}.pdf"
        records.append(
            PageRecord(
                doc_id=doc_id,
                page=page,
                pages=synthetic.PAGES_PER_DOC,
                source=source,
                title=f"Document {int(doc_id, 16)}",
                image=f"/data/pages/{doc_id[:2]}/{doc_id}/p{page:04d}.png",
                width=1224,
                height=1584,
                grid=GRID,
                image_offset=PREFIX,
                text=text,
                tags=("bench",),
                sources=(source,),
                ingested_at="2025-01-01T00:00:00Z",
            )
        )
        embeddings.append(PageEmbedding(vectors=rows, grid=GRID, image_offset=PREFIX))
    return records, embeddings


def fill(index: PageIndex, ds: Dataset, batch: int, flush_every: int = 2048) -> float:
    """Upsert every page through the PageIndex API; seconds spent in the index (not reading).

    Flushes every `flush_every` pages, as ingestion does after each document: Edge's WAL holds
    every update until a flush (~350 KB a page), and would otherwise grow to the corpus size.
    """
    spent = 0.0
    n = len(ds.pages)
    for start, chunk in chunks(ds, batch):
        records, embeddings = page_batch(start, chunk)
        started = time.perf_counter()
        index.upsert(records, embeddings)
        done = start + len(chunk)
        if done % flush_every < batch or done == n:
            index.flush()
        spent += time.perf_counter() - started
        if done % (batch * 20) == 0:
            log(f"  upserted {done}/{n} pages ({done / spent:.0f} pages/s)")
    return spent


def page_index(doc_id: str, page: int) -> int:
    return int(doc_id, 16) * synthetic.PAGES_PER_DOC + page - 1


def warm_up(index: PageIndex, ds: Dataset, n: int = 10, exact: bool = False) -> None:
    """Untimed queries about other pages than the measured ones: the first searches after
    opening touch the HNSW graph and start thread pools; the measured queries' own candidates
    stay as cold (or warm) as a new question's would."""
    world = synthetic.World.make(ds.seed)
    others = np.setdiff1d(np.arange(len(ds.pages)), ds.targets)
    rng = np.random.default_rng(ds.seed + 99)
    search = index.search_exact if exact else index.search
    for i, target in enumerate(rng.choice(others, size=min(n, len(others)), replace=False)):
        search(world.query(10_000 + i, int(target)), K)


def run_queries(
    index: PageIndex, ds: Dataset, truth: np.ndarray, limit: int | None = None, exact: bool = False
) -> dict[str, Any]:
    queries = ds.queries[: limit or len(ds.queries)]
    search = index.search_exact if exact else index.search
    warm_up(index, ds, n=3 if exact else 10, exact=exact)
    times, recalls = [], []
    for j, q in enumerate(queries):
        started = time.perf_counter()
        hits = search(q, K)
        times.append(time.perf_counter() - started)
        found = {page_index(h.doc_id, h.page) for h in hits}
        recalls.append(len(found & set(truth[j].tolist())) / K)
    return {
        **latency_ms(times),
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "queries": len(queries),
        "load_avg_1min": round(os.getloadavg()[0], 2),  # other work on the machine meanwhile
    }


DEFAULT_GRAPH = (schema.HNSW_M, schema.HNSW_EF_CONSTRUCT)


def add_graph_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--graph",
        type=lambda s: tuple(int(x) for x in s.split(":")),
        default=DEFAULT_GRAPH,
        help="M:EF_CONSTRUCT of the pooled vectors' HNSW graph, fixed when the index is made "
        f"(default {schema.HNSW_M}:{schema.HNSW_EF_CONSTRUCT})",
    )


def use_graph(graph: tuple[int, int]) -> None:
    """Make (and open) indexes with this graph: Edge adopts the config an index is loaded with,
    so a process that opens an index must set the graph it was built with."""
    schema.VECTOR_HNSW_M[schema.CLUSTERS], schema.HNSW_EF_CONSTRUCT = graph


def build_edge(path: Path, ds: Dataset, batch: int, storage: str) -> dict[str, Any]:
    """Upsert every page into a new EdgeIndex at `path` and optimise it; build figures."""
    n = len(ds.pages)
    index = EdgeIndex(path, storage=storage)
    upsert_s = fill(index, ds, batch)
    log(f"edge: {n} pages upserted in {upsert_s:.1f} s; optimising")
    started = time.perf_counter()
    index.optimize()
    optimize_s = time.perf_counter() - started
    peak = index.bytes_on_disk()  # old and new segments side by side until close
    index.close()
    log(f"edge: optimised in {optimize_s:.1f} s")
    return {
        "upsert_s": round(upsert_s, 1),
        "upsert_pages_per_s": round(n / upsert_s, 1),
        "optimize_s": round(optimize_s, 1),
        "build_s": round(upsert_s + optimize_s, 1),
        "peak_bytes_per_page": round(peak / n),
    }


def ensure_built(ds: Dataset, args: argparse.Namespace, storage: str, path: Path) -> None:
    """Build the index kept as `storage` in `path`/index unless `path` holds one of this size
    (bench-build.json records its build figures)."""
    done = path / "bench-build.json"
    n = len(ds.pages)
    if done.exists() and json.loads(done.read_text())["pages"] == n:
        log(f"edge: reusing the index in {path}")
        return
    shutil.rmtree(path / "index", ignore_errors=True)
    out = build_edge(path / "index", ds, args.batch, storage)
    done.write_text(json.dumps({"pages": n, "build": out}))


def bench_edge(
    ds: Dataset, truth: np.ndarray, args: argparse.Namespace, storage: str, path: Path
) -> dict[str, Any]:
    """Open the index kept as `storage` that `ensure_built` left in `path`; measure searches."""
    n = len(ds.pages)
    rss_before = memory_mb()
    out: dict[str, Any] = json.loads((path / "bench-build.json").read_text())["build"]
    # (Re)opened, as a server starts on an existing index: Edge removes the segments the
    # optimiser replaced, and the figures below are those of an index in steady state.
    started = time.perf_counter()
    index = EdgeIndex(path / "index", storage=storage)
    size = index.bytes_on_disk()
    out |= {
        "storage": storage,
        "open_s": round(time.perf_counter() - started, 2),
        "bytes_on_disk": size,
        "bytes_per_page": round(size / n),
        "disk_breakdown_bytes": {
            p.name: schema.dir_size(p) if p.is_dir() else p.stat().st_size
            for p in sorted((path / "index" / "shard").iterdir())
        },
        "segment_files_bytes": segment_breakdown(path / "index" / "shard" / "segments"),
        "segments": index._shard.info().segments_count,
        "config": index_config(index),
    }
    log(f"edge[{storage}]: {size / n / 1024:.1f} KiB/page on disk; searching")
    out["default"] = run_queries(index, ds, truth)
    defaults = (index.prefetch_limit, index.hnsw_ef)
    sweep = []
    for limit in args.prefetch:
        for ef in args.ef or [defaults[1]]:
            index.prefetch_limit, index.hnsw_ef = limit, ef
            row = {"prefetch_limit": limit, "hnsw_ef": ef, **run_queries(index, ds, truth)}
            log(f"  {row}")
            sweep.append(row)
    index.prefetch_limit, index.hnsw_ef = defaults
    out["sweep"] = sweep
    out["memory_mb"] = {"before_open": rss_before, "after_search": memory_mb()}
    if args.edge_exact:
        out["exact_in_edge"] = run_queries(index, ds, truth, limit=args.edge_exact, exact=True)
    index.close()
    return out


def segment_breakdown(segments: Path) -> dict[str, int]:
    """Allocated bytes by what they hold (vector storage of each vector, its quantized codes,
    HNSW graph, payload...), summed over the segments: each segment's top-level entries."""
    out: dict[str, int] = {}
    for segment in segments.iterdir() if segments.is_dir() else ():
        for entry in segment.iterdir() if segment.is_dir() else ():
            size = schema.dir_size(entry) if entry.is_dir() else entry.stat().st_blocks * 512
            out[entry.name] = out.get(entry.name, 0) + size
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def edge_child(
    args: argparse.Namespace, truth: np.ndarray | None, storage: str, path: Path
) -> dict[str, Any] | None:
    """In a fresh process (see `bench_storages`), on the data set the parent generated: build
    the index (`truth` None), or open it and measure the searches."""
    torch.set_num_threads(nproc())
    use_graph(args.graph)
    ds = synthetic.build(args.data_dir, args.pages, args.queries, args.seed)
    if truth is None:
        ensure_built(ds, args, storage, path)
        return None
    return bench_edge(ds, truth, args, storage, path)


def bench_storages(truth: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Every --storage on the same pages, one after the other. Each is built in one process
    and searched in another, so the resident memory after the searches is that of a process
    that opened the index and searched it (no heap left from building, nor from the previous
    storage); the index is deleted afterwards unless --index-dir keeps it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    out = {}
    for storage in args.storage:
        if args.index_dir is not None:
            path = args.index_dir if len(args.storage) == 1 else args.index_dir / storage
            path.mkdir(parents=True, exist_ok=True)
        else:
            path = Path(tempfile.mkdtemp(prefix=f"edge-{storage}-", dir=args.data_dir))
        try:
            for step in (None, truth):
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    out[storage] = pool.submit(edge_child, args, step, storage, path).result()
        finally:
            if args.index_dir is None:
                shutil.rmtree(path, ignore_errors=True)
    return out


def storage_table(edges: dict[str, Any], matmul_p50: float, pages: int) -> list[dict[str, Any]]:
    """One row per storage: what docs/BENCHMARKS.md's storage table shows."""
    rows = []
    for name, edge in edges.items():
        default, memory = edge["default"], edge["memory_mb"]
        rss = memory["after_search"].get("VmRSS", 0.0) - memory["before_open"].get("VmRSS", 0.0)
        rows.append(
            {
                "storage": name,
                "kib_per_page": round(edge["bytes_per_page"] / 1024, 1),
                "rss_kib_per_page": round(rss * 1024 / pages, 1),
                "recall_at_10": default["recall_at_10"],
                "p50_ms": default["p50_ms"],
                "p95_ms": default["p95_ms"],
                "p50_over_matmul": round(default["p50_ms"] / matmul_p50, 4),
                "speedup_vs_matmul": round(matmul_p50 / default["p50_ms"], 1),
                "upsert_s": edge["upsert_s"],
                "optimize_s": edge["optimize_s"],
                "build_s": edge["build_s"],
                "load_avg_1min": default["load_avg_1min"],
            }
        )
    return rows


def index_config(index: EdgeIndex) -> dict[str, Any]:
    return {
        key: getattr(index, key)
        for key in ("prefetch_limit", "hnsw_ef", "storage")
        if hasattr(index, key)
    }


def bench_local(ds: Dataset, truth: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    path = Path(tempfile.mkdtemp(prefix="local-", dir=args.data_dir))
    n = len(ds.pages)
    try:
        index = ServerIndex.local(path / "qdrant")
        upsert_s = fill(index, ds, args.batch)
        size = index.bytes_on_disk()
        log(f"local mode: {n} pages upserted in {upsert_s:.1f} s; searching")
        out = {
            "upsert_pages_per_s": round(n / upsert_s, 1),
            "bytes_per_page": round(size / n),
            **run_queries(index, ds, truth, limit=args.local_queries),
        }
        index.close()
        return out
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, required=True)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("PAGERAG_BENCH_DIR", tempfile.gettempdir())) / "pagerag-bench",
        help="where the float16 pages and the temporary indexes go (reused between runs)",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the generated pages")
    parser.add_argument(
        "--index-dir",
        type=Path,
        default=None,
        help="build the index here and keep it; a later run with the same --pages reuses it "
        "(to measure searches again without rebuilding)",
    )
    parser.add_argument("--batch", type=int, default=256, help="pages per upsert call")
    parser.add_argument("--workers", type=int, default=nproc())
    parser.add_argument(
        "--ef",
        type=lambda s: [int(x) or None for x in s.split(",")],
        default=[],
        help="HNSW ef values to sweep (0: Qdrant's default)",
    )
    parser.add_argument(
        "--prefetch",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[],
        help="prefetch limits to sweep on the same index",
    )
    parser.add_argument(
        "--exact-queries", type=int, default=None, help="queries timed with score_multi_vector"
    )
    parser.add_argument("--exact-in-memory-gb", type=float, default=6.0)
    parser.add_argument("--edge-exact", type=int, default=0, help="also time search_exact")
    parser.add_argument("--local-max", type=int, default=1000, help="local mode up to N pages")
    parser.add_argument("--local-queries", type=int, default=10)
    parser.add_argument(
        "--storage",
        type=lambda s: [schema.storage(x) and x for x in s.split(",")],
        default=[schema.DEFAULT_STORAGE],
        help="vector storages (rag/index/schema.py STORAGES), each built as its own index on "
        f"the same pages; the first gives the top-level figures (default {schema.DEFAULT_STORAGE})",
    )
    add_graph_option(parser)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    torch.set_num_threads(nproc())
    log(f"generating {args.pages} pages in {args.data_dir}")
    ds = synthetic.build(args.data_dir, args.pages, args.queries, args.seed, workers=args.workers)
    result: dict[str, Any] = {
        "pages": args.pages,
        "queries": len(ds.queries),
        "rows_per_page": ROWS,
        "grid": GRID,
        "machine": machine(),
        "graph_m_ef_construct": args.graph,
        "generate_s": round(ds.generate_seconds, 1),
        "load_avg_start": os.getloadavg(),
    }
    log(f"exact reference over {args.pages} pages")
    gt = ground_truth(ds)
    truth = gt["top"]
    result["ground_truth"] = {
        k: round(float(v), 4) for k, v in gt.items() if k not in ("top", "scores", "certified")
    } | {"certified": bool(gt["certified"])}
    edges = bench_storages(truth, args)
    edge = edges[args.storage[0]]
    result["edge"] = edge if len(edges) == 1 else edges
    # score_multi_vector takes ~2 ms a page here: a few queries are enough at large sizes.
    n_exact = args.exact_queries or (
        10 if args.pages <= 2_000 else 3 if args.pages <= 10_000 else 1
    )
    log(f"exact baseline: {n_exact} queries with score_multi_vector")
    exact = time_exact_baseline(ds, n_exact, args.exact_in_memory_gb)
    result["exact"] = exact
    exact_p50 = exact["score_multi_vector"]["p50_ms"]
    result["storage_table"] = storage_table(edges, exact["matmul"]["p50_ms"], args.pages)
    log(json.dumps(result["storage_table"], indent=1))
    if args.pages <= args.local_max:
        result["local_mode"] = bench_local(ds, truth, args)
    default = edge["default"]
    result |= {
        "p50_ms": default["p50_ms"],
        "p95_ms": default["p95_ms"],
        "recall_at_10": default["recall_at_10"],
        "bytes_per_page": edge["bytes_per_page"],
        "upsert_pages_per_s": edge["upsert_pages_per_s"],
        "build_s": edge["build_s"],
        "rss_mb": edge["memory_mb"]["after_search"].get("VmRSS"),
        "rss_anon_mb": edge["memory_mb"]["after_search"].get("RssAnon"),
        "exact_p50_ms": exact_p50,
        "speedup_vs_exact": round(exact_p50 / default["p50_ms"], 1),
        "exact_matmul_p50_ms": exact["matmul"]["p50_ms"],
        "speedup_vs_exact_matmul": round(exact["matmul"]["p50_ms"] / default["p50_ms"], 1),
    }
    if "local_mode" in result:
        result["local_mode_p50_ms"] = result["local_mode"]["p50_ms"]
        result["edge_speedup_vs_local_mode"] = round(
            result["local_mode"]["p50_ms"] / default["p50_ms"], 1
        )
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["load_avg_end"] = os.getloadavg()
    if not args.keep_data:
        for path in ds.path.parent.glob(f"{ds.path.stem}*"):
            path.unlink()
    return result


if __name__ == "__main__":
    import sys

    cli = sys.argv[1:]
    emit(main(cli), "--json" in cli)
