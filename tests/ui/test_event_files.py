"""Web UI events may name only files this client uploaded (issue 10, items 1 and 2).

Replays of the attacks, on the real server (uvicorn, the tiny models, the UI mounted): a chat
history or an upload event naming a server path (`/proc/self/environ`, `/etc/passwd`, the
manifest, `/dev/zero`, a URL) is refused before Gradio opens, copies or hashes it; the server
keeps answering; a real client's own uploads still work, and not another logged-in user's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.server.app import create_app
from rag.service import PageRAG
from tests.pdfs import make_pdf
from tests.serving import make_library, running_server

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
FILE_DATA = {"_type": "gradio.FileData"}
KEY = "k-event-files"


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service("event-files")
    svc.ingest([make_library(tmp_path_factory.mktemp("event-files-library"))])
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def server(service: PageRAG) -> Iterator[str]:
    with running_server(create_app(service, warm_up=False)) as url:
        yield url


def targets(service: PageRAG, corpus: Path) -> list[str]:
    """Server paths an attacker would name; none of them was uploaded through the UI."""
    s = service.settings
    return [
        "/proc/self/environ",
        "/etc/passwd",
        "/dev/zero",
        str(s.manifest_path),
        str(s.index_dir / "meta.json"),
        str(corpus / "issue-1054-example.pdf"),  # a PDF on the server's disk
        next(iter(s.images_dir.rglob("*.png"))).as_posix(),  # even a page image
        "https://example.com/x.pdf",
        "relative.pdf",
    ]


def call(client: httpx.Client, api_name: str, data: list[Any]) -> tuple[int, str]:
    """Gradio's two-step call API: post the inputs, then read the event's stream."""
    posted = client.post(f"/gradio_api/call/{api_name}", json={"data": data}, timeout=20)
    if posted.status_code != 200:
        return posted.status_code, posted.text
    event = posted.json()["event_id"]
    streamed = client.get(f"/gradio_api/call/{api_name}/{event}", timeout=60)
    return streamed.status_code, streamed.text


def chat_with_file(path: str) -> list[Any]:
    """The reported payload: a chat history whose user turn carries a file object."""
    turn = {
        "role": "user",
        "content": [{"type": "file", "file": {"path": path, "meta": FILE_DATA}}],
    }
    return ["hi", [turn], 1, [], False, "text"]


def test_a_chat_history_cannot_name_a_server_file(
    server: str, service: PageRAG, corpus: Path
) -> None:
    secret = Path("/etc/passwd").read_text()[:20]
    with httpx.Client(base_url=server) as client:
        for path in targets(service, corpus):
            status, text = call(client, "ask", chat_with_file(path))
            assert status == 403, (path, status, text)
            assert "not uploaded through this page" in json.loads(text)["detail"]
            assert "/gradio_api/file=" not in text and secret not in text
            # The queue route the browser uses gets the same answer, with or without `meta`.
            join = {"data": chat_with_file(path), "fn_index": 0, "session_hash": "abc123"}
            assert client.post("/gradio_api/queue/join", json=join).status_code == 403
            bare = {"data": [[{"path": path}], []], "fn_index": 3, "session_hash": "abc123"}
            assert client.post("/gradio_api/queue/join", json=bare).status_code == 403


def test_an_upload_event_naming_server_files_is_refused_at_once(
    server: str, service: PageRAG, corpus: Path
) -> None:
    before = {d.doc_id for d in service.documents()}
    with httpx.Client(base_url=server) as client:
        for path in targets(service, corpus):
            files = [{"path": path, "meta": FILE_DATA, "orig_name": "x.pdf"}]
            started = time.monotonic()
            status, text = call(client, "upload", [files, ""])
            # /dev/zero used to be hashed on the event loop for ever: now it is never opened.
            assert status == 403 and time.monotonic() - started < 5, (path, status, text)
            assert client.get("/healthz", timeout=2).status_code == 200
    assert {d.doc_id for d in service.documents()} == before  # nothing was ingested
    assert not list(Path(service.settings.data_dir, "gradio").rglob("environ"))


def test_a_clients_own_upload_is_ingested(server: str, service: PageRAG, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "own upload.pdf", ["Own upload page"])
    with httpx.Client(base_url=server) as client:
        uploaded = client.post(
            "/gradio_api/upload", files={"files": ("own upload.pdf", pdf.read_bytes())}
        )
        assert uploaded.status_code == 200, uploaded.text
        [path] = uploaded.json()
        files = [{"path": path, "meta": FILE_DATA, "orig_name": "own upload.pdf"}]
        status, text = call(client, "upload", [files, ""])
    assert status == 200 and "Added 1 document (1 page)" in text, text
    assert "own upload.pdf" in {d.source for d in service.documents()}


def test_gradio_client_still_uploads_and_asks(
    server: str, service: PageRAG, tmp_path: Path
) -> None:
    # A client nobody here wrote: gradio_client uploads a file, then names it in the event.
    from gradio_client import Client, handle_file

    pdf = make_pdf(tmp_path / "via client.pdf", ["Client page one", "Client page two"])
    client = Client(server, verbose=False, download_files=False)
    *_, report = client.predict([handle_file(str(pdf))], "", api_name="/upload")
    assert "Added 1 document (2 pages)" in report
    chat, *_ = client.predict("Client page?", 1, [], False, "text", api_name="/ask")
    assert chat[-1]["role"] == "assistant" and chat[-1]["content"]


@pytest.fixture(scope="module")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[str]:
    svc = make_serving_service("event-files-keys", api_keys=f"{KEY},{KEY}-2")
    with running_server(create_app(svc, warm_up=False)) as url:
        yield url
    svc.close()


def login(server: str, key: str) -> httpx.Client:
    client = httpx.Client(base_url=server)
    answer = client.post("/login", data={"username": "someone", "password": key})
    assert answer.status_code == 200, answer.text
    return client


def test_another_users_upload_cannot_be_named(keyed_server: str, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "alice.pdf", ["Alice's page"])
    alice, bob = login(keyed_server, KEY), login(keyed_server, f"{KEY}-2")
    try:
        [path] = alice.post("/gradio_api/upload", files={"files": pdf.open("rb")}).json()
        files = [{"path": path, "meta": FILE_DATA, "orig_name": "alice.pdf"}]
        status, text = call(bob, "upload", [files, ""])
        assert status == 403, text
        status, text = call(alice, "upload", [files, ""])
        assert status == 200 and "Added 1 document" in text, text
    finally:
        alice.close()
        bob.close()
    with httpx.Client(base_url=keyed_server) as anonymous:  # no login: Gradio's own 401
        refused = anonymous.post("/gradio_api/upload", files={"files": pdf.open("rb")})
        assert refused.status_code == 401


def test_gradio_checks_event_paths_only_once_launched(server: str) -> None:
    """What `rag.server.app` relies on as its second line (not public API; an upgrade
    that changes it must fail here): with `has_launched`, event inputs outside Gradio's upload
    folder are refused; without it, nothing is checked."""
    import gradio as gr
    from gradio import processing_utils
    from gradio.context import LocalContext
    from gradio.exceptions import InvalidPathError

    with gr.Blocks() as demo:
        gr.Textbox()
    token = LocalContext.blocks.set(demo)
    try:
        demo.has_launched = False
        processing_utils._check_allowed("/etc/passwd", check_in_upload_folder=True)
        demo.has_launched = True
        with pytest.raises(InvalidPathError):
            processing_utils._check_allowed("/etc/passwd", check_in_upload_folder=True)
    finally:
        LocalContext.blocks.reset(token)


def test_the_mounted_ui_has_gradio_path_checks_on(service: PageRAG) -> None:
    app = create_app(service, warm_up=False)
    [mount] = [r for r in app.routes if getattr(r, "path", None) == ""]
    assert mount.app.get_blocks().has_launched  # type: ignore[attr-defined]


def test_the_ui_keeps_a_bounded_number_of_sessions(
    make_serving_service: Callable[..., PageRAG],
) -> None:
    # Gradio keeps each session's updated components (the library listing among them): 10,000
    # sessions by default, which grew the server by ~0.4 MiB an upload in the soak.
    svc = make_serving_service("ui-sessions", ui_sessions=7)
    try:
        app = create_app(svc, warm_up=False)
        [mount] = [r for r in app.routes if getattr(r, "path", None) == ""]
        assert mount.app.state_holder.capacity == 7  # type: ignore[attr-defined]
    finally:
        svc.close()
