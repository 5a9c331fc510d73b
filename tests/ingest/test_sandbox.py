"""The render sandbox survives hangs, crashes and memory bombs, and leaves no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from ingest.render import RenderError, RenderLimits, SkippedPage
from ingest.sandbox import RenderSandbox
from tests import hostile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes() and _alive(int(proc.name)):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_renders_a_real_pdf_and_reuses_the_worker(corpus: Path, tmp_path: Path) -> None:
    box = RenderSandbox(dpi=50)
    try:
        assert box.inspect(corpus / "issue-203-decimalize.pdf", "pdf").pages == 3
        pages = list(box.render(corpus / "issue-203-decimalize.pdf", "pdf", tmp_path, skip={2}))
        assert [p.number for p in pages] == [1, 3]
        assert all(p.image.is_file() and p.width > 8 for p in pages)
        worker = box._proc
        list(box.render(corpus / "hello_structure.pdf", "pdf", tmp_path / "b"))
        assert box._proc is worker  # one worker for many files while nothing goes wrong
    finally:
        box.close()
    assert worker is not None and not _alive(worker.pid)


@pytest.mark.parametrize("renderer", ["pypdfium2", "pdf2image"])
def test_a_hanging_page_times_out_and_kills_the_process_group(
    tmp_path: Path, renderer: str
) -> None:
    if renderer == "pdf2image" and shutil.which("pdftoppm") is None:
        pytest.skip("poppler-utils is not installed")
    slow = hostile.write(tmp_path / "slow.pdf", hostile.slow_pdf())
    box = RenderSandbox(renderer=renderer, dpi=72, page_timeout=1.0)
    started = time.monotonic()
    # The page is skipped with the reason; the file's other pages would still render.
    [skipped] = list(box.render(slow, "pdf", tmp_path / "out"))
    assert isinstance(skipped, SkippedPage) and skipped.number == 1
    assert "timed out" in skipped.reason
    assert time.monotonic() - started < 5
    assert box._proc is None
    time.sleep(0.2)
    assert _processes_mentioning(str(slow)) == []  # no worker, no pdftoppm left behind
    # The next file gets a fresh worker.
    good = hostile.write(tmp_path / "good.pdf", hostile.one_page_pdf(content=b"0 0 m 9 9 l S"))
    assert [p.number for p in box.render(good, "pdf", tmp_path / "g")] == [1]
    box.close()


def test_a_worker_killed_from_outside_is_a_crash_report(tmp_path: Path) -> None:
    slow = hostile.write(tmp_path / "slow.pdf", hostile.slow_pdf())
    box = RenderSandbox(dpi=72, page_timeout=30)
    box.inspect(slow, "pdf")
    assert box._proc is not None
    pid = box._proc.pid
    threading.Timer(0.5, os.killpg, (pid, signal.SIGKILL)).start()  # as the OOM killer would
    [skipped] = list(box.render(slow, "pdf", tmp_path / "out"))
    assert isinstance(skipped, SkippedPage) and "crashed with SIGKILL" in skipped.reason
    box.close()


def test_memory_limit_stops_a_huge_image(tmp_path: Path) -> None:
    big = hostile.write(tmp_path / "big.png", hostile.png_bytes(15_000, 15_000))
    box = RenderSandbox(
        memory_mb=600, limits=RenderLimits(image_max_pixels=400_000_000), page_timeout=60
    )
    with pytest.raises(RenderError, match=r"memory|crashed"):
        box.inspect(big, "image")
    box.close()


def test_decompression_bomb_guard(tmp_path: Path) -> None:
    bomb = hostile.write(tmp_path / "bomb.png", hostile.png_bytes(12_000, 12_000))
    box = RenderSandbox(limits=RenderLimits(image_max_pixels=50_000_000))
    with pytest.raises(RenderError, match="PAGERAG_IMAGE_MAX_PIXELS"):
        box.inspect(bomb, "image")
    box.close()


def test_oversized_page_is_rendered_within_the_pixel_budget(tmp_path: Path) -> None:
    huge = hostile.write(tmp_path / "huge.pdf", hostile.one_page_pdf(b"[0 0 14400 14400]"))
    box = RenderSandbox(dpi=144, limits=RenderLimits(max_pixels=4_000_000, max_edge=3000))
    [page] = list(box.render(huge, "pdf", tmp_path / "out"))
    assert page.width * page.height <= 4_000_000 and max(page.width, page.height) <= 3000
    box.close()
