"""Ingestion benchmark: rendering pages/s (pypdfium2 vs pdf2image, one process vs all cores) and
the whole pipeline without a model and with the tiny model, on the real PDFs in ../shared/corpus.

    python bench/ingest.py --json

Rendering goes through the product's `ingest.render.iter_pages` (page image + text layer, at
PAGERAG_RENDER_DPI). "All cores" is a process pool over files, largest first. The pipeline is
`PageRAG.ingest` (hashing, the sandboxed render worker, PNG files, pooling, BM25, the Qdrant
Edge index, the manifest) on a fresh data directory, run twice: with a stand-in model that
returns a fixed ColQwen2-shaped multivector at no cost (so its pages/s is what everything
outside the model allows), and with the tiny ColQwen2 from tests/tiny_models.py (compared with
that model alone on the same pages). Every ratio is against the single-process pypdfium2
figure of the same run.
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

import numpy as np
from _common import ROOT, emit, log, machine, nproc

from ingest.discover import discover, file_sha256, sniff_kind
from ingest.render import RenderError, inspect, iter_pages
from rag.config import Settings
from rag.types import IngestReport, PageEmbedding

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


class NullEmbedder:
    """Stands in for the model: a fixed ColQwen2-shaped multivector per page, at no cost."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        rows = rng.standard_normal((4 + 24 * 31 + 7, 128)).astype(np.float32)
        self.vectors = rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def embed_pages(self, images: Sequence[Any]) -> list[PageEmbedding]:
        return [PageEmbedding(self.vectors, (24, 31), 4) for _ in images]


def ingest_once(files: Sequence[Path], settings: Settings, embedder: Any) -> IngestReport:
    """`PageRAG.ingest` of `files` into a fresh data directory with `embedder` as the model."""
    from rag.service import PageRAG

    docs = settings.data_dir.parent / f"docs-{settings.data_dir.name}"
    docs.mkdir()
    for f in files:  # only the readable PDFs: failures are not throughput
        (docs / f.name).symlink_to(f)
    service = PageRAG(settings, retriever=embedder)
    try:
        return service.ingest([docs])
    finally:
        service.close()


def pipeline(files: Sequence[Path], dpi: int, max_visual_tokens: int) -> dict[str, Any]:
    """`PageRAG.ingest` without a model (everything but the model) and with the tiny ColQwen2,
    and the tiny model alone on the same pages."""
    from PIL import Image

    from rag.models.retriever import Retriever
    from tests.tiny_models import build_tiny_colqwen

    with tempfile.TemporaryDirectory(prefix="pagerag-ingest-bench-") as tmp:
        base = Settings(
            _env_file=None,  # type: ignore[call-arg]
            retriever_model=str(build_tiny_colqwen(Path(tmp) / "model")),
            device="cpu",
            dtype="float32",
            render_dpi=dpi,
            max_visual_tokens=max_visual_tokens,
        )
        null = ingest_once(
            files, base.model_copy(update={"data_dir": Path(tmp) / "null"}), NullEmbedder()
        )
        tiny_settings = base.model_copy(update={"data_dir": Path(tmp) / "tiny"})
        retriever = Retriever.load(tiny_settings)
        tiny = ingest_once(files, tiny_settings, retriever)
        # The model alone, on the decoded page images (decoding is not the model's work).
        images = [Image.open(p).convert("RGB") for p in sorted((Path(tmp) / "tiny").rglob("*.png"))]
        started = time.perf_counter()
        retriever.embed_pages(images)
        embed_s = time.perf_counter() - started
    pages = tiny.indexed_pages
    return {
        "pages": pages,
        "documents": tiny.indexed_documents,
        "failed": len(tiny.failed) + len(null.failed),
        "without_model_s": round(null.seconds, 2),
        "without_model_pages_per_s": round(null.indexed_pages / null.seconds, 2),
        "tiny_model_s": round(tiny.seconds, 2),
        "tiny_model_pages_per_s": round(pages / tiny.seconds, 2),
        "tiny_model_alone_s": round(embed_s, 2),
        "tiny_model_alone_pages_per_s": round(len(images) / embed_s, 2),
        "batch_size": base.batch_size,
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
        log("whole pipeline, without a model and with the tiny model")
        pipe = pipeline(paths, args.dpi, args.max_visual_tokens)
        for key in ("without_model", "tiny_model", "tiny_model_alone"):
            pipe[f"{key}_vs_pypdfium2_1_process"] = round(pipe[f"{key}_pages_per_s"] / base, 2)
        # Everything but the model, per page: hashing, the sandboxed render worker, PNG files,
        # BM25 and pooling, the index upsert and flush, the manifest.
        pipe["outside_model_ms_per_page"] = round(1000 / pipe["without_model_pages_per_s"], 1)
        result["pipeline"] = pipe
        result["pipeline_pages_per_s"] = pipe["tiny_model_pages_per_s"]
    result["render_pages_per_s"] = base
    result["load_avg_end"] = os.getloadavg()
    return result


if __name__ == "__main__":
    import sys

    emit(main(sys.argv[1:]), "--json" in sys.argv)
