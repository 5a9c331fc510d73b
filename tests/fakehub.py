"""A Hugging Face Hub on localhost, so the first run's download runs huggingface_hub's real
`snapshot_download` (repo info, file tree, HEAD and GET of each file) without the internet.

`fake_hub(monkeypatch, cache, {"org/name": folder})` serves each folder as a model repository
and points huggingface_hub at it (endpoint, cache directory, online). With `hold=True` the
body of every file above `HELD_BYTES` stops halfway until `hub.release()`: a test sees the
download in progress for as long as it needs to.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HELD_BYTES = 64 * 1024
CHUNK = 16 * 1024  # huggingface_hub reports progress per chunk it reads


class FakeHub:
    def __init__(self, repos: dict[str, Path], *, hold: bool) -> None:
        self.repos = {
            repo: {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}
            for repo, d in repos.items()
        }
        self._released = threading.Event()
        if not hold:
            self._released.set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        """Let the held file bodies finish."""
        self._released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._route(head=True)

            def do_GET(self) -> None:
                self._route(head=False)

            def _route(self, head: bool) -> None:
                path = self.path.split("?")[0]
                for repo, files in hub.repos.items():
                    if path == f"/api/models/{repo}/revision/main":
                        return self._json({"id": repo, "sha": COMMIT}, head)
                    if path == f"/api/models/{repo}/tree/{COMMIT}":
                        tree = [
                            {"type": "file", "path": name, "size": len(body), "oid": _oid(body)}
                            for name, body in files.items()
                        ]
                        return self._json(tree, head)
                    prefix = f"/{repo}/resolve/{COMMIT}/"
                    if path.startswith(prefix) and path[len(prefix) :] in files:
                        return self._file(files[path[len(prefix) :]], head)
                self._send(404, b'{"error": "not found"}', head)

            def _json(self, value: object, head: bool) -> None:
                self._send(200, json.dumps(value).encode(), head, "application/json")

            def _file(self, body: bytes, head: bool) -> None:
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{_oid(body)}"'}
                self._send(200, b"", True, "application/octet-stream", headers, len(body))
                if head:
                    return
                held = len(body) > HELD_BYTES
                for start in range(0, len(body), CHUNK):
                    if held and start >= len(body) // 2:
                        self.wfile.flush()
                        hub._released.wait(60)
                        held = False
                    self.wfile.write(body[start : start + CHUNK])

            def _send(
                self,
                code: int,
                body: bytes,
                head: bool,
                kind: str = "application/json",
                headers: dict[str, str] | None = None,
                length: int | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        return Handler


def _oid(body: bytes) -> str:
    return hashlib.sha1(body).hexdigest()


@contextmanager
def fake_hub(
    monkeypatch: pytest.MonkeyPatch, cache: Path, repos: dict[str, Path], *, hold: bool = False
) -> Iterator[FakeHub]:
    """Serve `repos` and point huggingface_hub at them (online, `cache` as its cache)."""
    from huggingface_hub import constants

    hub = FakeHub(repos, hold=hold)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(cache / "agent_harnesses.json"))
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    try:
        yield hub
    finally:
        hub.close()
