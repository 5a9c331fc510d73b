"""The server's outer guard (an ASGI middleware around the REST API and the web UI alike).

Two things are checked here, before any route runs, because no route can check them in time:

- **Request bodies are capped as they stream in.** FastAPI reads a JSON body whole before a
  handler runs, and Gradio parses its uploads itself, keeping every form field in memory with no
  size limit; only the receive channel sees every byte of every route. A declared
  `Content-Length` past the cap is refused before one byte is read; a body without one
  (chunked) is counted as it arrives and refused the moment it passes the cap. Multipart
  uploads are also parsed alongside (python-multipart, the parser both Starlette and Gradio
  use, so both see the same parts): too many parts, or a form field (not a file) larger than
  64 KiB, is refused at once, because Gradio would hold such a field in memory.
- **Gradio's file routes serve files only.** `/gradio_api/file=URL` makes Gradio fetch any
  public URL and stream it back (an open proxy), and `/gradio_api/proxy=` forwards to Spaces;
  this server shows only its own page images and uploads, so URLs of any scheme are refused,
  as are paths with `..` segments, backslashes or NUL bytes, whatever their encoding. Which
  folders may be served at all is Gradio's `allowed_paths`/`blocked_paths` (see `rag.api`).

A refusal is a JSON `{"detail": ...}` response with `Connection: close`: the rest of a refused
body is never read, the connection is dropped instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MiB = 1024 * 1024
# Routes that take file uploads: the REST API's and the one Gradio's upload widget posts to.
UPLOAD_PATHS = frozenset({"/api/v1/documents", "/gradio_api/upload"})
# Gradio's routes that serve a file by path, or fetch a URL, from the rest of the request path.
# The legacy root forms are not mounted by Gradio 6, but are cheap to cover should they return.
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/", "/file=")
PROXY_ROUTES = ("/gradio_api/proxy=", "/proxy=")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")  # http:, https:, file:, data:, C: ...


@dataclass(frozen=True)
class Limits:
    upload_bytes: int  # one upload request, all its files together (PAGERAG_MAX_UPLOAD_MB)
    # Any other body: a question with its history, a Gradio event. 4 MiB is thousands of
    # conversation turns, and bounds what one request can make the server hold.
    body_bytes: int = 4 * MiB
    upload_parts: int = 1000  # files and fields of one upload (Gradio's own limit too)
    field_bytes: int = 64 * 1024  # one multipart part that is not a file


class Refused(HTTPException, MultiPartException):
    """A request the guard turns away, raised from the receive channel. An HTTPException, so
    a route that lets it through answers with its status (the guard replaces any other answer
    anyway); and a MultiPartException, because that is what makes the multipart parsers clean
    up: Gradio deletes the partial files of a cut-off upload only on that exception."""

    def __init__(self, status_code: int, detail: str) -> None:
        HTTPException.__init__(self, status_code, detail)
        self.message = detail


def file_route_refusal(path: str) -> str | None:
    """Why a request for `path` must not reach Gradio's file routes; None if it may."""
    if path.startswith(PROXY_ROUTES):
        return "this server does not proxy URLs"
    for prefix in FILE_ROUTES:
        if path.startswith(prefix):
            target = path[len(prefix) :]
            break
    else:
        return None
    # The path arrives percent-decoded once; decode again so `%252e%252e` is seen as `..` too.
    for form in (target, unquote(target)):
        if _SCHEME.match(form) or form.startswith("//"):
            return "only files of this server are served, never URLs"
        if "\\" in form or "\x00" in form or ".." in form.split("/"):
            return "file paths may not contain '..', backslashes or NUL bytes"
    return None


class _MultipartCheck:
    """Parses a multipart body as it streams past, only to count parts and form-field bytes."""

    def __init__(self, boundary: bytes, limits: Limits) -> None:
        self.limits = limits
        self.parts = 0
        self.field_bytes = 0
        self.is_file = False
        self._header_name = b""
        self._header_value = b""
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_part,
                "on_header_end": self._header_end,
                "on_part_data": self._part_data,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError as exc:  # the route's parser would fail the same way
            raise Refused(400, f"malformed multipart body: {exc}") from exc

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.limits.upload_parts:
            raise Refused(400, f"too many parts: at most {self.limits.upload_parts} per upload")
        self.is_file, self.field_bytes = False, 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]  # python-multipart bounds header sizes

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            _, options = parse_options_header(self._header_value)
            self.is_file = b"filename" in options
        self._header_name = self._header_value = b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.is_file:
            return  # files stream to disk in both parsers
        self.field_bytes += end - start
        if self.field_bytes > self.limits.field_bytes:
            kib = self.limits.field_bytes // 1024
            raise Refused(413, f"a form field is larger than {kib} KiB (files go in file parts)")


class _Body:
    """The request's receive channel, counted (and, for uploads, parsed) as it is read."""

    def __init__(
        self, receive: Receive, limit: int, too_large: Refused, parts: _MultipartCheck | None
    ) -> None:
        self._receive = receive
        self.limit = limit
        self.too_large = too_large
        self.parts = parts
        self.seen = 0
        self.refused: Refused | None = None

    async def receive(self) -> Message:
        if self.refused is not None:
            raise self.refused
        message = await self._receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self.seen += len(chunk)
            try:
                if self.seen > self.limit:
                    raise self.too_large
                if self.parts is not None and chunk:
                    self.parts.feed(chunk)
            except Refused as exc:
                self.refused = exc
                raise
        return message


class RequestGuard:
    """ASGI middleware: body caps and file-route checks (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _app_path(scope)
        reason = file_route_refusal(path)
        if reason is not None:
            await _refuse(send, Refused(403, reason))
            return
        headers = _headers(scope)
        upload = path in UPLOAD_PATHS
        limit = self.limits.upload_bytes if upload else self.limits.body_bytes
        too_large = Refused(
            413,
            f"the upload is larger than PAGERAG_MAX_UPLOAD_MB={limit / MiB:g} MB"
            if upload
            else f"the request body is larger than {limit / MiB:g} MiB",
        )
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:  # refused before reading anything
            await _refuse(send, too_large)
            return
        parts = _multipart_check(headers.get(b"content-type", b""), self.limits) if upload else None
        body = _Body(receive, limit, too_large, parts)
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if body.refused is not None and not started:
                return  # whatever the app makes of the refusal, the client gets the refusal
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, body.receive, guarded_send)
        except Exception:
            if body.refused is None or started:
                raise
        if body.refused is not None and not started:
            await _refuse(send, body.refused)


def _app_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


def _multipart_check(content_type: bytes, limits: Limits) -> _MultipartCheck | None:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        return None  # the route refuses it (415/400) without reading much
    return _MultipartCheck(boundary, limits)


async def _refuse(send: Send, exc: Refused) -> None:
    body = json.dumps({"detail": exc.detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # the rest of the body is not read: drop the line
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
