"""Run the renderer in a separate, limited process and survive whatever it does.

A page that takes longer than the timeout, a renderer that crashes or runs out of memory:
the worker's whole process group is killed (no orphan worker or pdftoppm), that page is
skipped with the reason, and a fresh worker resumes at the next page. Every page's wait,
restarts included, counts against the document's render-seconds budget, so a file with a
bomb in every page costs at most that budget, not pages x timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ingest.ocr import OcrOptions
from ingest.render import OpenedDocument, RenderError, RenderLimits, SkippedPage
from ingest.worker import image_path

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


@dataclass(frozen=True)
class SandboxPage:
    number: int
    image: Path
    width: int
    height: int
    text: str
    text_origin: str = "pdf"  # "ocr" when the worker read the text from the image


@dataclass(frozen=True)
class BudgetStop:
    """Rendering stopped before page `next_page`: the document spent `budget` (setting=value)."""

    next_page: int
    budget: str


RenderEvent = SandboxPage | SkippedPage | BudgetStop


class _WorkerLost(RenderError):
    """The worker hung or died (and has been killed); the message says while doing what."""


class _OutOfTime(RenderError):
    """The document's render-seconds budget ran out while waiting for the worker."""


class _Budget:
    """What one document has spent of its render budgets."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.seconds = 0.0  # waiting for the worker: opening, rendering, restarts
        self.bytes = 0  # page images written

    def seconds_left(self) -> float:
        return self.limits.max_render_seconds - self.seconds

    def spent(self) -> str | None:
        """The budget that is used up, as `SETTING=value`, or None."""
        if self.seconds_left() <= 0:
            return f"PAGERAG_MAX_RENDER_SECONDS_PER_DOCUMENT={self.limits.max_render_seconds:g}"
        if self.bytes >= self.limits.max_image_bytes:
            megabytes = round(self.limits.max_image_bytes / MB, 3)  # as the user set it
            return f"PAGERAG_MAX_IMAGE_MB_PER_DOCUMENT={megabytes:g}"
        return None


class RenderSandbox:
    def __init__(
        self,
        *,
        renderer: str = "pypdfium2",
        dpi: int = 144,
        limits: RenderLimits | None = None,
        page_timeout: float = 60.0,
        memory_mb: int = 4096,
        ocr: OcrOptions | None = None,
    ) -> None:
        self.ocr = ocr
        self.renderer = renderer
        self.dpi = dpi
        self.limits = limits or RenderLimits()
        self.page_timeout = page_timeout
        self.memory_mb = memory_mb
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    # -- public ---------------------------------------------------------------------------
    def inspect(self, path: Path, kind: str, password: str | None = None) -> OpenedDocument:
        request = {"op": "inspect", "path": str(path), "kind": kind, "password": password}
        reply = self._request(request, "opening the file")
        return OpenedDocument(pages=reply["pages"], title=reply["title"])

    def read_image(self, image: Path) -> str:
        """OCR of a stored page image, in the worker (its limits apply): `pagerag ocr`.
        Raises RenderError (the reason) when the engine fails or runs out of time."""
        if self.ocr is None:
            raise RenderError("OCR is off (PAGERAG_OCR_ENGINE=off)")
        request = {"op": "ocr", "path": str(image), "kind": "image", "ocr": asdict(self.ocr)}
        return str(self._request(request, f"reading {image.name} by OCR")["text"])

    def render(
        self,
        path: Path,
        kind: str,
        out_dir: Path,
        *,
        skip: set[int] | None = None,
        password: str | None = None,
    ) -> Iterator[RenderEvent]:
        """The document's pages in order, as rendered pages, skipped pages (with the reason),
        and at most one BudgetStop at the end. Raises RenderError when the file cannot be
        opened at all."""
        out_dir.mkdir(parents=True, exist_ok=True)
        budget = _Budget(self.limits)
        first = 1
        in_flight: int | None = None  # the page the worker is rendering now
        try:
            while True:  # one pass per worker: a page that hangs or kills it ends the pass
                request = {
                    "op": "render",
                    "path": str(path),
                    "kind": kind,
                    "password": password,
                    "renderer": self.renderer,
                    "dpi": self.dpi,
                    "skip": sorted(skip or ()),
                    "first": first,
                    "out_dir": str(out_dir),
                    "ocr": asdict(self.ocr) if self.ocr else None,
                }
                try:
                    numbers = self._request(request, "opening the file", budget)["pages"]
                except _OutOfTime:
                    yield BudgetStop(first, budget.spent() or "")
                    return
                for i, number in enumerate(numbers):
                    in_flight = number
                    try:
                        reply = self._receive(f"rendering page {number}", budget)
                    except _OutOfTime:
                        self._discard(out_dir, number)
                        yield BudgetStop(number, budget.spent() or "")
                        return
                    except _WorkerLost as exc:
                        self._discard(out_dir, number)
                        in_flight = None
                        yield SkippedPage(number, str(exc))
                        first = number + 1
                        break
                    in_flight = None
                    event = self._event(reply)
                    if isinstance(event, SandboxPage):
                        budget.bytes += reply["bytes"]
                    following = numbers[i + 1] if i + 1 < len(numbers) else None
                    spent = budget.spent() if following is not None else None
                    if following is not None:  # the worker renders it while we hand this on
                        self._send({"op": "stop" if spent else "next"})
                        in_flight = None if spent else following
                    yield event
                    if spent and following is not None:
                        yield BudgetStop(following, spent)
                        return
                else:
                    return
                if first > numbers[-1]:
                    return
        finally:
            if in_flight is not None:  # abandoned mid-page: the worker cannot be reused
                self._kill()
                self._discard(out_dir, in_flight)

    @staticmethod
    def _event(reply: dict[str, Any]) -> SandboxPage | SkippedPage:
        if "skipped" in reply:
            return SkippedPage(reply["page"], reply["skipped"])
        return SandboxPage(
            reply["page"],
            Path(reply["image"]),
            reply["width"],
            reply["height"],
            reply["text"],
            reply.get("text_origin", "pdf"),
        )

    @staticmethod
    def _discard(out_dir: Path, number: int) -> None:
        """Drop what a killed worker may have written of the page it was on."""
        target = image_path(out_dir, number)
        for leftover in (target, target.with_suffix(".tmp")):
            leftover.unlink(missing_ok=True)

    def close(self) -> None:
        if self._proc is not None:
            self._kill()

    # -- protocol -------------------------------------------------------------------------
    def _request(
        self, request: dict[str, Any], what: str, budget: _Budget | None = None
    ) -> dict[str, Any]:
        proc = self._ensure()
        assert proc.stdin is not None
        request["limits"] = asdict(self.limits)
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            self._crashed(what)
        return self._receive(what, budget)

    def _send(self, message: dict[str, Any]) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        # A worker that died here is found by the next read, which names the page.
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write((json.dumps(message) + "\n").encode())
            proc.stdin.flush()

    def _receive(self, what: str, budget: _Budget | None = None) -> dict[str, Any]:
        line = self._readline(what, budget)
        reply = json.loads(line)
        if "error" in reply:
            raise RenderError(reply["error"])
        return reply

    def _readline(self, what: str, budget: _Budget | None = None) -> bytes:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        started = time.monotonic()
        timeout = self.page_timeout
        by_budget = budget is not None and budget.seconds_left() < timeout
        if budget is not None:
            timeout = max(min(timeout, budget.seconds_left()), 0.0)
        deadline = started + timeout
        try:
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._kill()
                    if by_budget:
                        raise _OutOfTime(f"the render budget ran out while {what}")
                    raise _WorkerLost(
                        f"rendering timed out: {what} took longer than "
                        f"{self.page_timeout:g} s (PAGERAG_RENDER_TIMEOUT_S)"
                    )
                ready, _, _ = select.select([fd], [], [], left)
                if ready:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        self._crashed(what)
                    self._buffer += chunk
        finally:
            if budget is not None:
                budget.seconds += time.monotonic() - started
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _crashed(self, what: str) -> None:
        proc = self._proc
        assert proc is not None
        code = proc.wait(timeout=5) if proc.poll() is None else proc.returncode
        self._kill()
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code in (signal.SIGKILL, signal.SIGABRT) else ""
            raise _WorkerLost(f"the renderer crashed with {name}{hint} while {what}")
        raise _WorkerLost(f"the renderer stopped unexpectedly (exit {code}) while {what}")

    # -- process --------------------------------------------------------------------------
    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                self._kill()
            env = {**os.environ, "PAGERAG_WORKER_MEMORY_MB": str(self.memory_mb)}
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "ingest.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
                start_new_session=True,  # its own process group: kill it and its children
            )
            self._buffer = b""
        return self._proc

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        self._buffer = b""
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
