"""A full disk (issue 10 item 3): a clear error and exit 3, never SIGBUS; reads keep working.

Runs the real `pagerag` CLI as a subprocess (a SIGBUS kills the process, and that has to be
seen as an exit status) on a small tmpfs mounted as PAGERAG_DATA_DIR, with the tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest

from ingest.diskspace import MB, DiskFullError
from rag.server.jobs import stage

RESERVE_MB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 MB tmpfs, unmounted afterwards; skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
        )
    except OSError as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave_bytes: int) -> None:
    """Grow the balloon file until `leave_bytes` are free (real blocks, not a sparse file)."""
    balloon = disk / "balloon"
    free = shutil.disk_usage(disk).free
    size = (balloon.stat().st_size if balloon.exists() else 0) + free - leave_bytes
    with balloon.open("ab") as f:
        os.posix_fallocate(f.fileno(), 0, max(size, 1))


def pagerag(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "rag.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # A Bus error is what the old code died of: it must never be the outcome.
    assert done.returncode not in (-signal.SIGBUS, 128 + signal.SIGBUS), done.stderr[-2000:]
    return done.returncode, done.stdout, done.stderr


# Small documents first, ingested while there is room, then longer ones that cannot fit.
_SMALL = (
    "annotations.pdf",
    "issue-466-example.pdf",
    "scotus-transcript-p1.pdf",
    "hello_structure.pdf",
)
_LONG = ("issue-67-example.pdf", "issue-316-example.pdf")


def test_full_disk_stops_ingestion_and_keeps_reads_working(
    small_disk: Path, corpus: Path, tiny_colqwen_dir: Path, tmp_path: Path
) -> None:
    pdfs = tmp_path / "pdfs"
    (pdfs / "long").mkdir(parents=True)
    for name in _SMALL:
        shutil.copy(corpus / name, pdfs)
    for name in _LONG:
        shutil.copy(corpus / name, pdfs / "long")
    data = small_disk / "data"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PAGERAG_DATA_DIR": str(data),
        "PAGERAG_RETRIEVER_MODEL": str(tiny_colqwen_dir),
        "PAGERAG_DEVICE": "cpu",
        "PAGERAG_MAX_VISUAL_TOKENS": "64",
        "PAGERAG_RENDER_DPI": "50",
        "PAGERAG_BATCH_SIZE": "4",
        "PAGERAG_DISK_RESERVE_MB": str(RESERVE_MB),
    }
    code, stdout, stderr = pagerag(env, "ingest", *(str(pdfs / n) for n in _SMALL), "--json")
    assert code == 0, stderr
    first = len(_SMALL)
    # 2 MB beyond the reserve, 39 pages to go (about 0.3 MB each): the run must stop in time.
    fill(small_disk, (RESERVE_MB + 2) * MB)
    code, stdout, stderr = pagerag(env, "ingest", str(pdfs), "--json")
    assert code == 3, stderr
    stopped = json.loads(stdout)
    assert f"MB free in {data}; ingestion needs at least" in stopped["error"]
    assert f"{RESERVE_MB} MB free (PAGERAG_DISK_RESERVE_MB" in stopped["error"]
    assert "PAGERAG_DATA_DIR" in stopped["error"] and "error:" in stderr
    assert shutil.disk_usage(small_disk).free >= RESERVE_MB * MB // 2  # it stopped in time

    # Now the disk is completely full (something else filled it): reads still work.
    fill(small_disk, 0)
    code, stdout, stderr = pagerag(env, "docs", "list", "--json")
    assert code == 0, stderr
    listed = {d["doc_id"] for d in json.loads(stdout)}
    assert len(listed) >= first
    code, stdout, stderr = pagerag(env, "search", "court", "--mode", "text", "-k", "50", "--json")
    assert code == 0, stderr
    hits = json.loads(stdout)
    assert hits and {h["doc_id"] for h in hits} <= listed | _pending(data)

    # Space freed: the next run completes the rest, once each, with nothing left pending.
    (small_disk / "balloon").unlink()
    code, stdout, stderr = pagerag(env, "ingest", str(pdfs), "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["failed"] == []
    code, stdout, _ = pagerag(env, "info", "--json")
    info = json.loads(stdout)
    total = len(_SMALL) + len(_LONG)
    assert (info["documents"], info["pending_documents"]) == (total, 0)
    code, stdout, _ = pagerag(env, "docs", "list", "--json")
    docs = json.loads(stdout)
    assert len({d["doc_id"] for d in docs}) == total
    assert info["pages"] == sum(d["pages"] for d in docs)  # no page stored twice


def _pending(data: Path) -> set[str]:
    """Documents the stopped run left pending (their pages may already be searchable)."""
    import sqlite3

    with sqlite3.connect(data / "manifest.sqlite3") as db:
        rows = db.execute("SELECT doc_id FROM documents WHERE state = 'pending'")
        return {r[0] for r in rows}


def test_upload_staging_on_a_full_disk_is_refused_cleanly(small_disk: Path) -> None:
    folder = small_disk / "uploads" / "req"
    fill(small_disk, 2 * MB)
    pdf = b"%PDF-1.4\n" + b"0" * (4 * MB)
    with pytest.raises(DiskFullError, match="accepting an upload needs at least 64 MB free"):
        stage(BytesIO(pdf), "x.pdf", folder)  # the default reserve: refused before writing
    with pytest.raises(DiskFullError, match=r"'x\.pdf' was not accepted"):
        stage(BytesIO(pdf), "x.pdf", folder, reserve_mb=1)  # stopped part-way through
    with pytest.raises(DiskFullError, match="needs at least 1 MB free"):
        stage(BytesIO(pdf), "x.pdf", folder, reserve_mb=0)  # no reserve: still not past full
    assert not any(folder.iterdir())  # no partial copy left behind
