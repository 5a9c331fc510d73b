"""Progress of model downloads from the Hugging Face Hub, for /readyz, the UI and the log.

The first run fetches several gigabytes. `DOWNLOADS.track(model_id, kind)` hands
`snapshot_download` a `tqdm_class` that still draws huggingface_hub's own bars on a terminal and
also counts the bytes into this process-wide registry, which any thread may read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0  # the rate is measured over the last seconds, so a stall shows as one
LOG_EVERY_S = 30.0  # without a terminal (no bar drawn) a progress line goes to the log this often


@dataclass(frozen=True)
class Download:
    """One model's download as it stands: a copy, safe to keep."""

    model_id: str
    kind: str  # e.g. "ColQwen2", as the loading errors name it
    done: int  # bytes on disk so far (files already cached included)
    total: int  # bytes of every file to fetch; grows as huggingface_hub learns file sizes
    rate: float  # bytes per second over the last RATE_WINDOW_S
    started: float  # time.time() when it began
    finished: bool = False
    error: str = ""  # one line: why it stopped

    @property
    def active(self) -> bool:
        """Running, with bytes to fetch (a model found in the cache never shows)."""
        return not self.finished and self.total > 0

    @property
    def seconds_left(self) -> float | None:
        if self.rate <= 0 or self.total <= self.done:
            return None
        return (self.total - self.done) / self.rate

    def describe(self) -> str:
        """e.g. `1.2 GB of 4.4 GB (27%), 35.0 MB/s, about 2 min left`."""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        text = f"{size(self.done)} of {size(self.total)}{share}"
        if self.rate > 0:
            text += f", {size(self.rate)}/s"
        if (left := self.seconds_left) is not None:
            text += f", about {duration(left)} left"
        return text


@dataclass
class _Entry:
    model_id: str
    kind: str
    started: float = field(default_factory=time.time)
    done: int = 0
    total: int = 0
    finished: bool = False
    error: str = ""
    samples: deque[tuple[float, int]] = field(default_factory=deque)  # (monotonic, done)
    logged: float = field(default_factory=time.monotonic)

    def rate(self, now: float) -> float:
        while self.samples and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()
        if not self.samples or self.finished:
            return 0.0
        since, then = self.samples[0]
        return (self.done - then) / max(now - since, 1.0)

    def view(self) -> Download:
        return Download(
            model_id=self.model_id,
            kind=self.kind,
            done=self.done,
            total=self.total,
            rate=self.rate(time.monotonic()),
            started=self.started,
            finished=self.finished,
            error=self.error,
        )


class DownloadRegistry:
    """Per model id, the latest download's bytes done and total, rate, start and outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    @contextmanager
    def track(self, model_id: str, kind: str = "") -> Iterator[type[Any]]:
        """Around one `snapshot_download(..., tqdm_class=...)` of `model_id`: yields the class."""
        with self._lock:
            self._entries[model_id] = _Entry(model_id, kind)
        try:
            yield progress_class(self, model_id)
        except BaseException as exc:
            lines = str(exc).strip().splitlines()
            self._end(model_id, f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": "))
            raise
        self._end(model_id)

    def get(self, model_id: str) -> Download | None:
        with self._lock:
            entry = self._entries.get(model_id)
            return entry.view() if entry else None

    def active(self) -> list[Download]:
        """The downloads running now, with bytes to fetch, oldest first."""
        with self._lock:
            views = [e.view() for e in self._entries.values()]
        return [d for d in views if d.active]

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._entries.pop(model_id, None)

    def record(self, model_id: str, n: float, total: float | None, *, drawn: bool) -> None:
        """`n` more bytes (0: only the total changed); `drawn`: a bar shows it on a terminal."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is None or entry.finished:
                return
            began = entry.total == 0 and bool(total)
            entry.done += int(n or 0)
            entry.total = max(entry.total, int(total or 0), entry.done)
            entry.samples.append((now, entry.done))
            view = entry.view()
            due = not drawn and now - entry.logged >= LOG_EVERY_S
            if due:
                entry.logged = now
        if began:
            log.info("downloading %s from the Hugging Face Hub (once: it is cached then)", model_id)
        elif due:
            log.info("downloading %s: %s", model_id, view.describe())

    def _end(self, model_id: str, error: str = "") -> None:
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is None:
                return
            entry.finished, entry.error = True, error
            view = entry.view()
        if view.total and not error:
            seconds = time.time() - view.started
            log.info("downloaded %s: %s in %s", model_id, size(view.done), duration(seconds))
        elif view.total:
            log.warning("downloading %s stopped at %s: %s", model_id, size(view.done), error)


DOWNLOADS = DownloadRegistry()  # the process's: huggingface_hub's cache is per process too


def progress_class(registry: DownloadRegistry, model_id: str) -> type[Any]:
    """A huggingface_hub tqdm class whose byte bars count into `registry` under `model_id`."""
    from huggingface_hub.utils import tqdm

    class Progress(tqdm):  # type: ignore[misc]  # tqdm is untyped
        # snapshot_download draws a files bar ("it") and byte bars ("B"): "transfer" counts
        # network bytes (an estimate with Xet), the other one bytes on disk against the sum of
        # the file sizes, which is the one counted. A disabled bar (no terminal) keeps `.n` at 0,
        # so the bytes are counted here, not read from the bar.
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            name = str(kwargs.get("name") or "")
            self._counted = kwargs.get("unit") == "B" and not name.endswith(".transfer")
            super().__init__(*args, **kwargs)
            if self._counted:
                registry.record(model_id, 0, self.total, drawn=not self.disable)

        def update(self, n: float | None = 1) -> bool | None:
            if self._counted:
                registry.record(model_id, n or 0, self.total, drawn=not self.disable)
            return super().update(n)  # type: ignore[no-any-return]

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            # snapshot_download grows `total` by assignment as it learns each file's size.
            if getattr(self, "_counted", False):
                registry.record(model_id, 0, self.total, drawn=not self.disable)
            super().refresh(*args, **kwargs)

    return Progress


def size(n: float) -> str:
    """Bytes in words: `512 B`, `3.4 MB`, `4.41 GB` (powers of 1000, as the Hub shows them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
