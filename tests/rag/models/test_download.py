"""Download progress (rag/models/download.py): the tqdm class huggingface_hub is given counts
bytes into the registry, through huggingface_hub's real `snapshot_download` against a Hub on
localhost (tests/fakehub.py), drawn on a terminal or not."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

import pytest

from rag.models.download import DOWNLOADS, Download, DownloadRegistry
from rag.models.loading import HUB_FILE_PATTERNS, ModelLoadError, resolve_model_source
from rag.models.retriever import SPEC
from tests.fakehub import HELD_BYTES, fake_hub

REPO = "test-org/tiny-colqwen"


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_snapshot_download_counts_its_bytes_while_it_runs(
    tiny_colqwen_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wanted = sum(
        p.stat().st_size
        for p in tiny_colqwen_dir.rglob("*")
        if p.is_file() and any(fnmatch(p.name, pat) for pat in HUB_FILE_PATTERNS)
    )
    found: list[Path] = []
    caplog.set_level(logging.INFO, logger="rag.models.download")
    with fake_hub(monkeypatch, tmp_path / "cache", {REPO: tiny_colqwen_dir}, hold=True) as hub:
        fetch = threading.Thread(
            target=lambda: found.append(resolve_model_source(REPO, None, SPEC).path)
        )
        fetch.start()
        try:
            # The weights stop halfway: the download shows as active, part done.
            wait_for(
                lambda: (d := DOWNLOADS.get(REPO)) and d.total > HELD_BYTES and 0 < d.done < d.total
            )
            [running] = [d for d in DOWNLOADS.active() if d.model_id == REPO]
            assert running.kind == "ColQwen2" and 0 < running.done < running.total <= wanted
            assert running.rate > 0 and " of " in running.describe()
        finally:
            hub.release()
            fetch.join(60)
    try:
        done = DOWNLOADS.get(REPO)
        assert done is not None and done.finished and not done.error
        assert done.done == done.total == wanted and not done.active
        assert (found[0] / "config.json").is_file()
        assert REPO not in {d.model_id for d in DOWNLOADS.active()}
        messages = [r.getMessage() for r in caplog.records]
        assert any(m.startswith(f"downloading {REPO} from the Hugging Face Hub") for m in messages)
        assert any(m.startswith(f"downloaded {REPO}: ") for m in messages)
    finally:
        DOWNLOADS.forget(REPO)


def test_a_hub_that_fails_is_recorded_and_named(
    tiny_colqwen_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        fake_hub(monkeypatch, tmp_path / "cache", {REPO: tiny_colqwen_dir}),
        pytest.raises(ModelLoadError, match="PAGERAG_RETRIEVER_MODEL"),
    ):
        resolve_model_source("test-org/absent", None, SPEC)  # 404 from the Hub
    try:
        failed = DOWNLOADS.get("test-org/absent")
        assert failed is not None and failed.finished and failed.error
        assert not failed.active and "\n" not in failed.error
    finally:
        DOWNLOADS.forget("test-org/absent")


@pytest.mark.parametrize("drawn", [False, True])
def test_the_bytes_bar_is_counted_drawn_or_not(drawn: bool) -> None:
    # As snapshot_download makes its bars: a files bar, a network "transfer" bar and the bytes
    # bar, whose total grows by assignment. A disabled bar (no terminal) never moves `.n`.
    registry = DownloadRegistry()
    with registry.track("org/model", "ColQwen2") as progress:
        hidden = not drawn
        files = progress(total=3, unit="it", disable=hidden, name="huggingface_hub.x")
        transfer = progress(
            total=0, unit="B", disable=hidden, name="huggingface_hub.snapshot_download.transfer"
        )
        disk = progress(
            total=0, unit="B", disable=not drawn, name="huggingface_hub.snapshot_download"
        )
        assert registry.active() == []  # nothing to fetch known yet (a cached model never shows)
        disk.total = 1000
        disk.refresh()
        disk.update(400)
        transfer.update(999)
        files.update(1)
        [running] = registry.active()
        assert (running.model_id, running.done, running.total) == ("org/model", 400, 1000)
        for bar in (files, transfer, disk):
            bar.close()
    ended = registry.get("org/model")
    assert ended is not None and ended.finished and ended.done == 400 and not ended.active


def test_a_failed_download_keeps_one_line_of_why() -> None:
    registry = DownloadRegistry()
    with pytest.raises(OSError), registry.track("org/model", "ColQwen2") as progress:
        progress(total=10, unit="B", disable=True).update(3)
        raise OSError("connection reset\nmore detail")
    failed = registry.get("org/model")
    assert failed is not None and failed.error == "OSError: connection reset"
    assert failed.finished and failed.done == 3


def test_describe_says_bytes_rate_and_time_left() -> None:
    d = Download("m", "ColQwen2", done=1_200_000_000, total=4_400_000_000, rate=35e6, started=0)
    assert d.describe() == "1.20 GB of 4.40 GB (27%), 35.0 MB/s, about 2 min left"
    stalled = Download("m", "ColQwen2", done=10, total=0, rate=0, started=0)
    assert stalled.describe() == "10 B of 0 B" and stalled.seconds_left is None
