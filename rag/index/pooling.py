"""Pooled vectors for the prefetch in front of the exact MaxSim rerank.

`pool_rows` is what the index stores and searches: the means of bands of patch rows, a small
multivector per page (12 vectors for ColQwen2's 24x31 grid), with a HNSW graph over MaxSim.
A question is usually about one region of a page; a band keeps that region's content apart
from the rest of the page, where a single mean vector blurs it with everything else. Measured
on 100k ColQwen2-shaped pages (docs/BENCHMARKS.md): the exact top 10 is inside the 300 best
pages by row bands for 95% of the queries, but inside the 300 best by the page mean for 74%.

Pure functions of the multivector and of `emb.grid` / `emb.image_offset` (which locate the
patch grid inside it), so they are easy to test against the exact MaxSim they approximate.
"""

from __future__ import annotations

import numpy as np

from rag.types import PageEmbedding

# Patch rows per band. 2 on 100k pages (BENCHMARKS.md): single rows rank a little better but
# double the bytes (6 KB a page in float16, the disk budget is ~11 KB beside the full
# multivector) and quadruple the cost of building the HNSW graph (MaxSim of 24x24 rows per
# comparison instead of 12x12); bands of 3 rows, 4x4 tiles and the page mean rank worse.
ROW_GROUP = 2
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
    if rows < 1 or cols < 1 or start < 0 or start + rows * cols > len(emb.vectors):
        return None
    tokens = np.asarray(emb.vectors[start : start + rows * cols], dtype=np.float32)
    return tokens.reshape(rows, cols, -1)  # row-major, as ColQwen2 lays out the merged patches


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
