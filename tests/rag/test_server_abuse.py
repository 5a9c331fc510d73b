"""The real server (uvicorn on 127.0.0.1, the tiny models, the web UI mounted) under abuse,
spoken to in raw HTTP: path traversal and URLs on every file-serving route, oversized and
length-less bodies, thousands of multipart parts, a 2 GiB upload cut off, memory checked."""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.server.app import create_app
from rag.server.guard import file_route_refusal
from rag.service import PageRAG
from tests.rawhttp import RawResponse, raw_request
from tests.serving import make_library, running_server

MiB = 1024 * 1024
UPLOAD_MB = 2  # the server's PAGERAG_MAX_UPLOAD_MB here
BOUNDARY = "XyZzY"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
PNG = bytes.fromhex(  # a 1x1 PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000105e2a4bd0000000049454e44ae426082"
)

pytestmark = [
    # Gradio's queue still uses pandas options that pandas 3 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service(
        "abuse",
        max_upload_mb=UPLOAD_MB,
    )
    svc.ingest([make_library(tmp_path_factory.mktemp("abuse-library"))])
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def app(service: PageRAG) -> Any:
    return create_app(service)  # the app `pagerag serve` runs, the web UI mounted


@pytest.fixture(scope="module")
def server(app: Any) -> Iterator[str]:
    with running_server(app) as url:
        yield url


def get(server: str, path: str, method: str = "GET") -> RawResponse:
    return raw_request(server, method, path, timeout=30)


def part(name: str, content: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    )


def end() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def page_image(service: PageRAG) -> Path:
    return sorted(service.settings.images_dir.rglob("*.png"))[0]


# -- file routes ----------------------------------------------------------------------------

# Every way of naming a file outside the page images that was tried. `{data}` is the data
# directory, `{image}` a real page image (so the traversal starts from an allowed file).
ATTACKS = [
    "/etc/passwd",
    "../../../../../../etc/passwd",
    "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "%252e%252e/%252e%252e/%252e%252e/%252e%252e/etc/passwd",
    "..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "..%252f..%252f..%252f..%252fetc%252fpasswd",
    "..\\..\\..\\..\\..\\etc\\passwd",
    "%5c..%5c..%5c..%5cetc%5cpasswd",
    "%2Fetc%2Fpasswd",
    "//etc/passwd",
    "/etc/passwd%00.png",
    "file:///etc/passwd",
    "file:/etc/passwd",
    "FILE:///etc/passwd",
    "http://127.0.0.1:{port}/secret.png",
    "https://example.com/x.png",
    "http://93.184.216.34/x.png",
    "data:image/png;base64,iVBORw0KGgo=",
    "/proc/self/environ",
    "{data}/manifest.sqlite3",
    "{data}/manifest.sqlite3-wal",
    "{data}/index/meta.json",
    "{data}/pages/../manifest.sqlite3",
    "{image}/../../../manifest.sqlite3",
    "{image_dir}/%2e%2e/%2e%2e/manifest.sqlite3",
    "{data}/pages",
]
FILE_ROUTES = ["/gradio_api/file=", "/gradio_api/file/", "/file="]


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[int, list[str]]]:
    """A loopback HTTP server that records every request it gets: a URL handed to the file
    routes must never be fetched."""
    hits: list[str] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"SECRET")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], hits
    httpd.shutdown()


def test_file_routes_refuse_traversal_urls_and_private_files(
    server: str, service: PageRAG, listener: tuple[int, list[str]]
) -> None:
    port, hits = listener
    image = page_image(service)
    values = {"data": service.settings.data_dir, "image": image, "image_dir": image.parent}
    seen: dict[str, int] = {}
    for route in FILE_ROUTES:
        for attack in ATTACKS:
            path = route + attack.format(port=port, **values)
            for method in ("GET", "HEAD"):
                response = get(server, path, method)
                seen[f"{method} {path}"] = response.status
                # 405: the deprecated `/file/` route has no HEAD; never the file either way.
                assert response.status in (403, 404, 405), (path, response.status, response.body)
                assert b"root:" not in response.body and b"SQLite" not in response.body
                assert b"SECRET" not in response.body
    assert hits == [], "a URL given to a file route was fetched"
    assert len(seen) == 2 * len(FILE_ROUTES) * len(ATTACKS)


def test_other_routes_refuse_traversal(server: str, service: PageRAG) -> None:
    doc = service.documents()[0].doc_id
    for path in [
        "/static/../../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/assets/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/svelte/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "//gradio_api/file=../../../../../etc/passwd",
        "/gradio_api//file=/etc/passwd",
        "/gradio_api/./file=/etc/passwd",
        "/./gradio_api/file=/etc/passwd",
        "/gradio_api/file=/etc/passwd?x=../../",
        "/gradio_api/proxy=http://127.0.0.1:1/",
        "/gradio_api/proxy=https://evil.hf.space/x",
        "/gradio_api/custom_component/x/client/..%2f..%2f..%2fetc/passwd",
        "/api/v1/documents/..%2F..%2F..%2Fetc/pages/1/image",
        "/api/v1/documents/%2e%2e/pages/1/image",
        f"/api/v1/documents/{doc}/pages/..%2f..%2f..%2fmanifest.sqlite3/image",
        f"/api/v1/documents/{doc}/pages/1%2f..%2f..%2f..%2fetc%2fpasswd/image",
        f"/api/v1/documents/{doc}/pages/-1/image",
        f"/api/v1/documents/{doc}/pages/1e9/heatmap?query=x",
        f"/api/v1/documents/{doc}%2f..%2f..%2f/pages/1/heatmap?query=x",
        "/api/v1/jobs/..%2f..%2fetc%2fpasswd",
    ]:
        response = get(server, path)
        # 422: a page number that is not a number (FastAPI's validation), never a file.
        assert response.status in (400, 403, 404, 422), (path, response.status)
        assert b"root:" not in response.body and b"SQLite" not in response.body


def test_file_routes_still_serve_page_images_and_ui_uploads(
    server: str, app: Any, service: PageRAG
) -> None:
    image = get(server, f"/gradio_api/file={page_image(service)}")
    assert image.status == 200 and image.body.startswith(b"\x89PNG")
    # A file dropped into the UI goes to Gradio's upload folder and is shown back from there.
    body = part("files", PNG, "dot.png") + end()
    headers = {**MULTIPART, "Content-Length": str(len(body))}
    uploaded = raw_request(server, "POST", "/gradio_api/upload", headers, body)
    assert uploaded.status == 200, uploaded.body
    [stored] = json.loads(uploaded.body)
    back = get(server, f"/gradio_api/file={stored}")
    assert back.status == 200 and back.body == PNG
    # The rest of the data directory is blocked in Gradio's own configuration too.
    [mount] = [r for r in app.routes if getattr(r, "path", None) == ""]
    blocked = {Path(p) for p in mount.app.get_blocks().blocked_paths}  # type: ignore[attr-defined]
    settings = service.settings
    assert {settings.index_dir, settings.manifest_path, settings.uploads_dir} <= blocked


def test_file_route_refusal_rules() -> None:
    allowed = "/gradio_api/file=/tmp/gradio/0f3a/report page 1.png"
    assert file_route_refusal(allowed) is None
    assert file_route_refusal("/api/v1/documents") is None
    assert file_route_refusal("/gradio_api/file=/x/..") is not None
    assert file_route_refusal("/gradio_api/file=/x/%2e%2e/y") is not None
    assert file_route_refusal("/gradio_api/file=C:/x") is not None  # a scheme, or a drive
    assert "proxy" in (file_route_refusal("/gradio_api/proxy=x") or "")


# -- request bodies -------------------------------------------------------------------------


def megabytes(count: int) -> Iterator[bytes]:
    """`count` MiB, one reused buffer at a time: the client holds 1 MiB, whatever the count."""
    block = b"0" * MiB
    for _ in range(count):
        yield block


UPLOAD_ROUTES = ["/api/v1/documents", "/gradio_api/upload"]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/documents", MULTIPART),
        ("/gradio_api/upload", MULTIPART),
        ("/api/v1/ask", {"Content-Type": "application/json"}),
        ("/api/v1/search", {"Content-Type": "application/json"}),
        ("/gradio_api/queue/join", {"Content-Type": "application/json"}),
        ("/login", {"Content-Type": "application/x-www-form-urlencoded"}),
    ],
)
def test_a_declared_length_past_the_cap_is_refused_before_reading(
    server: str, path: str, headers: dict[str, str]
) -> None:
    # Only the headers are sent: the answer comes without the server waiting for the body.
    declared = {**headers, "Content-Length": str(2 << 30)}
    response = raw_request(server, "POST", path, declared, b"", timeout=10)
    assert response.status == 413 and response.headers["connection"] == "close"
    assert "larger than" in json.loads(response.body)["detail"]


@pytest.mark.parametrize(
    ("path", "first", "cap"),
    [
        ("/api/v1/documents", part("files", b"%PDF-1.4\n", "big.pdf")[:-2], UPLOAD_MB),
        ("/gradio_api/upload", part("files", b"%PDF-1.4\n", "big.pdf")[:-2], UPLOAD_MB),
        ("/api/v1/ask", b'{"question": "', 4),
        ("/gradio_api/queue/join", b'{"data": ["', 4),
    ],
)
def test_a_chunked_body_is_cut_off_at_the_cap(
    server: str, service: PageRAG, path: str, first: bytes, cap: int
) -> None:
    headers = MULTIPART if path in UPLOAD_ROUTES else {"Content-Type": "application/json"}
    response = raw_request(
        server, "POST", path, headers, [first, *megabytes(256)], chunked=True, timeout=60
    )
    assert response.status == 413, response.body
    # Sent: the cap, plus what the sockets held when the answer came; never the 256 MiB.
    assert response.sent < (cap + 32) * MiB
    assert not any(service.settings.uploads_dir.rglob("*.upload"))


def many_fields(count: int) -> Iterator[bytes]:
    """`count` one-byte form fields, a thousand to a chunk."""
    for start in range(0, count, 1000):
        yield b"".join(part(f"f{i}", b"x") for i in range(start, min(start + 1000, count)))
    yield end()


def test_thousands_of_multipart_parts_are_refused(server: str) -> None:
    for path in UPLOAD_ROUTES:
        # A million fields (60 MB): refused at the 1001st part, the rest never read.
        response = raw_request(server, "POST", path, MULTIPART, many_fields(10**6), chunked=True)
        assert response.status == 400 and "too many parts" in response.body.decode()
        assert response.sent < 32 * MiB
        fields = b"".join(many_fields(5000))  # the same with a declared length
        headers = {**MULTIPART, "Content-Length": str(len(fields))}
        response = raw_request(server, "POST", path, headers, fields)
        assert response.status == 400 and "too many parts" in response.body.decode()
    # The REST API takes at most 256 files a request (Starlette's parser counts them).
    files = b"".join(part("files", b"%PDF-1.4\n", f"{i}.pdf") for i in range(300)) + end()
    headers = {**MULTIPART, "Content-Length": str(len(files))}
    response = raw_request(server, "POST", "/api/v1/documents", headers, files)
    assert response.status == 400 and "Too many files" in response.body.decode()


def test_a_huge_form_field_is_refused_at_once(server: str) -> None:
    # Gradio keeps form fields (not files) in memory, however large: the guard stops them.
    for path in UPLOAD_ROUTES:
        first = part("notes", b"")[:-2]
        response = raw_request(
            server, "POST", path, MULTIPART, [first, *megabytes(64)], chunked=True
        )
        assert response.status == 413 and "form field" in response.body.decode()
        assert response.sent < 32 * MiB


def test_a_2gib_chunked_upload_is_cut_off_and_memory_stays_flat(
    server: str, service: PageRAG, tmp_path: Path
) -> None:
    import gradio.utils

    gradio_tmp = Path(gradio.utils.get_upload_folder())

    def partial_files() -> set[Path]:
        """Gradio's in-progress upload files of a MiB or more (the cut-off ones would be)."""
        found = set()
        for path in gradio_tmp.glob("tmp*"):
            try:
                if path.is_file() and path.stat().st_size >= MiB:
                    found.add(path)
            except FileNotFoundError:  # moved meanwhile (a finished upload)
                continue
        return found

    partial_before = partial_files()
    before = rss_mib()
    peak = before
    results = []
    for path in UPLOAD_ROUTES:
        first = part("files", b"%PDF-1.4\n", "huge.pdf")[:-2]

        def body() -> Iterator[bytes]:
            nonlocal peak
            for i, block in enumerate(megabytes(2048)):
                if i % 16 == 0:
                    peak = max(peak, rss_mib())
                yield block

        results.append(raw_request(server, "POST", path, MULTIPART, [first, *body()], chunked=True))
    after = rss_mib()
    for response in results:
        assert response.status == 413 and response.sent < (UPLOAD_MB + 32) * MiB
    # Neither the 2 GiB nor the 2 MiB cap: the server streamed what it read to disk.
    assert peak - before < 64 and after - before < 64, (before, peak, after)
    # The partial upload files were removed (Gradio's and ours).
    assert partial_files() <= partial_before
    assert not any(service.settings.uploads_dir.rglob("*.upload"))
    # And the server carries on.
    assert get(server, "/healthz").status == 200
    body = part("files", PNG, "ok.png") + end()
    ok = raw_request(
        server, "POST", "/gradio_api/upload", {**MULTIPART, "Content-Length": str(len(body))}, body
    )
    assert ok.status == 200 and re.search(rb"ok\.png", ok.body)
