"""Region crops for the answerer: small print on a downscaled page is a blur, so beside each page
the answerer also gets the region that matched the question best, cut from the stored page
image at its full resolution.

The region comes from the question's similarity map (`rag.heatmap`, from the stored vectors: no
page is embedded again): the bounding box of the best patches, padded by a patch; when those are
spread over the page, the window of the largest allowed size that holds most of their relevance.
A crop is at most a third of the visual-token budget shared by the pages (and a quarter of its
page); the answerers count its tokens and shrink the pages to fit the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from rag.boxes import Box
from rag.types import Hit

PIXELS_PER_TOKEN = 28 * 28  # Qwen2-VL's visual token; the answerers recount with their own
CROP_SHARE = 3  # the crops together take at most 1/CROP_SHARE of the visual-token budget
TOP_PATCHES = 0.04  # the share of the page's patches whose bounding box is the region
MAX_FRACTION = 0.25  # a larger region is hardly a zoom


@dataclass(frozen=True)
class ShownPage(Hit):
    """A page as the answerer gets it: the hit, its stored image's size, and the regions of it
    (pixels of that image) sent beside it as full-resolution crops."""

    size: tuple[int, int] = (0, 0)  # (width, height); (0, 0) when the image cannot be read
    regions: tuple[Box, ...] = ()


def crop_limit(visual_token_budget: int, max_pixels: int, n_pages: int) -> int:
    """The most pixels one page's crop may have."""
    share = visual_token_budget * PIXELS_PER_TOKEN // (CROP_SHARE * max(n_pages, 1))
    return min(max_pixels, share)


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of a stored page image from its header; (0, 0) if it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except OSError:
        return (0, 0)


def best_region(rel: np.ndarray, size: tuple[int, int], max_pixels: int) -> Box | None:
    """The region (pixels of an image of `size`) a similarity map `rel` (rows, cols in [0, 1])
    points at, of at most `max_pixels` and MAX_FRACTION of the image; None for a flat map."""
    rows, cols = rel.shape
    width, height = size
    if rows < 1 or cols < 1 or width < 1 or height < 1 or float(rel.max() - rel.min()) <= 1e-6:
        return None
    limit = min(max_pixels, MAX_FRACTION * width * height)
    cell = (width / cols) * (height / rows)
    k = max(1, round(TOP_PATCHES * rows * cols))
    best = np.argsort(rel, axis=None, kind="stable")[::-1][:k]
    rr, cc = np.unravel_index(best, rel.shape)
    r0, r1 = max(0, int(rr.min()) - 1), min(rows, int(rr.max()) + 2)
    c0, c1 = max(0, int(cc.min()) - 1), min(cols, int(cc.max()) + 2)
    if (r1 - r0) * (c1 - c0) * cell > limit:  # spread out: the densest window of the page's shape
        scale = math.sqrt(limit / (width * height))
        h, w = max(1, int(rows * scale)), max(1, int(cols * scale))
        weights = np.zeros(rel.shape)
        weights[rr, cc] = rel[rr, cc]
        sums = np.pad(weights, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        windows = sums[h:, w:] - sums[:-h, w:] - sums[h:, :-w] + sums[:-h, :-w]
        r0, c0 = (int(v) for v in np.unravel_index(np.argmax(windows), windows.shape))
        r1, c1 = r0 + h, c0 + w
    x1, x2 = math.floor(c0 * width / cols), min(width, math.ceil(c1 * width / cols))
    y1, y2 = math.floor(r0 * height / rows), min(height, math.ceil(r1 * height / rows))
    if (x2 - x1) * (y2 - y1) > max_pixels:  # one patch is already more than the limit
        return None
    return (x1, y1, x2, y2)


def shown_page(
    hit: Hit, query: np.ndarray | None, vectors: np.ndarray | None, max_pixels: int
) -> ShownPage:
    """`hit` with its image size and, given the question's and the page's stored vectors, the
    region of its similarity map (none when the page has no usable vectors)."""
    from rag.heatmap import HeatmapError, relevance, similarity_maps

    size = image_size(hit.image)
    regions: tuple[Box, ...] = ()
    if query is not None and vectors is not None and size[0] and size[1]:
        try:
            rel = relevance(
                similarity_maps(query, vectors, hit.grid, hit.image_offset, hit.patch_map)
            )
        except HeatmapError:  # stored without a usable patch grid: the page alone
            rel = None
        if rel is not None and (region := best_region(rel, size, max_pixels)) is not None:
            regions = (region,)
    fields = {name: getattr(hit, name) for name in Hit.__dataclass_fields__}
    return ShownPage(**fields, size=size, regions=regions)


def page_crops(page: Any, image: Image.Image) -> list[Image.Image]:
    """The crops of `page` (its `regions`, if it has any) cut from its opened image."""
    return [image.crop(region) for region in getattr(page, "regions", ())]


def crop_pixels(pages: Any, max_pixels: int) -> int:
    """Pixels of all the pages' crops as sent (each at most `max_pixels`)."""
    return sum(
        min((x2 - x1) * (y2 - y1), max_pixels)
        for page in pages
        for x1, y1, x2, y2 in getattr(page, "regions", ())
    )
