"""A raw HTTP/1.1 client for abuse tests: it sends the request path byte for byte (HTTP clients
normalise `..` and re-encode paths) and streams a body while watching for an early answer.

The body is sent only while the server has not answered: a server that refuses a body early
answers and closes the connection, and the client stops there and reports how many body bytes
it managed to send, which is how far the server read (plus the sockets' buffers).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    sent: int  # body bytes the client handed to the socket before the answer


def raw_request(
    base: str,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | Iterable[bytes] = b"",
    *,
    chunked: bool = False,
    timeout: float = 60.0,
) -> RawResponse:
    """Send `method path` to `base` (http://host:port) as is; `body` chunks are sent with
    `Transfer-Encoding: chunked` when `chunked`, else raw (give a Content-Length header)."""
    url = urlsplit(base)
    assert url.hostname in ("127.0.0.1", "localhost"), "abuse traffic goes to loopback only"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {url.netloc}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    pending = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    chunks = iter([body] if isinstance(body, bytes) else body)
    sent, received, sending, finished = 0, b"", True, False
    end = time.monotonic() + timeout
    with socket.create_connection((url.hostname, url.port or 80), timeout=timeout) as sock:
        sock.setblocking(False)
        while not _complete(received, head=method == "HEAD"):
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete answer to {method} {path} in {timeout} s")
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], left)
            if readable:
                try:
                    data = sock.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                if not data:
                    break
                received += data
                sending = False  # the server has answered: stop sending
            elif writable:
                if not pending:
                    chunk = next(chunks, None)
                    if chunk is None:  # the body is out; a chunked one ends with a 0 chunk
                        pending = b"0\r\n\r\n" if chunked and not finished else b""
                        finished = True
                        sending = bool(pending)
                        continue
                    sent += len(chunk)
                    pending = _frame(chunk) if chunked else chunk
                try:
                    pending = pending[sock.send(pending) :]
                except (BrokenPipeError, ConnectionResetError):  # refused: read the answer
                    sending, pending = False, b""
    return _parse(received, sent)


def _frame(chunk: bytes) -> bytes:
    return f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"


def _complete(data: bytes, *, head: bool) -> bool:
    headers, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head:  # an answer to HEAD has headers only, whatever its Content-Length says
        return True
    for line in headers.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value)
    return False  # read until the server closes


def _parse(data: bytes, sent: int) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError("the server closed the connection without an answer")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), headers, body, sent)
