"""The default vector storage at a size whose page file would not fit on disk (300k pages).

    python bench/scale.py --pages 300000 --json > docs/bench-scale-300k.json

bench/retrieval.py keeps every synthetic page in a float16 file (~190 KB a page: 58 GB at
300k) and reads it once per pass. Here each page is generated when it is needed (pages are a
pure function of the seed and their index, bench/synthetic.py), in one pass that feeds the
same chunk to the index (`PageIndex.upsert`) and to the exact reference
(`retrieval.Candidates`). The brute-force baseline (retrieval.matmul_maxsim: one float32
matrix product per query over pages held in memory) is timed after the pass, with nothing else
running, on the first `--brute-pages` pages, and scaled to all of them: its cost is linear in
the pages (300k float32 pages would need 116 GB of RAM).
The disk needed is the index's alone (docs/BENCHMARKS.md: ~106 KiB a page for turbo8, up to
twice that while the optimiser rewrites segments).

The pass is resumable: every `--checkpoint` pages the index is flushed and the reference
state saved beside it, so a killed run started again with the same arguments goes on from
there (re-upserting a page is idempotent). The searches then run in a fresh process, as in
bench/retrieval.py, so resident memory is that of a server that opened the index.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import retrieval
import synthetic
import torch
from _common import emit, latency_ms, log, machine, nproc
from synthetic import ROWS, Dataset

from rag.index import EdgeIndex, schema

_WORLD: synthetic.World | None = None


def _pages(seed: int, ids: Sequence[int]) -> np.ndarray:
    """Worker: the pages `ids` as float16 (the values the index stores), (len(ids), ROWS, DIM)."""
    global _WORLD
    if _WORLD is None or _WORLD.seed != seed:
        _WORLD = synthetic.World.make(seed)
    return np.stack([_WORLD.page(i)[0] for i in ids]).astype(np.float16)


def generated(
    pool: ProcessPoolExecutor, workers: int, seed: int, start: int, stop: int, size: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(first index, float32 pages) chunks of [start, stop), a few generated ahead."""
    ahead: deque[tuple[int, Future[np.ndarray]]] = deque()
    spans = iter(range(start, stop, size))
    for _ in range(workers + 1):  # bounded: a chunk of 1024 pages is ~200 MB
        if (a := next(spans, None)) is not None:
            ahead.append((a, pool.submit(_pages, seed, range(a, min(a + size, stop)))))
    while ahead:
        a, future = ahead.popleft()
        if (b := next(spans, None)) is not None:
            ahead.append((b, pool.submit(_pages, seed, range(b, min(b + size, stop)))))
        yield a, future.result().astype(np.float32)


class State:
    """What the pass has done, saved every checkpoint next to the index it describes."""

    def __init__(self, path: Path, queries: np.ndarray):
        self.path = path
        self.done = 0
        self.upsert_s = self.generate_wait_s = self.optimize_s = 0.0
        self.found = retrieval.Candidates(queries)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            done=self.done,
            upsert_s=self.upsert_s,
            generate_wait_s=self.generate_wait_s,
            optimize_s=self.optimize_s,
            best_s=self.found.best_s,
            best_i=self.found.best_i,
        )
        os.replace(tmp, self.path)

    def load(self) -> None:
        if not self.path.exists():
            return
        with np.load(self.path) as saved:
            self.done = int(saved["done"])
            self.upsert_s = float(saved["upsert_s"])
            self.generate_wait_s = float(saved["generate_wait_s"])
            self.optimize_s = float(saved.get("optimize_s", 0.0))
            self.found.best_s, self.found.best_i = saved["best_s"], saved["best_i"]


def build(ds: Dataset, args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """The one pass (resumed from the last checkpoint), then the optimiser; build figures."""
    n = args.pages
    state = State(path / "bench-state.npz", ds.queries)
    state.load()
    if state.done == n and (path / "bench-truth.npz").exists():
        log("the index is built: measuring the searches again")
        with np.load(path / "bench-truth.npz") as saved:
            return dict(saved)
    if state.done:
        log(f"resuming at page {state.done}/{n}")
    index = EdgeIndex(path / "index", storage=args.storage)
    # Spawned, not forked: a forked child would inherit the shard's WAL lock.
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        waited = time.perf_counter()
        for start, chunk in generated(pool, args.workers, ds.seed, state.done, n, args.chunk):
            state.generate_wait_s += time.perf_counter() - waited
            for offset in range(0, len(chunk), args.batch):
                part = chunk[offset : offset + args.batch]
                state.found.add(start + offset, part)
                records, embeddings = retrieval.page_batch(start + offset, part)
                began = time.perf_counter()
                index.upsert(records, embeddings)
                state.upsert_s += time.perf_counter() - began
            end = start + len(chunk)
            if end % args.checkpoint < args.chunk or end == n:
                began = time.perf_counter()
                index.flush()
                state.upsert_s += time.perf_counter() - began
                if args.optimize_every and end % args.optimize_every < args.chunk and end < n:
                    state.optimize_s += optimize(index, end)
                state.done = end
                state.save()
                log(f"  {end}/{n} pages ({end / max(state.upsert_s, 1e-9):.0f} pages/s upserting)")
            waited = time.perf_counter()
        optimize_s = state.optimize_s + optimize(index, n)
        peak = index.bytes_on_disk()
        index.close()
        log(f"optimised in {optimize_s:.0f} s; rescoring the reference candidates")
        began = time.perf_counter()
        truth = state.found.finish(lambda ids: _pages(ds.seed, ids).astype(np.float32))
        truth["rescore_s"] = time.perf_counter() - began
    truth["target_is_first"] = float(np.mean(truth["top"][:, 0] == ds.targets))
    build_out = {
        "upsert_s": round(state.upsert_s, 1),
        "upsert_pages_per_s": round(n / state.upsert_s, 1),
        "optimize_s": round(optimize_s, 1),
        "build_s": round(state.upsert_s + optimize_s, 1),
        "peak_bytes_per_page": round(peak / n),
        "waited_for_generation_s": round(state.generate_wait_s, 1),
    }
    (path / "bench-build.json").write_text(json.dumps({"pages": n, "build": build_out}))
    np.savez(path / "bench-truth.npz", **truth)
    return truth


def optimize(index: EdgeIndex, pages: int) -> float:
    """`index.optimize()` as `pagerag ingest` runs it after a job; its seconds."""
    log(f"optimising at {pages} pages")
    began = time.perf_counter()
    index.optimize()
    spent = time.perf_counter() - began
    log(f"  optimised in {spent:.0f} s: {index._shard.info().segments_count} segments")
    return spent


def brute_force(ds: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Exact MaxSim of `--exact-queries` queries over the first `--brute-pages` pages in memory
    (float32, the float16 values), scaled to all pages: brute force is linear in the pages."""
    n = min(args.brute_pages, args.pages)
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        spans = [range(a, min(a + 1024, n)) for a in range(0, n, 1024)]
        parts = pool.map(_pages, [ds.seed] * len(spans), spans)
        pages = torch.from_numpy(np.concatenate(list(parts)).astype(np.float32))
    times = []
    for query in retrieval.storage(ds.queries[: args.exact_queries]):
        began = time.perf_counter()
        retrieval.matmul_maxsim(query, pages)
        times.append((time.perf_counter() - began) * args.pages / n)
    return {"queries": len(times), "measured_on_pages": n, **latency_ms(times)}


def search_child(args: argparse.Namespace, truth: np.ndarray, path: Path) -> dict[str, Any]:
    """In a fresh process: open the index and measure searches (retrieval.bench_edge)."""
    torch.set_num_threads(nproc())
    retrieval.use_graph(args.graph)
    return retrieval.bench_edge(dataset(args), truth, args, args.storage, path)


def dataset(args: argparse.Namespace) -> Dataset:
    """The queries and targets of bench/synthetic.py for these pages, without a page file."""
    world = synthetic.World.make(args.seed)
    targets = synthetic.targets(args.seed, args.pages, args.queries)
    queries = np.stack([world.query(i, int(t)) for i, t in enumerate(targets)])
    pages: Any = range(args.pages)  # only its length is used: nothing is read from a file
    return Dataset(args.index_dir / "none", args.seed, pages, queries, targets, 0.0)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, required=True)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default=schema.DEFAULT_STORAGE, help="schema.STORAGES name")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--index-dir",
        type=Path,
        default=Path(os.environ.get("PAGERAG_BENCH_DIR", "/tmp/pagerag-bench")) / "scale",
        help="where the index and the checkpoints go (kept: a rerun resumes or re-measures)",
    )
    parser.add_argument("--batch", type=int, default=256, help="pages per upsert call")
    parser.add_argument(
        "--chunk", type=int, default=1024, help="pages generated at once (and brute-forced)"
    )
    parser.add_argument("--checkpoint", type=int, default=4096, help="pages between flushes")
    parser.add_argument(
        "--optimize-every",
        type=int,
        default=0,
        help="pages between optimiser runs during the pass, as ingest jobs of that size "
        "would (0: once, at the end)",
    )
    parser.add_argument("--workers", type=int, default=nproc(), help="page generators")
    parser.add_argument("--exact-queries", type=int, default=3, help="brute-force timed queries")
    parser.add_argument(
        "--brute-pages", type=int, default=10_000, help="pages the brute force is timed on"
    )
    parser.add_argument(
        "--prefetch",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[],
        help="prefetch limits searched too, on the same index (besides the default)",
    )
    parser.add_argument(
        "--ef",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[],
        help="HNSW ef values searched too, with each --prefetch limit (default: PAGERAG_HNSW_EF)",
    )
    retrieval.add_graph_option(parser)
    args = parser.parse_args(argv)
    if args.optimize_every % args.checkpoint:
        parser.error("--optimize-every must be a multiple of --checkpoint")
    schema.storage(args.storage)
    retrieval.use_graph(args.graph)
    # What retrieval.bench_edge reads besides: no search_exact timing.
    args.edge_exact = 0
    m, ef_construct = args.graph
    graph = f"-m{m}-ef{ef_construct}"
    jobs = f"-opt{args.optimize_every}" if args.optimize_every else ""
    args.index_dir /= f"{args.storage}{graph}{jobs}-{args.pages}-seed{args.seed}"
    args.index_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    torch.set_num_threads(nproc())
    ds = dataset(args)
    log(f"{args.pages} pages, storage {args.storage}, in {args.index_dir}")
    truth = build(ds, args, args.index_dir)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        edge = pool.submit(search_child, args, truth["top"], args.index_dir).result()
    log(f"brute force on {min(args.brute_pages, args.pages)} pages in memory")
    brute = brute_force(ds, args)
    table = retrieval.storage_table({args.storage: edge}, brute["p50_ms"], args.pages)[0]
    return {
        "pages": args.pages,
        "queries": len(ds.queries),
        "rows_per_page": ROWS,
        "machine": machine(),
        "storage": args.storage,
        "graph_m_ef_construct": args.graph,
        "ground_truth": {
            k: round(float(v), 4)
            for k, v in truth.items()
            if k in ("bf16_max_error", "min_margin", "target_is_first", "rescore_s")
        }
        | {"certified": bool(truth["certified"])},
        "exact_matmul": brute,
        "edge": edge,
        "table": table,
        "total_s": round(time.perf_counter() - started, 1),
        "load_avg_end": os.getloadavg(),
    }


if __name__ == "__main__":
    import sys

    cli = sys.argv[1:]
    emit(main(cli), "--json" in cli)
