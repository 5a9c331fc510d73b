"""The low items of issue 10, each replayed: who is asked for a key and when, keys that are no
keys, the routes Gradio leaves unchecked, 405s, the OpenAPI's security, slow headers and bodies,
a PNG named .pdf sent through the API."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from rag.cli import EXIT_CONFIG
from rag.cli import app as cli_app
from rag.config import InvalidSettingsError, Settings
from rag.server import run as serving
from rag.server.app import create_app
from rag.service import PageRAG
from tests.rawhttp import raw_request
from tests.serving import running_server

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
KEY = "gate-key"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000105e2a4bd0000000049454e44ae426082"
)


@pytest.fixture(scope="module")
def keyed(make_serving_service: Callable[..., PageRAG]) -> Iterator[tuple[PageRAG, str]]:
    svc = make_serving_service("gate-keys", api_keys=KEY, request_timeout=2)
    with running_server(create_app(svc, warm_up=False)) as url:
        yield svc, url
    svc.close()


@pytest.fixture(scope="module")
def open_server(make_serving_service: Callable[..., PageRAG]) -> Iterator[tuple[PageRAG, str]]:
    svc = make_serving_service("gate-open")
    with running_server(create_app(svc, warm_up=False)) as url:
        yield svc, url
    svc.close()


def test_the_key_is_checked_before_the_body(keyed: tuple[PageRAG, str]) -> None:
    _, url = keyed
    bad_bodies = [b"{not json", b'{"query": 5}', b"[]"]
    for body in bad_bodies:
        for path in ("/api/v1/search", "/api/v1/ask"):
            answer = httpx.post(url + path, content=body, headers={"Content-Type": "x/y"})
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    too_big = {"Content-Length": str(1 << 30), "Content-Type": "application/json"}
    assert raw_request(url, "POST", "/api/v1/search", too_big, b"", timeout=10).status == 401
    wrong = {"Authorization": f"Bearer {KEY}x"}
    assert httpx.post(url + "/api/v1/search", content=b"{", headers=wrong).status_code == 401
    right = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    assert httpx.post(url + "/api/v1/search", content=b"{", headers=right).status_code == 422


@pytest.mark.parametrize("value", [",", " ", " , ,", "\t"])
def test_keys_that_hold_no_key_refuse_to_start(value: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidSettingsError, match="PAGERAG_API_KEYS is set but holds no key"):
        Settings(_env_file=None, data_dir=tmp_path, api_keys=value)
    env = {"PAGERAG_DATA_DIR": str(tmp_path), "PAGERAG_API_KEYS": value}
    result = CliRunner().invoke(cli_app, ["serve", "--port", "1"], env=env)
    assert result.exit_code == EXIT_CONFIG
    assert "PAGERAG_API_KEYS is set but holds no key" in " ".join(result.stderr.split())
    # An empty value is "unset", as in a compose file's `PAGERAG_API_KEYS: ${KEYS:-}`.
    assert Settings(_env_file=None, data_dir=tmp_path, api_keys="").api_key_list == ()


UNCHECKED = [
    ("POST", "/gradio_api/cancel"),
    ("POST", "/gradio_api/reset"),
    ("GET", "/gradio_api/startup-events"),
    ("GET", "/gradio_api/heartbeat/abc"),
]


def test_gradios_unchecked_routes_need_a_login(keyed: tuple[PageRAG, str]) -> None:
    _, url = keyed
    for method, path in UNCHECKED:
        answer = httpx.request(method, url + path, json={"event_id": "x", "session_hash": "y"})
        assert answer.status_code == 401, (path, answer.status_code)
    with httpx.Client(base_url=url) as client:
        client.post("/login", data={"username": "u", "password": KEY}).raise_for_status()
        assert client.get("/gradio_api/startup-events").status_code == 200
        with client.stream("GET", "/gradio_api/heartbeat/abc") as beat:
            assert beat.status_code == 200


def test_unknown_methods_get_405_and_unknown_paths_404(open_server: tuple[PageRAG, str]) -> None:
    _, url = open_server
    answer = httpx.patch(url + "/api/v1/documents")
    assert answer.status_code == 405 and set(answer.headers["allow"].split(", ")) >= {"GET"}
    assert "not allowed" in answer.json()["detail"]
    assert httpx.put(url + "/api/v1/search").status_code == 405
    missing = httpx.get(url + "/api/v1/no-such-route")
    assert missing.status_code == 404 and "/docs" in missing.json()["detail"]


def test_the_openapi_asks_for_a_key_only_when_one_is_needed(
    open_server: tuple[PageRAG, str], keyed: tuple[PageRAG, str]
) -> None:
    plain = httpx.get(open_server[1] + "/openapi.json").json()
    assert "securitySchemes" not in plain.get("components", {})
    operations = [op for ops in plain["paths"].values() for op in ops.values()]
    assert not any("security" in op or "401" in op["responses"] for op in operations)
    upload = plain["paths"]["/api/v1/documents"]["post"]["responses"]
    assert {"400", "413", "415", "429"} <= set(upload)
    secured = httpx.get(keyed[1] + "/openapi.json").json()
    assert "securitySchemes" in secured["components"]
    assert "security" in secured["paths"]["/api/v1/search"]["post"]


def test_a_png_named_pdf_is_refused_through_the_api(open_server: tuple[PageRAG, str]) -> None:
    service, url = open_server
    files = {"files": ("scan.pdf", PNG, "application/pdf")}
    job = httpx.post(url + "/api/v1/documents", files=files).json()
    deadline = time.monotonic() + 60
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = httpx.get(f"{url}/api/v1/jobs/{job['id']}").json()
    [error] = job["errors"]
    assert "PNG image, not a PDF; rename it to .png" in error["error"]
    assert "scan.pdf" not in {d.source for d in service.documents()}


def test_a_stalled_body_is_cut_off(keyed: tuple[PageRAG, str]) -> None:
    _, url = keyed  # PAGERAG_REQUEST_TIMEOUT=2 here: a body idle for 2 s is refused
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/json",
        "Content-Length": "100",
    }
    started = time.monotonic()
    answer = raw_request(url, "POST", "/api/v1/search", headers, b'{"query": ', timeout=20)
    assert answer.status == 408 and "stopped arriving" in json.loads(answer.body)["detail"]
    assert time.monotonic() - started < 10


@contextmanager
def timed_server(app: Any) -> Iterator[tuple[str, int]]:
    """The app under `rag.server.run`'s protocol, as `pagerag serve` runs it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", http=serving.TimedH11Protocol)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_clients_that_trickle_headers_are_dropped(
    open_server: tuple[PageRAG, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "HEAD_SECONDS", 1.0)
    service, _ = open_server
    with timed_server(create_app(service, warm_up=False, ui=False)) as (url, port):
        tricklers = []
        for _ in range(20):
            conn = socket.create_connection(("127.0.0.1", port))
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            tricklers.append(conn)
        silent = socket.create_connection(("127.0.0.1", port))  # sends nothing at all
        time.sleep(0.5)
        assert httpx.get(url + "/healthz", timeout=2).status_code == 200  # not starved
        for conn in tricklers:
            conn.sendall(b"X-Slow: 1\r\n")
        closed_by = time.monotonic() + 5
        for conn in [*tricklers, silent]:
            conn.settimeout(max(closed_by - time.monotonic(), 0.1))
            assert conn.recv(100) == b""  # closed by the server, no answer
            conn.close()
        assert httpx.get(url + "/healthz", timeout=2).status_code == 200
