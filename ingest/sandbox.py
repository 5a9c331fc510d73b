"""Run the renderer in a separate, limited process and survive whatever it does.

A page that takes longer than the timeout, a renderer that crashes or runs out of memory:
the worker's whole process group is killed (no orphan worker or pdftoppm), the file gets a
RenderError with the reason, and the next file gets a fresh worker.
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

from ingest.render import OpenedDocument, RenderError, RenderLimits

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SandboxPage:
    number: int
    image: Path
    width: int
    height: int
    text: str


class RenderSandbox:
    def __init__(
        self,
        *,
        renderer: str = "pypdfium2",
        dpi: int = 144,
        limits: RenderLimits | None = None,
        page_timeout: float = 60.0,
        memory_mb: int = 4096,
    ) -> None:
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

    def render(
        self,
        path: Path,
        kind: str,
        out_dir: Path,
        *,
        skip: set[int] | None = None,
        password: str | None = None,
    ) -> Iterator[SandboxPage]:
        out_dir.mkdir(parents=True, exist_ok=True)
        request = {
            "op": "render",
            "path": str(path),
            "kind": kind,
            "password": password,
            "renderer": self.renderer,
            "dpi": self.dpi,
            "skip": sorted(skip or ()),
            "out_dir": str(out_dir),
        }
        first = min(set(range(1, self.limits.max_pages + 2)) - set(skip or ()))
        reply = self._request(request, f"rendering page {first}")
        while "done" not in reply:
            yield SandboxPage(
                reply["page"], Path(reply["image"]), reply["width"], reply["height"], reply["text"]
            )
            reply = self._receive(f"rendering the page after page {reply['page']}")

    def close(self) -> None:
        if self._proc is not None:
            self._kill()

    # -- protocol -------------------------------------------------------------------------
    def _request(self, request: dict[str, Any], what: str) -> dict[str, Any]:
        proc = self._ensure()
        assert proc.stdin is not None
        request["limits"] = asdict(self.limits)
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            self._crashed(what)
        return self._receive(what)

    def _receive(self, what: str) -> dict[str, Any]:
        line = self._readline(what)
        reply = json.loads(line)
        if "error" in reply:
            raise RenderError(reply["error"])
        return reply

    def _readline(self, what: str) -> bytes:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + self.page_timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise RenderError(
                    f"rendering timed out: {what} took longer than {self.page_timeout:g} s "
                    "(PAGERAG_RENDER_TIMEOUT_S)"
                )
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self._crashed(what)
                self._buffer += chunk
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
            raise RenderError(f"the renderer crashed with {name}{hint} while {what}")
        raise RenderError(f"the renderer stopped unexpectedly (exit {code}) while {what}")

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
