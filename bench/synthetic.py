"""Deterministic ColQwen2-shaped synthetic pages and queries for the retrieval benchmark.

A page is what ColQwen2 gives for a letter page at the default cap of 768 visual tokens: a
24x31 merged patch grid (744 image tokens, row-major) after 4 prefix tokens and before 7 suffix
tokens, 755 unit rows of 128 dims. Its content has the structure that makes neighbours exist:

- 100 topics, each with 64 "concept" vectors around a topic centre; documents of 20 pages
  belong to one topic and add 16 concepts of their own; every page adds 8 unique ones;
- the page is laid out in horizontal bands (like headings, paragraphs, tables): a 2-patch
  background margin, then 3 to 6 bands, each blank or drawing its tokens from 2 concepts of
  the topic, the document or the page; every token is its concept plus noise;
- prefix/suffix tokens are the same for every page (the prompt text), plus a little noise.

A query is 20 rows taken near the rows of 1 or 2 content bands of a target page (a question
about one region), so the target is the right answer and pages sharing its concepts
(same document, same topic) are its neighbours. Every page and query is a pure function of
(seed, index): the corpus can be generated in any chunking and regenerated at will.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIM = 128
GRID = (24, 31)  # merged patch grid of a portrait letter page at max_visual_tokens=768
PREFIX = 4  # "<|im_start|>user\n<|vision_start|>"
SUFFIX = 7  # "<|vision_end|>Describe the image.<|im_end|>..."
ROWS = PREFIX + GRID[0] * GRID[1] + SUFFIX  # 755
QUERY_ROWS = 20
PAGES_PER_DOC = 20
TOPICS = 100
TOPIC_CONCEPTS = 64
DOC_CONCEPTS = 16
PAGE_CONCEPTS = 8
MARGIN = 2  # patches of background around the content
TOKEN_NOISE = 0.7  # norm of the noise added to a concept (cosine token-concept ~0.82)
QUERY_NOISE = 0.5  # norm of the noise added to a page row to make a query row


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], norm: float) -> np.ndarray:
    # Gaussian rows whose expected norm is `norm` (each coordinate has variance norm^2 / DIM).
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(norm / np.sqrt(DIM))


@dataclass
class World:
    """Everything shared by all pages, drawn once from the seed."""

    seed: int
    topic_concepts: np.ndarray  # (TOPICS, TOPIC_CONCEPTS, DIM)
    topic_centres: np.ndarray  # (TOPICS, DIM)
    background: np.ndarray  # (4, DIM) blank-paper tokens, alike on every page
    prefix: np.ndarray  # (PREFIX, DIM)
    suffix: np.ndarray  # (SUFFIX, DIM)

    @classmethod
    def make(cls, seed: int) -> World:
        rng = np.random.default_rng([seed, 0])
        centres = _unit(rng.standard_normal((TOPICS, DIM), dtype=np.float32))
        spread = _noise(rng, (TOPICS, TOPIC_CONCEPTS, DIM), 1.2)
        concepts = _unit(centres[:, None, :] + spread)
        return cls(
            seed=seed,
            topic_concepts=concepts,
            topic_centres=centres,
            background=_unit(rng.standard_normal((4, DIM), dtype=np.float32)),
            prefix=_unit(rng.standard_normal((PREFIX, DIM), dtype=np.float32)),
            suffix=_unit(rng.standard_normal((SUFFIX, DIM), dtype=np.float32)),
        )

    def doc_concepts(self, doc: int) -> tuple[int, np.ndarray]:
        rng = np.random.default_rng([self.seed, 2, doc])
        topic = int(rng.integers(TOPICS))
        own = _unit(self.topic_centres[topic] + _noise(rng, (DOC_CONCEPTS, DIM), 1.2))
        return topic, own

    def page(self, index: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Page `index`: (ROWS, DIM) float32 unit rows, and its content bands [(row0, row1)]."""
        doc = index // PAGES_PER_DOC
        topic, doc_pool = self.doc_concepts(doc)
        rng = np.random.default_rng([self.seed, 1, index])
        page_pool = _unit(rng.standard_normal((PAGE_CONCEPTS, DIM), dtype=np.float32))
        pools = (self.topic_concepts[topic], doc_pool, page_pool)
        rows, cols = GRID
        # Concept of every patch: background by default, bands of content inside the margin.
        concept = np.empty((rows, cols, DIM), dtype=np.float32)
        concept[:] = self.background[rng.integers(4, size=(rows, cols))]
        inner = rows - 2 * MARGIN
        n_bands = int(rng.integers(3, 7))
        cuts = np.sort(rng.choice(np.arange(1, inner), size=n_bands - 1, replace=False))
        bounds = np.concatenate([[0], cuts, [inner]]) + MARGIN
        bands: list[tuple[int, int]] = []
        for r0, r1 in itertools.pairwise(bounds):
            kind = rng.choice(4, p=[0.15, 0.35, 0.3, 0.2])  # blank, topic, document, page
            if kind == 0:
                continue
            pool = pools[kind - 1]
            chosen = pool[rng.choice(len(pool), size=2, replace=False)]
            pick = rng.integers(2, size=(r1 - r0, cols - 2 * MARGIN))
            concept[r0:r1, MARGIN : cols - MARGIN] = chosen[pick]
            bands.append((int(r0), int(r1)))
        image = _unit(concept.reshape(-1, DIM) + _noise(rng, (rows * cols, DIM), TOKEN_NOISE))
        prefix = _unit(self.prefix + _noise(rng, self.prefix.shape, 0.1))
        suffix = _unit(self.suffix + _noise(rng, self.suffix.shape, 0.1))
        return np.concatenate([prefix, image, suffix]), bands

    def query(self, qid: int, target: int) -> np.ndarray:
        """20 rows near the rows of 1-2 content bands of page `target` (float32, unit)."""
        page, bands = self.page(target)
        rng = np.random.default_rng([self.seed, 3, qid])
        rows, cols = GRID
        if not bands:  # an all-blank page: ask about anything on it
            bands = [(MARGIN, rows - MARGIN)]
        chosen = rng.choice(len(bands), size=min(2, len(bands)), replace=False)
        cells = [
            PREFIX + r * cols + c
            for b in chosen
            for r in range(*bands[b])
            for c in range(MARGIN, cols - MARGIN)
        ]
        picked = page[rng.choice(cells, size=QUERY_ROWS, replace=len(cells) < QUERY_ROWS)]
        return _unit(picked + _noise(rng, picked.shape, QUERY_NOISE))


def targets(seed: int, pages: int, queries: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 4])
    return np.sort(rng.choice(pages, size=min(queries, pages), replace=False))


def doc_and_page(index: int) -> tuple[str, int]:
    """The (doc_id, 1-based page) a synthetic page is stored under."""
    return f"{index // PAGES_PER_DOC:064x}", index % PAGES_PER_DOC + 1


@dataclass
class Dataset:
    """Pages as a float16 memmap (pages, ROWS, DIM) on disk, queries and their targets."""

    path: Path
    seed: int
    pages: np.ndarray  # float16 memmap
    queries: np.ndarray  # (Q, QUERY_ROWS, DIM) float32
    targets: np.ndarray  # (Q,) page index each query was drawn from
    generate_seconds: float

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self.pages), size):
            yield start, np.asarray(self.pages[start : start + size], dtype=np.float32)


def _fill(path: Path, seed: int, start: int, stop: int) -> None:
    """Worker: write pages [start, stop) into the memmap at `path`."""
    world = World.make(seed)
    out = np.load(path, mmap_mode="r+")
    out[start:stop] = np.stack([world.page(i)[0] for i in range(start, stop)])
    out.flush()


def build(
    directory: Path, pages: int, queries: int, seed: int, *, chunk: int = 256, workers: int = 1
) -> Dataset:
    """Generate (or reuse, if complete) the data set for (pages, queries, seed) in `directory`.

    Pages are written chunk by chunk straight into a float16 memmap, by `workers` processes,
    so memory stays bounded whatever the size.
    """
    import time
    from concurrent.futures import ProcessPoolExecutor

    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"pages-{pages}-seed{seed}"
    data, done = stem.with_suffix(".npy"), stem.with_suffix(".json")
    world = World.make(seed)
    tgt = targets(seed, pages, queries)
    qs = np.stack([world.query(i, int(t)) for i, t in enumerate(tgt)])
    shape = (pages, ROWS, DIM)
    if done.exists() and data.exists() and np.load(data, mmap_mode="r").shape == shape:
        seconds = float(json.loads(done.read_text())["generate_seconds"])
    else:
        done.unlink(missing_ok=True)
        started = time.perf_counter()
        out = np.lib.format.open_memmap(data, mode="w+", dtype=np.float16, shape=shape)
        del out  # workers reopen it; the header is written
        spans = [(s, min(s + chunk, pages)) for s in range(0, pages, chunk)]
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_fill, *zip(*[(data, seed, a, b) for a, b in spans], strict=True)))
        else:
            for a, b in spans:
                _fill(data, seed, a, b)
        seconds = time.perf_counter() - started
        done.write_text(json.dumps({"pages": pages, "seed": seed, "generate_seconds": seconds}))
    memmap = np.load(data, mmap_mode="r")
    return Dataset(data, seed, memmap, qs, tgt, seconds)
