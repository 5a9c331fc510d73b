"""How much of the exact top 10 the prefetch's pooled vectors can find, with no graph in the way.

    python bench/prefetch.py --pages 100000 --json > docs/bench-prefetch-100k.json

The index's prefetch searches a HNSW graph over each page's pooled vectors and hands the best
`--limits` pages to the exact MaxSim rerank, so recall@10 is at most the share of the exact
top 10 among the best L pages by pooled MaxSim. This scores every page's pooled vectors
exactly (numpy, no graph) for each pooling in `--poolings`, on the synthetic pages of
bench/scale.py (generated as needed, same seed, same exact reference): the gap between this
bound and the recall measured through the index is what the graph loses.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import retrieval
import scale
from _common import emit, log, machine, nproc
from synthetic import DIM

from rag.index import pooling
from rag.types import PageEmbedding

K = 10


def _turbo8(x: np.ndarray) -> np.ndarray:
    """Rows rounded to 8-bit codes with one scale a row (what Turbo8 storage keeps, roughly:
    its codes live in a rotated basis, which this ignores)."""
    scale_ = np.abs(x).max(axis=1, keepdims=True) / 127.0
    return np.round(x / np.where(scale_ > 0, scale_, 1.0)) * scale_


POOLINGS: dict[str, Callable[[PageEmbedding], np.ndarray]] = {
    "clusters12": pooling.pool_clusters,  # the index's (ROW_GROUP 2)
    "clusters12-int8": lambda e: _turbo8(pooling.pool_clusters(e)),
    "rows24": lambda e: pooling.pool_rows(e, group=1),
    "clusters24": lambda e: pooling.pool_clusters(e, group=1),
}


def pooled_scores(queries: np.ndarray, pooled: list[np.ndarray]) -> np.ndarray:
    """MaxSim of every query (Q, rows, d) against each page's pooled vectors: (Q, pages)."""
    k = max(len(p) for p in pooled)
    padded = np.full((len(pooled), k, DIM), np.nan, dtype=np.float32)
    for i, p in enumerate(pooled):
        padded[i, : len(p)] = p
    sim = np.einsum("qrd,pkd->qprk", queries, np.nan_to_num(padded, nan=0.0))
    sim = np.where(np.isnan(padded[None, :, None, :, 0]), -np.inf, sim)
    return sim.max(axis=3).sum(axis=2)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, required=True)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limits", default="100,200,400")
    parser.add_argument("--poolings", default=",".join(POOLINGS))
    parser.add_argument("--workers", type=int, default=nproc())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    limits = [int(x) for x in args.limits.split(",")]
    names = args.poolings.split(",")
    args.index_dir = scale.Path("/tmp")
    ds = scale.dataset(args)
    queries = retrieval.storage(ds.queries).astype(np.float32)
    found = retrieval.Candidates(ds.queries)
    scores = {name: np.zeros((len(queries), args.pages), dtype=np.float32) for name in names}
    pool_s = dict.fromkeys(names, 0.0)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        for start, chunk in scale.generated(ex, args.workers, ds.seed, 0, args.pages, 1024):
            found.add(start, chunk)
            _, embeddings = retrieval.page_batch(start, chunk)
            for name in names:
                began = time.perf_counter()
                pooled = [POOLINGS[name](e) for e in embeddings]
                pool_s[name] += time.perf_counter() - began
                stop = start + len(chunk)
                scores[name][:, start:stop] = pooled_scores(queries, pooled)
            if (start // 1024) % 10 == 0:
                log(f"  {start + len(chunk)}/{args.pages} pages")
        truth = found.finish(lambda ids: scale._pages(ds.seed, ids).astype(np.float32))
    top = truth["top"]  # (Q, K) exact
    out: dict[str, Any] = {}
    for name in names:
        order = np.argsort(-scores[name], axis=1)
        out[name] = {
            "vectors_per_page": len(POOLINGS[name](embeddings[0])),
            "pool_ms_per_page": round(pool_s[name] * 1000 / args.pages, 2),
            **{
                f"recall_at_10_within_{limit}": round(
                    float(
                        np.mean(
                            [len(set(top[q]) & set(order[q, :limit])) / K for q in range(len(top))]
                        )
                    ),
                    4,
                )
                for limit in limits
            },
        }
    return {
        "pages": args.pages,
        "queries": len(queries),
        "machine": machine(),
        "certified": bool(truth["certified"]),
        "poolings": out,
        "total_s": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    import sys

    cli = sys.argv[1:]
    emit(main(cli), "--json" in cli)
