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
  folders may be served at all is Gradio's `allowed_paths`/`blocked_paths` (see `rag.server.app`).
- **UI events name only files this client uploaded.** A Gradio event carries file inputs as
  `{"path": ...}` objects, and Gradio copies (hashing it on the event loop) whatever path it is
  given before any handler runs; when the Blocks are mounted rather than launched, its own path
  check is off. So every event body is read here (it is capped anyway) and each file object in
  it must name a path that Gradio's upload route returned to the same client (by its login
  cookie) in this process; anything else is refused before a file is opened, copied or hashed.

A refusal is a JSON `{"detail": ...}` response with `Connection: close`: the rest of a refused
body is never read, the connection is dropped instead.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from rag.errors import UserError
from rag.keys import KeyRing

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
# Gradio's routes whose JSON body carries component values (event inputs), under /gradio_api.
EVENT_ROUTES = re.compile(r"^/gradio_api/(queue/join|call/|run/|api/|stream/|process_recording)")
GRADIO_UPLOAD = "/gradio_api/upload"
# Gradio routes that answer without its login check (gradio 6.x): with keys set, the gate asks
# for a UI login there too.
UNCHECKED_UI_ROUTES = re.compile(r"^/gradio_api/(cancel|reset|startup-events|heartbeat)(/|$)")
# A library's routes: its REST API under /api/v1/libraries/NAME, its web UI under
# /libraries/NAME. The checks above apply to them as to the default library's (`unscoped`).
_LIBRARY_PATH = re.compile(
    r"^(?P<api>/api/v1)?/libraries/(?P<name>[a-z0-9][a-z0-9_-]{0,39})(?=/|$)"
)


def unscoped(path: str) -> tuple[str, str | None]:
    """(`path` as the default library's, the library it names or None): "/libraries/a/gradio_api/
    upload" -> ("/gradio_api/upload", "a"); "/api/v1/libraries/a/documents" -> ("/api/v1/
    documents", "a"). The library routes themselves (/api/v1/libraries/a) are left as they are."""
    found = _LIBRARY_PATH.match(path)
    if found is None or (found["api"] and found.end() == len(path)):
        return path, None
    return (found["api"] or "") + (path[found.end() :] or "/"), found["name"]


@dataclass(frozen=True)
class Limits:
    upload_bytes: int  # one upload request, all its files together (PAGERAG_MAX_UPLOAD_MB)
    # Any other body: a question with its history, a Gradio event. 4 MiB is thousands of
    # conversation turns, and bounds what one request can make the server hold.
    body_bytes: int = 4 * MiB
    upload_parts: int = 1000  # files and fields of one upload (Gradio's own limit too)
    field_bytes: int = 64 * 1024  # one multipart part that is not a file
    # A body that stops arriving for this long is cut off (408): a client trickling bytes
    # must not hold a worker for ever. Headers have their own deadline (`rag.server.run`).
    body_idle_seconds: float = 30.0


class Refused(HTTPException, MultiPartException):
    """A request the guard turns away, raised from the receive channel. An HTTPException, so
    a route that lets it through answers with its status (the guard replaces any other answer
    anyway); and a MultiPartException, because that is what makes the multipart parsers clean
    up: Gradio deletes the partial files of a cut-off upload only on that exception."""

    def __init__(
        self, status_code: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        HTTPException.__init__(self, status_code, detail, headers)
        self.message = detail


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    """Constant-time in the key's content; every key is compared, so the time does not tell
    which one nearly matched."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def cookies(headers: dict[bytes, bytes]) -> dict[str, str]:
    jar = {}
    for item in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = item.strip().partition("=")
        jar[name] = value
    return jar


@dataclass
class Gate:
    """Who may pass, decided before any route reads a byte of the body (so a stranger learns
    nothing from a validation error): an API key for /api/v1, a web UI login for the Gradio
    routes that do not check it themselves. Open when no keys are configured."""

    ring: KeyRing | None = None  # None or not `enabled`: open
    # Set once the UI is mounted: whether these cookies belong to a logged-in session of the
    # UI of this library (None: the UI at /, the server's own library).
    ui_logged_in: Callable[[dict[str, str], str | None], bool] | None = None

    def refusal(
        self, path: str, headers: dict[bytes, bytes], library: str | None = None
    ) -> Refused | None:
        """`path`, `library`: what `unscoped` makes of the request path."""
        if self.ring is None or not self.ring.enabled:
            return None
        if path == "/api/v1" or path.startswith("/api/v1/"):
            scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            try:  # which libraries and role the key has is each route's check (403)
                known = scheme.lower() == "bearer" and self.ring.find(given.strip()) is not None
            except UserError as exc:  # a broken keys file: nobody but PAGERAG_API_KEYS
                return Refused(503, str(exc))
            if not known:
                return Refused(
                    401,
                    "a valid API key is required: send `Authorization: Bearer KEY` "
                    "(PAGERAG_API_KEYS, or a key made by `pagerag keys add`)",
                    {"WWW-Authenticate": "Bearer"},
                )
        elif (
            UNCHECKED_UI_ROUTES.match(path)
            and self.ui_logged_in is not None
            and not self.ui_logged_in(cookies(headers), library)
        ):
            return Refused(401, "log in to the web UI first (a key is the password)")
        return None


@dataclass
class ReceivedUploads:
    """The files Gradio's upload route handed back, per client: the only paths a UI event may
    name. Bounded: the oldest are forgotten first, and none outlives Gradio's own cache
    (a day, see `ui.app`)."""

    max_entries: int = 100_000
    ttl_seconds: float = 24 * 3600
    _seen: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, client: str, paths: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for path in paths:
                self._seen[(client, path)] = now
                self._seen.move_to_end((client, path))
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)

    def allows(self, client: str, path: str) -> bool:
        with self._lock:
            at = self._seen.get((client, path))
        return at is not None and time.monotonic() - at < self.ttl_seconds


def client_identity(headers: dict[bytes, bytes]) -> str:
    """Who is asking, as far as the UI knows: its Gradio login cookies (empty without keys,
    where every client is the same anonymous one)."""
    jar = cookies(headers)
    return ";".join(sorted(f"{k}={v}" for k, v in jar.items() if k.startswith("access-token")))


def _file_paths(data: Any) -> Iterator[Any]:
    """Every value Gradio could take for a file in an event payload: the `path` of any object
    that has one (with or without FileData's `meta`, whatever its type)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "path" in item:
                yield item["path"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def event_refusal(body: bytes, client: str, uploads: ReceivedUploads) -> str | None:
    """Why a UI event body must not reach Gradio; None if every file it names is an upload of
    this client's."""
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return "the event body is not JSON"
    for path in _file_paths(data):
        if not isinstance(path, str) or not uploads.allows(client, path):
            return "a file in this request was not uploaded through this page; upload it first"
    return None


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
        self,
        receive: Receive,
        limit: int,
        too_large: Refused,
        parts: _MultipartCheck | None,
        idle_seconds: float,
    ) -> None:
        self._receive = receive
        self.idle_seconds = idle_seconds
        self.complete = False  # the whole body is in; later receives wait for a disconnect
        self.limit = limit
        self.too_large = too_large
        self.parts = parts
        self.seen = 0
        self.refused: Refused | None = None

    async def read_all(self) -> bytes:
        """The whole body (it is capped, so it can be held), for checks that need all of it."""
        chunks: list[bytes] = []
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def receive(self) -> Message:
        if self.refused is not None:
            raise self.refused
        if self.complete:  # no deadline: a streaming answer listens for the client leaving
            return await self._receive()
        with anyio.move_on_after(self.idle_seconds) as waited:
            message = await self._receive()
        if waited.cancelled_caught:
            seconds = f"{self.idle_seconds:g}"
            self.refused = Refused(408, f"the request body stopped arriving for {seconds} s")
            raise self.refused
        self.complete = message["type"] != "http.request" or not message.get("more_body", False)
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
    """ASGI middleware: body caps, file-route and UI-event checks (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, limits: Limits, uploads: ReceivedUploads, gate: Gate | None = None
    ) -> None:
        self.app = app
        self.limits = limits
        self.uploads = uploads
        self.gate = gate or Gate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, library = unscoped(_app_path(scope))
        reason = file_route_refusal(path)
        if reason is not None:
            await _refuse(send, Refused(403, reason), receive)
            return
        headers = _headers(scope)
        if (refused := self.gate.refusal(path, headers, library)) is not None:
            await _refuse(send, refused, receive)
            return
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
            await _refuse(send, too_large, receive)
            return
        parts = _multipart_check(headers.get(b"content-type", b""), self.limits) if upload else None
        body = _Body(receive, limit, too_large, parts, self.limits.body_idle_seconds)
        app_receive: Receive = body.receive
        client = client_identity(headers)
        if scope["method"] == "POST" and EVENT_ROUTES.match(path):
            try:
                whole = await body.read_all()
            except Refused as exc:
                await _refuse(send, exc, receive)
                return
            if reason := event_refusal(whole, client, self.uploads):
                await _refuse(send, Refused(403, reason), receive)
                return
            app_receive = _replay(whole, receive)
        started = False
        answer = _Captured() if path == GRADIO_UPLOAD else None

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if body.refused is not None and not started:
                return  # whatever the app makes of the refusal, the client gets the refusal
            if message["type"] == "http.response.start":
                started = True
            if answer is not None:
                answer.see(message)
            await send(message)

        try:
            await self.app(scope, app_receive, guarded_send)
        except Exception:
            if body.refused is None or started:
                raise
        if body.refused is not None and not started:
            await _refuse(send, body.refused, receive)
        elif answer is not None and (paths := answer.uploaded_paths()):
            self.uploads.add(client, paths)


class _Captured:
    """The answer of Gradio's upload route, kept to learn which paths it handed out."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""

    def see(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body" and self.status == 200:
            self.body += message.get("body", b"")

    def uploaded_paths(self) -> list[str]:
        try:
            data = json.loads(self.body) if self.status == 200 else []
        except ValueError:
            return []
        return [p for p in data if isinstance(p, str)] if isinstance(data, list) else []


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that gives the app `body` (already read and checked) in one message,
    then whatever comes after it (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


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


# After a refusal, what the client is still sending is read and dropped for a moment before
# the connection closes, as nginx's lingering close does: closing with unread bytes makes the
# kernel send a reset, which can destroy the answer before the client has read it.
LINGER_SECONDS = 2.0
LINGER_BYTES = 16 * MiB


async def _refuse(send: Send, exc: Refused, receive: Receive) -> None:
    body = json.dumps({"detail": exc.detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # the rest of the body is not read: drop the line
                *((k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": True})
    drained = 0
    with anyio.move_on_after(LINGER_SECONDS):
        while drained < LINGER_BYTES:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
            drained += len(message.get("body", b""))
    await send({"type": "http.response.body", "body": b""})
