"""Ingestion progress is truthful (issue 11, item 5): counters never go back, a file counts as
done only once it is stored (or found unchanged, or failed), `current` names the file being
worked on, the stage is known from the first report, and the rate leaves out model loading."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from ingest.runner import IngestProgress
from tests.ingesting import ingest_service
from tests.pdfs import make_pdf


def test_progress_counters_only_grow_and_name_the_file_being_worked_on(
    tmp_path: Path, tiny_colqwen_dir: Path, tiny_retriever: Any
) -> None:
    docs = tmp_path / "docs"
    for name in ("a", "b", "c"):
        make_pdf(docs / f"{name}.pdf", [f"{name} page {i}" for i in range(3)])
    (docs / "broken.pdf").write_bytes(b"not a pdf at all")
    service = ingest_service(tmp_path / "data", tiny_colqwen_dir, tiny_retriever, batch_size=2)
    seen: list[IngestProgress] = []
    try:
        # The first run stores a.pdf; the second finds it unchanged and stores b and c.
        service.ingest([docs / "a.pdf"])
        report = service.ingest([docs], on_progress=lambda p: seen.append(replace(p)))
    finally:
        service.close()
    assert report.indexed_documents == 2 and report.skipped_documents == 1

    first = seen[0]
    assert (first.stage, first.files_total, first.files_done, first.pages_done) == (
        "reading",
        4,
        0,
        0,
    )
    for before, after in pairwise(seen):
        for counter in ("files_done", "pages_done", "indexed_documents"):
            assert getattr(after, counter) >= getattr(before, counter), (counter, before, after)
    # Planning never counts the files still to be stored as done (a.pdf and broken.pdf are).
    planned = [p for p in seen if p.stage == "reading"]
    assert max(p.files_done for p in planned) == 2
    stages = [p.stage for p in seen]
    assert stages.index("loading the model") < stages.index("embedding") < stages.index("storing")
    assert stages[-1] == "done" and seen[-1].files_done == 4 and seen[-1].pages_done == 6
    assert seen[-1].indexed_documents == 2
    # While embedding, `current` is the file whose pages are in the batch, never a finished one.
    working = {p.current for p in seen if p.stage in ("embedding", "storing")}
    assert working <= {"b.pdf", "c.pdf"} and working
    # No file is done before its pages are: b.pdf counts only after its 3 pages are stored.
    assert all(p.files_done <= 2 + (p.pages_done // 3) for p in seen)
    assert seen[-1].pages_per_second > 0
    assert all(p.embedding_started is None for p in planned)
