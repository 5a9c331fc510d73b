"""Patch maps of token-pooled pages (PAGERAG_POOL_FACTOR > 1).

A pooled page stores one row per cluster of image patches instead of one per patch. Its patch
map says, for every patch of the (rows, cols) grid in row-major order, which pooled row (counted
from `image_offset`) stands for it. Stored in the payload as base64 of uint8 (one byte a patch)
when there are at most 256 pooled rows, else uint16: ~1 KB a ColQwen2 page. The length tells
the two apart, since the grid gives the number of patches.

`expand` puts each patch's cluster vector back on the grid, so similarity maps, crops and the
prefetch's k-means read a pooled page like an unpooled one (blockier: patches of one cluster
score the same).
"""

from __future__ import annotations

import base64
import binascii

import numpy as np


def encode(patch_map: np.ndarray) -> str:
    """(rows * cols,) pooled-row indices -> the payload string."""
    dtype = "<u1" if int(patch_map.max(initial=0)) < 256 else "<u2"
    return base64.b64encode(np.asarray(patch_map).astype(dtype).tobytes()).decode("ascii")


def decode(text: str, n_patches: int) -> np.ndarray | None:
    """The (n_patches,) int64 map, or None when `text` is not one for that many patches."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) == n_patches:
        return np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    if len(raw) == 2 * n_patches:
        return np.frombuffer(raw, dtype="<u2").astype(np.int64)
    return None


def expand(
    vectors: np.ndarray, grid: tuple[int, int], image_offset: int, patch_map: str
) -> np.ndarray | None:
    """`vectors` with the pooled image rows replaced by one row per patch (its cluster's); the
    prefix and suffix rows stay. Unchanged when `patch_map` is empty (an unpooled page); None
    when the map does not fit the grid and the vectors."""
    if not patch_map:
        return vectors
    n = grid[0] * grid[1]
    index = decode(patch_map, n) if n > 0 and image_offset >= 0 else None
    if index is None or image_offset + int(index.max()) + 1 > len(vectors):
        return None
    pooled = int(index.max()) + 1
    patches = vectors[image_offset + index]  # (n, dim): every patch gets its cluster's vector
    return np.concatenate(
        [vectors[:image_offset], patches, vectors[image_offset + pooled :]], axis=0
    )
