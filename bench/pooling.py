"""Index-time token pooling (PAGERAG_POOL_FACTOR): what it costs at ingestion, what it saves.

    nice -n 19 .venv/bin/python bench/pooling.py --pages 2000 --storage float16 --json

On deterministic ColQwen2-shaped pages (bench/synthetic.py: 755 x 128, a 24x31 patch grid),
in one run:
- seconds per page of `rag.models.retriever.pool_page` (colpali-engine's HierarchicalTokenPooler
  on the 744 image rows) at each factor, as a ratio to two same-run baselines: rendering a
  letter page with pypdfium2 at the default 144 dpi, and the index upsert of an unpooled page;
- bytes per page on disk of an Edge index of `--pages` pages (EdgeIndex.upsert, flush,
  optimize, close) at factor 1 and each factor, and the rows kept per page.

Not measured here: retrieval quality. Synthetic pages have no meaning to lose and a random
checkpoint has none either; that needs the real ColQwen2 weights (docs/BENCHMARKS.md gives the
`pagerag eval` command).
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit, log, machine
from retrieval import page_batch
from synthetic import GRID, PREFIX, World

from rag.index import EdgeIndex, schema
from rag.models.retriever import pool_page
from rag.types import PageEmbedding, PageRecord

FACTORS = (2, 3, 4)
DPI = 144  # PAGERAG_RENDER_DPI's default


def letter_pdf() -> bytes:
    """A letter page of text, a heading and a filled box (like tests/pdfs.py makes)."""
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=letter, invariant=1)
    pdf.setFont("Helvetica-Bold", 28)
    pdf.drawString(72, 700, "Quarterly revenue 2015")
    pdf.setFont("Helvetica", 11)
    for row in range(40):
        pdf.drawString(72, 660 - 14 * row, f"row {row}: region {row % 7} revenue {row * 1234}")
    pdf.rect(320, 100, 200, 140, fill=1)
    pdf.showPage()
    pdf.save()
    return buf.getvalue()


def render_seconds(repeats: int) -> float:
    """Median seconds to render the letter page at DPI to a PIL image (what ingestion does)."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(letter_pdf())
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        doc[0].render(scale=DPI / 72).to_pil().convert("RGB")
        times.append(time.perf_counter() - started)
    doc.close()
    return statistics.median(times[1:])  # the first one loads fonts


def pooled_batch(
    records: list[PageRecord], embeddings: list[PageEmbedding], factor: int
) -> tuple[list[PageRecord], list[PageEmbedding], float]:
    """The batch pooled at `factor` (records carry the patch map, as ingestion stores them)
    and the seconds spent pooling."""
    started = time.perf_counter()
    pooled = [pool_page(e, factor) for e in embeddings]
    spent = time.perf_counter() - started
    return (
        [replace(r, patch_map=e.patch_map) for r, e in zip(records, pooled, strict=True)],
        pooled,
        spent,
    )


def build(
    path: Path, world: World, pages: int, factor: int, batch: int, storage: str | None = None
) -> dict[str, Any]:
    """An Edge index of `pages` synthetic pages pooled at `factor`; its build figures."""
    index = EdgeIndex(path, storage=storage)
    storage = index.storage
    upsert_s = pool_s = 0.0
    rows: list[int] = []
    for start in range(0, pages, batch):
        vectors = np.stack([world.page(i)[0] for i in range(start, min(pages, start + batch))])
        records, embeddings = page_batch(start, vectors)
        records, embeddings, spent = pooled_batch(records, embeddings, factor)
        pool_s += spent
        rows.extend(len(e.vectors) for e in embeddings)
        started = time.perf_counter()
        index.upsert(records, embeddings)
        if (start + batch) % 512 < batch:
            index.flush()  # as ingestion does after each document: bounds the WAL
        upsert_s += time.perf_counter() - started
        if (start // batch) % 10 == 0:
            log(f"  factor {factor}: {start + len(records)}/{pages} pages")
    started = time.perf_counter()
    index.flush()
    index.optimize()
    optimize_s = time.perf_counter() - started
    index.close()
    # Edge's WAL is a fixed ~50 MB whatever the pages: at a few thousand pages it is a large
    # share of the total, so the figure that scales is given without it too.
    wal = path / "shard" / "wal"
    total = schema.dir_size(path)
    return {
        "factor": factor,
        "storage": storage,
        "rows_per_page": round(float(np.mean(rows)), 1),
        "bytes_per_page": round(total / pages),
        "bytes_per_page_without_wal": round((total - schema.dir_size(wal)) / pages),
        "pool_s_per_page": round(pool_s / pages, 4),
        "upsert_s_per_page": round(upsert_s / pages, 4),
        "optimize_s": round(optimize_s, 1),
    }


def pooling_seconds(world: World, n: int, factor: int) -> float:
    """Median seconds of `pool_page` over `n` pages (after one untimed warm-up page)."""
    times = []
    for i in range(n + 1):
        emb = PageEmbedding(world.page(10_000 + i)[0], GRID, PREFIX)
        started = time.perf_counter()
        pool_page(emb, factor)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000, help="pages of each Edge index")
    parser.add_argument("--timed", type=int, default=40, help="pages timed per factor")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one line of JSON")
    parser.add_argument(
        "--storage", default=schema.DEFAULT_STORAGE, help="PAGERAG_VECTOR_STORAGE of the indexes"
    )
    parser.add_argument(
        "--factors", default=",".join(map(str, FACTORS)), help="pooling factors besides 1"
    )
    args = parser.parse_args(argv)
    factors = tuple(int(f) for f in args.factors.split(","))

    world = World.make(args.seed)
    render_s = render_seconds(args.timed)
    log(f"render: {render_s * 1000:.1f} ms a letter page at {DPI} dpi")
    cost = {f: pooling_seconds(world, args.timed, f) for f in factors}
    for f, s in cost.items():
        log(f"pool_page at {f}: {s * 1000:.1f} ms a page")

    builds = []
    with tempfile.TemporaryDirectory(prefix="pagerag-pooling-") as tmp:
        for factor in (1, *factors):
            path = Path(tmp) / f"f{factor}"
            builds.append(build(path, world, args.pages, factor, args.batch, args.storage))
            log(f"factor {factor}: {builds[-1]}")
            shutil.rmtree(path)
    base = builds[0]
    upsert_s = base["upsert_s_per_page"]
    table = []
    for b in builds:
        f = b["factor"]
        pool = cost.get(f, 0.0)
        table.append(
            {
                **b,
                "pool_ms_per_page": round(pool * 1000, 1),
                "pool_over_render": round(pool / render_s, 2),
                "pool_over_upsert": round(pool / upsert_s, 2) if upsert_s else None,
                "bytes_vs_factor_1": round(b["bytes_per_page"] / base["bytes_per_page"], 3),
            }
        )
    result = {
        "machine": machine(),
        "pages": args.pages,
        "timed_pages": args.timed,
        "render_ms_per_page": round(render_s * 1000, 1),
        "render_dpi": DPI,
        "storage": args.storage,
        "table": table,
    }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
