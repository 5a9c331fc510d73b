"""Ingestion benchmark: rendering pages/s (pypdfium2 vs pdf2image, one process vs all cores) and
the whole pipeline with the tiny model, on the real PDFs in ../shared/corpus.

    python bench/ingest.py --json

Rendering goes through the product's `ingest.render.iter_pages` (page image + text layer, at
PAGERAG_RENDER_DPI). "All cores" is a process pool over files, largest first. The pipeline is
`PageRAG.ingest` (hashing, the sandboxed render worker, PNG files, the tiny ColQwen2 from
tests/tiny_models.py, the Qdrant Edge index, the manifest) on a fresh data directory; with a
model that costs almost nothing, pipeline time minus rendering time minus embedding time is the
overhead outside the model. Every ratio is against the single-process pypdfium2 figure of the
same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from _common import ROOT, emit, log, machine, nproc

from ingest.discover import discover, file_sha256, sniff_kind
from ingest.render import RenderError, inspect, iter_pages

CORPUS = ROOT.parent / "shared" / "corpus"


def readable_pdfs(folder: Path) -> list[tuple[Path, int]]:
    """(path, pages) of every PDF the product can open, biggest first (for load balance)."""
    files, _ = discover([folder])
    found = []
    for file in files:
        _, head = file_sha256(file.path)
        if sniff_kind(head) != "pdf":
            continue
        try:
            found.append((file.path, inspect(file.path, "pdf").pages))
        except RenderError:
            continue  # the encrypted and the empty file: not rendering work
    return sorted(found, key=lambda item: -item[1])


def render_file(path: Path, renderer: str, dpi: int) -> tuple[int, str | None]:
    """Render every page (the image and its text layer, as ingestion does): (pages, error)."""
    pages = 0
    try:
        for page in iter_pages(path, "pdf", renderer=renderer, dpi=dpi):
            page.image.load()  # force the pixels (pdf2image hands back a lazily decoded file)
            pages += 1
    except RenderError as exc:  # counted, not fatal: ingestion reports such a file and goes on
        return pages, f"{path.name}: {exc}"
    return pages, None


def render_all(files: Sequence[Path], renderer: str, dpi: int, workers: int) -> dict[str, Any]:
    started = time.perf_counter()
    if workers == 1:
        results = [render_file(f, renderer, dpi) for f in files]
    else:
        with ProcessPoolExecutor(workers) as pool:
            n = len(files)
            results = list(pool.map(render_file, files, [renderer] * n, [dpi] * n))
    seconds = time.perf_counter() - started
    pages = sum(p for p, _ in results)
    return {
        "pages": pages,
        "seconds": round(seconds, 2),
        "pages_per_s": round(pages / seconds, 2),
        "failed": [error for _, error in results if error],
    }


def pipeline(files: Sequence[Path], dpi: int, max_visual_tokens: int) -> dict[str, Any]:
    """`PageRAG.ingest` with the tiny ColQwen2, and the tiny model's embedding time alone."""
    from PIL import Image

    from rag.config import Settings
    from rag.models.retriever import Retriever
    from rag.service import PageRAG
    from tests.tiny_models import build_tiny_colqwen

    with tempfile.TemporaryDirectory(prefix="pagerag-ingest-bench-") as tmp:
        model = build_tiny_colqwen(Path(tmp) / "model")
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=Path(tmp) / "data",
            retriever_model=str(model),
            device="cpu",
            dtype="float32",
            render_dpi=dpi,
            max_visual_tokens=max_visual_tokens,
        )
        retriever = Retriever.load(settings)
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for f in files:  # only the readable PDFs: failures are not throughput
            (docs / f.name).symlink_to(f)
        service = PageRAG(settings, retriever=retriever)
        try:
            report = service.ingest([docs])
        finally:
            service.close()
        images = sorted((Path(tmp) / "data").rglob("*.png"))
        started = time.perf_counter()
        for i in range(0, len(images), settings.batch_size):
            batch = [Image.open(p).convert("RGB") for p in images[i : i + settings.batch_size]]
            retriever.embed_pages(batch)
        embed_s = time.perf_counter() - started
    pages = report.indexed_pages
    return {
        "pages": pages,
        "documents": report.indexed_documents,
        "failed": len(report.failed),
        "seconds": round(report.seconds, 2),
        "pages_per_s": round(pages / report.seconds, 2),
        "embed_only_s": round(embed_s, 2),
        "batch_size": settings.batch_size,
        "max_visual_tokens": max_visual_tokens,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--dpi", type=int, default=144, help="PAGERAG_RENDER_DPI")
    parser.add_argument("--workers", type=int, default=nproc())
    parser.add_argument("--max-visual-tokens", type=int, default=768)
    parser.add_argument("--no-pipeline", action="store_true", help="rendering only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    files = readable_pdfs(args.corpus)
    paths = [f for f, _ in files]
    result: dict[str, Any] = {
        "corpus": str(args.corpus),
        "files": len(files),
        "pages": sum(n for _, n in files),
        "dpi": args.dpi,
        "machine": machine(),
        "load_avg_start": os.getloadavg(),
    }
    render: dict[str, Any] = {}
    for renderer in ("pypdfium2", "pdf2image"):
        for workers in sorted({1, args.workers}):
            key = f"{renderer}/{workers}"
            log(f"rendering with {renderer}, {workers} process(es)")
            render[key] = render_all(paths, renderer, args.dpi, workers)
    base = render["pypdfium2/1"]["pages_per_s"]
    for row in render.values():
        row["vs_pypdfium2_1_process"] = round(row["pages_per_s"] / base, 2)
    result["render"] = render
    if not args.no_pipeline:
        log("whole pipeline with the tiny model")
        pipe = pipeline(paths, args.dpi, args.max_visual_tokens)
        render_s = pipe["pages"] / base  # rendering alone, same pages, one process
        pipe["render_only_s"] = round(render_s, 2)
        overhead = pipe["seconds"] - render_s - pipe["embed_only_s"]
        pipe["overhead_outside_model_s"] = round(overhead, 2)
        pipe["overhead_ms_per_page"] = round(1000 * overhead / pipe["pages"], 1)
        pipe["vs_pypdfium2_1_process"] = round(pipe["pages_per_s"] / base, 2)
        result["pipeline"] = pipe
        result["pipeline_pages_per_s"] = pipe["pages_per_s"]
    result["render_pages_per_s"] = base
    result["load_avg_end"] = os.getloadavg()
    return result


if __name__ == "__main__":
    import sys

    emit(main(sys.argv[1:]), "--json" in sys.argv)
