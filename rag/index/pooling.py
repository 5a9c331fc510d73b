"""Pooled first-stage vectors: one small vector per page that a HNSW prefetch can search.

Pure functions of the multivector (and, for later variants, of `emb.grid` and
`emb.image_offset`, which locate the patch grid inside it), so new poolings are easy to add
and to test against the exact MaxSim they approximate.
"""

from __future__ import annotations

import numpy as np

from rag.types import PageEmbedding


def unit_mean(rows: np.ndarray) -> np.ndarray:
    """L2-normalised mean of the rows, float32 (d,). An all-zero mean stays zero."""
    mean = np.asarray(rows, dtype=np.float32).mean(axis=0)  # (n, d) -> (d,)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


def pool_mean(emb: PageEmbedding) -> np.ndarray:
    """The page's mean-pooled vector over every row (prefix tokens included), unit length."""
    return unit_mean(emb.vectors)


def pool_query(query: np.ndarray) -> np.ndarray:
    """The query's counterpart of `pool_mean`: the normalised mean of its rows."""
    return unit_mean(query)
