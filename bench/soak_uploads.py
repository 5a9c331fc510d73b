"""Upload soak: the server's memory over hundreds of uploads (issue 10: RSS 1.06 -> 2.07 GB).

    python bench/soak_uploads.py --uploads 500 [--json]

Starts a real `pagerag serve` on the tiny random test models (as `bench/load.py` does), then
uploads `--uploads` distinct small PDFs one request at a time, alternating the REST API
(`POST /api/v1/documents`, then waiting for the job) and the web UI's route (Gradio's
`/gradio_api/upload` followed by the `on_add` event, as a browser does). Reported: the server's
resident memory after the first upload (the baseline: models, Gradio and the index are warm by
then), its peak, and its level at the end, with a sample every `--every` uploads, so a line that
keeps climbing (retention) can be told from one that levels off (allocator arenas, caches).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - puts the project on sys.path
import httpx
from _common import emit, log, machine
from load import Server

FILE_DATA = {"_type": "gradio.FileData"}


def make_pdf(path: Path, n: int) -> Path:
    from tests.pdfs import make_pdf as write

    return write(path, [f"Soak document {n} page one", f"Soak {n} totals {n * 7}"])


def upload_api(client: httpx.Client, pdf: Path) -> None:
    job = client.post("/api/v1/documents", files={"files": (pdf.name, pdf.read_bytes())}).json()
    while job["state"] in ("queued", "running"):
        time.sleep(0.05)
        job = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert job["indexed_documents"] == 1, job


def upload_ui(client: httpx.Client, pdf: Path) -> None:
    [path] = client.post("/gradio_api/upload", files={"files": (pdf.name, pdf.read_bytes())}).json()
    files = [{"path": path, "meta": FILE_DATA, "orig_name": pdf.name}]
    event = client.post("/gradio_api/call/on_add", json={"data": [files, []]}).json()["event_id"]
    text = client.get(f"/gradio_api/call/on_add/{event}", timeout=120).text
    assert "Added 1 document" in text, text[-300:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=500)
    parser.add_argument("--every", type=int, default=50, help="sample RSS every N uploads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from tests.tiny_models import build_tiny_colqwen, build_tiny_generator

    with tempfile.TemporaryDirectory(prefix="pagerag-soak-") as tmp:
        work = Path(tmp)
        log("building the tiny test models ...")
        retriever = build_tiny_colqwen(work / "colqwen")
        generator = build_tiny_generator(work / "generator")
        library = work / "library"
        make_pdf(library / "seed.pdf", 0)
        with Server(work, retriever, generator, 16, 120.0, library) as server:
            samples: list[dict[str, Any]] = []
            started = time.monotonic()
            with httpx.Client(base_url=server.url, timeout=120) as client:
                for n in range(1, args.uploads + 1):
                    pdf = make_pdf(work / "up" / f"soak-{n}.pdf", n)
                    (upload_api if n % 2 else upload_ui)(client, pdf)
                    pdf.unlink()
                    if n == 1 or n % args.every == 0 or n == args.uploads:
                        samples.append({"uploads": n, "rss_mib": round(server.rss(), 1)})
                        log(f"{n} uploads: RSS {samples[-1]['rss_mib']} MiB")
                end = round(server.rss_settled(), 1)
            docs = len(httpx.get(f"{server.url}/api/v1/documents").json()["documents"])
        baseline = samples[0]["rss_mib"]
        report = {
            "machine": machine(),
            "uploads": args.uploads,
            "documents_at_end": docs,
            "seconds": round(time.monotonic() - started, 1),
            "rss_mib": {
                "baseline": baseline,
                "peak": max(s["rss_mib"] for s in samples),
                "end": end,
                "growth_per_100_uploads": round((end - baseline) / args.uploads * 100, 1),
            },
            "samples": samples,
        }
    emit(report, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
