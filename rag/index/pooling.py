"""Pooled vectors for the prefetch in front of the exact MaxSim rerank.

The index stores `pool_clusters` and searches it through a HNSW graph (MaxSim): ~12 unit
vectors per page, the centroids of k-means clusters of its image tokens, started from the
means of pairs of patch rows (`pool_rows`). A question is usually about one kind of content on
a page (a table, a chart, a heading); a cluster keeps that content apart from the rest, where
a single mean vector blurs it with everything else and a row band mixes it with whatever
shares its rows. The recall of each pooling at 10k and 100k pages: docs/BENCHMARKS.md.

Pure functions of the multivector and of `emb.grid` / `emb.image_offset` (which locate the
patch grid inside it), so they are easy to test against the exact MaxSim they approximate.
"""

from __future__ import annotations

import numpy as np

from rag import patchmap
from rag.types import PageEmbedding

# Patch rows per band, so also the number of clusters (12 for 24 rows). 12 vectors take 3 KB a
# page in float16 (the disk budget leaves ~11 KB beside the full multivector), and the HNSW
# graph compares pages by 12x12 dot products: 24 would double the bytes and quadruple the build.
ROW_GROUP = 2
# k-means steps of `pool_clusters` (why 3: docs/BENCHMARKS.md).
KMEANS_ITERATIONS = 3
# Bands used when a page has no usable grid (an embedding from elsewhere): consecutive runs
# of its rows, which for ColQwen2's row-major image tokens are horizontal bands anyway.
FALLBACK_BANDS = 12


def unit_mean(rows: np.ndarray) -> np.ndarray:
    """L2-normalised mean of the rows, float32 (d,). An all-zero mean stays zero."""
    mean = np.asarray(rows, dtype=np.float32).mean(axis=0)  # (n, d) -> (d,)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Every row scaled to unit length, float32; all-zero rows stay zero."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)  # (n, 1)
    return rows / np.where(norms > 0, norms, 1.0)


def pool_mean(emb: PageEmbedding) -> np.ndarray:
    """The page's mean-pooled vector over every row, unit length (the single-vector pooling
    the benchmark compares `pool_rows` with; not stored in the index)."""
    return unit_mean(emb.vectors)


def pool_query(query: np.ndarray) -> np.ndarray:
    """The query's counterpart of `pool_mean`: the normalised mean of its rows."""
    return unit_mean(query)


def image_grid(emb: PageEmbedding) -> np.ndarray | None:
    """The image tokens as (rows, cols, d), or None when grid and offset do not fit the vectors."""
    rows, cols = emb.grid
    start = emb.image_offset
    # A token-pooled page: each patch gets its cluster's row back, so the k-means below weighs
    # a cluster by the patches it stands for, as on an unpooled page.
    vectors = patchmap.expand(emb.vectors, emb.grid, start, emb.patch_map)
    if vectors is None or rows < 1 or cols < 1 or start < 0 or start + rows * cols > len(vectors):
        return None
    tokens = np.asarray(vectors[start : start + rows * cols], dtype=np.float32)
    return tokens.reshape(rows, cols, -1)  # row-major, as ColQwen2 lays out the merged patches


def pool_clusters(
    emb: PageEmbedding, iterations: int = KMEANS_ITERATIONS, group: int = ROW_GROUP
) -> np.ndarray:
    """What the index stores: spherical k-means of the image tokens, seeded by `pool_rows`.

    (ceil(rows / ROW_GROUP), d) float32 unit vectors, 12 for a 24x31 grid. The row bands are a
    deterministic start that already covers the page's regions; a few k-means steps then
    move each centroid to one kind of content (a table's cells, a heading, blank paper)
    wherever it sits on the page, so a question about a table matches a vector of tables
    rather than the average of a band that also holds a margin and a heading. A centroid left
    without tokens keeps its band mean. Costs ~1 ms a page (3 steps of a 744x12 product).
    """
    grid = image_grid(emb)
    tokens = (
        grid.reshape(-1, grid.shape[-1])  # (rows * cols, d)
        if grid is not None
        else np.asarray(emb.vectors, dtype=np.float32)
    )
    centroids = pool_rows(emb, group)  # (k, d)
    k = len(centroids)
    for _ in range(iterations):
        assign = np.argmax(tokens @ centroids.T, axis=1)  # (t,): nearest centroid by cosine
        members = np.zeros((k, len(tokens)), dtype=np.float32)  # (k, t) one-hot
        members[assign, np.arange(len(tokens))] = 1.0
        sums = members @ tokens  # (k, d)
        filled = members.sum(axis=1, keepdims=True) > 0  # (k, 1)
        centroids = np.where(filled, unit_rows(sums), centroids)
    return np.ascontiguousarray(centroids, dtype=np.float32)


def pool_rows(emb: PageEmbedding, group: int = ROW_GROUP) -> np.ndarray:
    """Unit means of bands of `group` patch rows: (ceil(rows / group), d) float32.

    Only the image tokens count: the prompt's prefix and suffix tokens are the same on every
    page and would only pull all bands towards each other.
    """
    grid = image_grid(emb)
    if grid is None:
        vectors = np.asarray(emb.vectors, dtype=np.float32)
        bands = np.array_split(vectors, min(FALLBACK_BANDS, len(vectors)))
        return unit_rows(np.stack([band.mean(axis=0) for band in bands]))
    row_sums = grid.sum(axis=1)  # (rows, cols, d) -> (rows, d)
    band_sums = np.add.reduceat(row_sums, np.arange(0, len(row_sums), group), axis=0)
    return unit_rows(band_sums)  # scaling a sum to unit length equals scaling the mean
