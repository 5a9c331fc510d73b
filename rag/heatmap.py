"""Similarity maps: which regions of a stored page matched a question.

ColQwen2 gives every 28x28-pixel patch of a page one vector; a page's stored multivector holds
them, row by row, from `image_offset` on, in a `grid` of (rows, cols). A question token's
similarity to each patch is a map over that grid (colpali-engine's interpretability utilities
compute exactly this); the map shown is their mean over the question's tokens, scaled to [0, 1]
and laid over the page image. Everything comes from the index: no page is embedded again. A
token-pooled page (PAGERAG_POOL_FACTOR) stores one vector per cluster of patches: its map gives
every patch of a cluster that cluster's score, so it is blockier but covers the same grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from rag import patchmap
from rag.errors import UserError
from rag.index.schema import storage_rows
from rag.types import Hit

if TYPE_CHECKING:
    from rag.service import PageRAG

# Colour stops of a dark-blue -> teal -> yellow ramp (like viridis): readable over black text.
_STOPS = np.array(
    [[48, 18, 59], [33, 102, 172], [32, 164, 134], [122, 209, 81], [253, 231, 37]], dtype=np.float32
)


class HeatmapError(UserError):
    """The page cannot be mapped (not stored, or stored without its patch grid)."""


class PageNotStored(HeatmapError):
    """No such page in the index."""

    http_status = 404


class VisualPending(HeatmapError):
    """The page is stored without visual vectors yet (its retriever could not load)."""

    http_status = 409


def _no_vectors(doc_id: str, page: int) -> VisualPending:
    return VisualPending(
        f"page {page} of document {doc_id[:12]} has no visual vectors yet: the retriever model "
        "could not load when it was ingested, so only text search finds it. They are added by "
        "the next ingestion once the model loads."
    )


@dataclass(frozen=True)
class Heatmap:
    image: Image.Image  # the page with the map laid over it
    relevance: np.ndarray  # (rows, cols) in [0, 1]
    score: float  # the page's MaxSim score for the question


def similarity_maps(
    query: np.ndarray,
    page: np.ndarray,
    grid: tuple[int, int],
    image_offset: int,
    patch_map: str = "",
) -> np.ndarray:
    """(query_tokens, rows, cols): each question token's similarity to each image patch. A
    token-pooled page (`patch_map` set) scores each patch by its cluster's pooled row."""
    rows, cols = grid
    n = rows * cols
    expanded = patchmap.expand(page, grid, image_offset, patch_map)
    if expanded is None:
        raise HeatmapError(
            f"the page's patch map does not fit its {rows}x{cols} grid and {len(page)} stored "
            "vectors; re-ingest its document"
        )
    page = expanded
    if rows < 1 or cols < 1 or image_offset < 0 or image_offset + n > len(page):
        raise HeatmapError(
            f"the page was stored without a usable patch grid ({rows}x{cols} at offset "
            f"{image_offset} in {len(page)} vectors); re-ingest its document"
        )
    import torch
    from colpali_engine.interpretability.similarity_map_utils import (
        get_similarity_maps_from_embeddings,
    )

    mask = torch.zeros((1, len(page)), dtype=torch.bool)
    mask[0, image_offset : image_offset + n] = True
    [maps] = get_similarity_maps_from_embeddings(
        image_embeddings=torch.from_numpy(page)[None],  # (1, tokens, dim)
        query_embeddings=torch.from_numpy(query)[None],  # (1, q, dim)
        n_patches=(cols, rows),  # colpali counts (x, y): patches across, patches down
        image_mask=mask,
    )  # (q, cols, rows)
    return maps.permute(0, 2, 1).numpy()  # (q, rows, cols)


def relevance(maps: np.ndarray) -> np.ndarray:
    """Mean over the question's tokens, min-max scaled to [0, 1] (a flat map becomes 0)."""
    mean = maps.mean(axis=0)  # (rows, cols)
    low, high = float(mean.min()), float(mean.max())
    return (mean - low) / (high - low + 1e-10)


def overlay(page: Image.Image, rel: np.ndarray, strength: float = 0.6) -> Image.Image:
    """The page with `rel` (rows, cols in [0, 1]) upscaled over it. Weak regions stay almost
    clear so the page remains readable; strong ones take the ramp's bright colours."""
    base = page.convert("RGB")
    small = Image.fromarray((np.clip(rel, 0, 1) * 255).astype(np.uint8), mode="L")
    level = np.asarray(small.resize(base.size, Image.Resampling.BICUBIC), dtype=np.float32) / 255
    colour = _ramp(level)  # (h, w, 3)
    alpha = (0.12 + strength * level)[..., None]  # (h, w, 1)
    mixed = np.asarray(base, dtype=np.float32) * (1 - alpha) + colour * alpha
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))


def _ramp(level: np.ndarray) -> np.ndarray:
    position = level * (len(_STOPS) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(_STOPS) - 2)
    t = (position - low)[..., None]
    return _STOPS[low] * (1 - t) + _STOPS[low + 1] * t


def hit_heatmap(
    service: PageRAG, query: np.ndarray, hit: Hit, vectors: np.ndarray | None = None
) -> Heatmap:
    """The map of an already-embedded question over a page found by search (`vectors`: its
    stored multivector, when the caller has it already)."""
    if vectors is None:
        vectors = service.index.page_vectors(hit.doc_id, hit.page)
    if vectors is None:
        raise _no_vectors(hit.doc_id, hit.page)
    rel = relevance(similarity_maps(query, vectors, hit.grid, hit.image_offset, hit.patch_map))
    try:
        with Image.open(Path(hit.image)) as page:
            image = overlay(page, rel)
    except OSError as exc:
        raise HeatmapError(f"the page image is missing ({exc}); re-ingest its document") from exc
    return Heatmap(image, rel, hit.score)


def page_heatmaps(
    service: PageRAG, question: str, pages: Sequence[tuple[str, int]]
) -> list[Heatmap]:
    """Maps of `question` over stored pages, given as (full document id, page number); the
    question is embedded once, after every page is found (a wrong page costs no model call)."""
    stored = []
    for doc_id, page in pages:
        hit = service.index.page(doc_id, page)
        if hit is None:
            raise PageNotStored(f"document {doc_id[:12]} has no page {page}")
        vectors = service.index.page_vectors(doc_id, page)
        if vectors is None:
            raise _no_vectors(doc_id, page)
        stored.append((hit, vectors))
    query = service.embed_query(question)
    # The score visual search gives the page: exact MaxSim of the float16-rounded query over
    # the stored rows, as the index computes it (one page: one product, no query needed).
    rounded = storage_rows(query)
    return [
        hit_heatmap(
            service, query, replace(hit, score=float((rounded @ rows.T).max(1).sum())), rows
        )
        for hit, rows in stored
    ]


def page_heatmap(service: PageRAG, question: str, doc_id: str, page: int) -> Heatmap:
    """The map of `question` over one stored page (`doc_id` must be a full id)."""
    return page_heatmaps(service, question, [(doc_id, page)])[0]
