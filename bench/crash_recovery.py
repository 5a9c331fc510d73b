"""Kill `pagerag ingest` with SIGKILL at many moments, run it again, count the pages.

    python bench/crash_recovery.py [--json]

Each trial: a fresh data directory, a folder of generated PDFs, a real `pagerag ingest`
subprocess (tiny random ColQwen2, CPU) killed after a delay or after N page images, then the
same command again to completion. Expected: every page exactly once, no pending document,
every document's pages 1..n. Writes nothing but its report (stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag.config import Settings  # noqa: E402
from rag.service import PageRAG  # noqa: E402
from tests.pdfs import make_pdf  # noqa: E402
from tests.tiny_models import build_tiny_colqwen  # noqa: E402

DOCS = {"a.pdf": 24, "b.pdf": 3, "c.pdf": 40, "d.pdf": 1, "e.pdf": 12, "f.pdf": 30}
DELAYS_S = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 7.0]  # covers start-up, planning, model load, ingest
AFTER_IMAGES = [1, 10, 25, 50, 80, 100]


def run(folder: Path, env: dict[str, str], kill: tuple[str, float] | None) -> str:
    cmd = [sys.executable, "-m", "rag.cli", "ingest", str(folder), "--json"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if kill is None:
        proc.wait()
        return f"exit {proc.returncode}"
    kind, value = kill
    images = Path(env["PAGERAG_DATA_DIR"]) / "pages"
    started = time.monotonic()
    while proc.poll() is None:
        if kind == "delay" and time.monotonic() - started >= value:
            break
        if kind == "images" and len(list(images.rglob("*.png"))) >= value:
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        return "finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "killed"


def check(data: Path, model: Path) -> dict[str, int | bool]:
    settings = Settings(
        _env_file=None,
        data_dir=data,
        retriever_model=str(model),
        device="cpu",
        max_visual_tokens=64,
        render_dpi=60,
    )
    svc = PageRAG(settings)
    try:
        docs = svc.documents()
        complete = all(svc.index.page_ids(d.doc_id) == list(range(1, d.pages + 1)) for d in docs)
        return {
            "documents": len(docs),
            "pages_found": svc.index.count(),
            "pending": len(svc.manifest.pending()),
            "complete": complete,
        }
    finally:
        svc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pagerag-crash-"))
    model = build_tiny_colqwen(work / "model")
    folder = work / "docs"
    for name, pages in DOCS.items():
        make_pdf(folder / name, [f"{name} page {i}" for i in range(pages)])
    expected = sum(DOCS.values())
    trials = [("delay", d) for d in DELAYS_S] + [("images", float(n)) for n in AFTER_IMAGES]
    rows = []
    for i, kill in enumerate(trials):
        data = work / f"data{i}"
        env = {
            **os.environ,
            "PAGERAG_DATA_DIR": str(data),
            "PAGERAG_RETRIEVER_MODEL": str(model),
            "PAGERAG_DEVICE": "cpu",
            "PAGERAG_MAX_VISUAL_TOKENS": "64",
            "PAGERAG_RENDER_DPI": "60",
            "PAGERAG_BATCH_SIZE": "4",
            "HF_HUB_OFFLINE": "1",
        }
        first = run(folder, env, kill)
        at_kill = check(data, model) if (data / "index").exists() else {}
        second = run(folder, env, None)
        found = check(data, model)
        ok = (
            found["pages_found"] == expected
            and found["documents"] == len(DOCS)
            and not found["pending"]
            and found["complete"]
        )
        rows.append(
            {
                "kill": f"{kill[0]}={kill[1]:g}",
                "first_run": first,
                "second_run": second,
                "pages_at_kill": at_kill.get("pages_found", 0),
                "pending_at_kill": at_kill.get("pending", 0),
                "pages_expected": expected,
                **found,
                "ok": ok,
            }
        )
        if not args.json:
            print(rows[-1], flush=True)
    summary = {
        "trials": len(rows),
        "killed": sum(r["first_run"] == "killed" for r in rows),
        "all_ok": all(r["ok"] for r in rows),
        "rows": rows,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
