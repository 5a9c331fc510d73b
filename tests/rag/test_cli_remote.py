"""The CLI while `pagerag serve` holds the data directory: a real server (a `pagerag serve`
process on the tiny models) announces itself in DATA_DIR/server.json, and every command run on
that data directory goes through its REST API with the output and exit status it has without
a server; `reset` refuses. A stale announcement is ignored."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from rag.cli import EXIT_CONFIG, EXIT_USAGE, app
from tests.pdfs import make_pdf
from tests.serving import make_library

ROOT = Path(__file__).resolve().parents[2]
KEY = "remote-test-key"
runner = CliRunner()

# Commands whose output must not depend on where they run; `search` in text mode is exact.
SAME = [
    ("docs", "list"),
    ("docs", "list", "--json"),
    ("search", "Revenue 2015", "--mode", "text", "--json"),
    ("search", "Revenue 2015", "--mode", "text"),
    ("search", "Costs", "--mode", "visual", "--json"),
    ("search", "Costs", "--source", "report.pdf", "--mode", "text", "--json"),
    ("search", "Costs", "--tag", "nothing-has-it", "--mode", "text"),
    ("search", "   "),
    ("search", "Costs", "--doc", "ffff"),
    ("docs", "delete", "ffff"),
    ("ask", "What was the total in 2015?", "--json"),
    ("ask", "What was the total in 2015?"),
]


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def comparable(args: tuple, result: tuple[int, str, str]) -> tuple:
    """What must not depend on where a command runs: the output and exit status, and the
    messages of a failure; timings, model loading and the last bits of float scores (another
    process embedded the query) aside."""
    code, stdout, stderr = result
    if "--json" in args and stdout:
        data = json.loads(stdout)
        for item in data if isinstance(data, list) else [data, *data.get("citations", [])]:
            for key in [k for k in item if k.endswith("_seconds")]:
                del item[key]
            if "score" in item:
                item["score"] = round(item["score"], 4)
        stdout = json.dumps(data)
    if code == 0:  # timings, and the progress of loading a model where it runs
        stderr = ""
    return code, stdout, stderr


def one_line(text: str) -> str:
    return " ".join(text.split())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, tiny_colqwen_dir: Path, tiny_generator_dir: Path
) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("remote")
    values = {
        "PAGERAG_DATA_DIR": str(root / "data"),
        "PAGERAG_RETRIEVER_MODEL": str(tiny_colqwen_dir),
        "PAGERAG_GENERATOR_MODEL": str(tiny_generator_dir),
        "PAGERAG_DEVICE": "cpu",
        "PAGERAG_DTYPE": "float32",
        "PAGERAG_MAX_VISUAL_TOKENS": "32",
        "PAGERAG_RENDER_DPI": "50",
        "PAGERAG_GEN_MIN_PIXELS": str(4 * 28 * 28),
        "PAGERAG_GEN_MAX_PIXELS": str(16 * 28 * 28),
        "PAGERAG_MAX_NEW_TOKENS": "6",
        "PAGERAG_API_KEYS": KEY,
        "GRADIO_TEMP_DIR": str(root / "gradio"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in values.items():
            mp.setenv(name, value)
        yield values


@pytest.fixture(scope="module")
def local(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, tuple]:
    """A library ingested without a server, and what each command says about it then."""
    library = make_library(tmp_path_factory.mktemp("remote-library"))
    assert invoke("ingest", str(library))[0] == 0
    return {args: invoke(*args) for args in SAME}


@pytest.fixture(scope="module")
def server(env: dict[str, str], local: dict) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "rag.cli", "serve", "--port", str(port)]
    log = Path(env["PAGERAG_DATA_DIR"]).parent / "server.log"
    with log.open("wb") as sink:  # a file: a pipe nobody reads would fill up and block it
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stderr=sink)
    url = f"http://127.0.0.1:{port}"
    announcement = Path(env["PAGERAG_DATA_DIR"]) / "server.json"
    end = time.monotonic() + 120
    while not announcement.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < end, "the server did not start"
        time.sleep(0.2)
    record = json.loads(announcement.read_text())
    assert (record["url"], record["pid"]) == (url, proc.pid)
    while True:  # announced before it listens: a command would say it waits for it
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.ConnectError:
            assert time.monotonic() < end, "the server did not start"
            time.sleep(0.2)
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert not announcement.exists()  # a clean exit takes it away


def test_every_command_goes_through_the_server(
    server: str, local: dict[tuple, tuple], env: dict[str, str]
) -> None:
    # The index is the server's (the embedded engine locks it): each command now needs it.
    for args, result in local.items():
        assert comparable(args, invoke(*args)) == comparable(args, result), args
    assert local[("search", "   ")][0] == EXIT_USAGE
    assert "no page matched --tag nothing-has-it" in local[args_of("--tag")][1]
    # info: the server's figures (its models are loaded), the same fields.
    code, stdout, _ = invoke("info")
    assert code == 0 and stdout.startswith(f"      server: {server}\n")
    info = json.loads(invoke("info", "--json")[1])
    assert (info["documents"], info["pages"]) == (2, 5)


def args_of(option: str) -> tuple:
    return next(a for a in SAME if option in a)


def test_ingest_and_delete_through_the_server(server: str, tmp_path: Path) -> None:
    make_pdf(tmp_path / "new" / "memo.pdf", ["a memo", "its second page"])
    (tmp_path / "new" / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    code, stdout, stderr = invoke("ingest", str(tmp_path / "new"))
    assert code == 1 and one_line(stdout).startswith(
        "indexed 1 document (2 pages), skipped 0 unchanged, 1 failed in "
    )
    assert "failed: broken.pdf: " in stderr
    code, stdout, _ = invoke("ingest", str(tmp_path / "new" / "memo.pdf"))
    assert code == 0 and stdout.startswith("indexed 0 documents (0 pages), skipped 1 unchanged, ")
    [memo] = [
        d for d in json.loads(invoke("docs", "list", "--json")[1]) if d["source"] == "memo.pdf"
    ]
    code, stdout, _ = invoke("search", "memo", "--mode", "text", "--json")
    assert code == 0 and json.loads(stdout)[0]["doc_id"] == memo["doc_id"]
    assert Path(json.loads(stdout)[0]["image"]).is_file()  # a path, as without a server
    code, stdout, _ = invoke("docs", "delete", memo["doc_id"][:8])
    assert code == 0 and stdout == f"deleted {memo['doc_id'][:12]} (memo.pdf, 2 pages)\n"
    code, _, stderr = invoke("ingest", str(tmp_path / "new"), "--tag", "x")
    assert code == EXIT_USAGE and "--tag and --shard do not work while" in one_line(stderr)


def test_reset_and_a_second_server_refuse(server: str, env: dict[str, str]) -> None:
    code, stdout, stderr = invoke("reset", "--yes")
    assert (code, stdout) == (EXIT_CONFIG, "")
    assert f"`pagerag serve` at {server} is using" in one_line(stderr)
    assert "stop the server first" in one_line(stderr)
    assert json.loads(invoke("info", "--json")[1])["documents"] == 2  # nothing was deleted
    code, _, stderr = invoke("serve", "--port", str(free_port()))
    assert code == EXIT_CONFIG and f"already serves {env['PAGERAG_DATA_DIR']} at {server}" in (
        one_line(stderr)
    )


def test_a_wrong_key_says_which_setting(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGERAG_API_KEYS", "not-the-key")
    code, _, stderr = invoke("docs", "list")
    assert code == EXIT_CONFIG and "answered 401" in stderr
    assert "PAGERAG_API_KEYS to hold one of the server's keys" in one_line(stderr)
    assert "set PAGERAG_KEY to a key of the server" in one_line(stderr)


def test_a_scoped_key_from_pagerag_key(
    server: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rag.config import Settings
    from rag.keys import add_key, keys_path, remove_key

    keys = keys_path(Settings())
    reader = add_key(keys, "cli-reader", "read", ["default"])  # the server re-reads the file
    try:
        monkeypatch.delenv("PAGERAG_API_KEYS")
        monkeypatch.setenv("PAGERAG_KEY", reader)
        code, stdout, _ = invoke("docs", "list", "--json")
        assert code == 0 and len(json.loads(stdout)) == 2
        make_pdf(tmp_path / "memo.pdf", ["a memo"])
        code, _, stderr = invoke("ingest", str(tmp_path / "memo.pdf"))
        assert code == EXIT_CONFIG and "answered 403" in stderr
        assert "key 'cli-reader' may only read library 'default'" in one_line(stderr)
        assert json.loads(invoke("docs", "list", "--json")[1]) == json.loads(stdout)
    finally:
        remove_key(keys, "cli-reader")


def test_the_cli_looks_where_the_server_announces_itself() -> None:
    import rag.cli
    import rag.remote

    assert rag.cli.SERVER_FILE == rag.remote.SERVER_FILE


def test_a_stale_announcement_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    import rag.remote

    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path / "data"))
    assert invoke("docs", "list")[0] == 0  # an empty library
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = int(gone.stdout)
    announcement = tmp_path / "data" / "server.json"
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    for pid, wait in ((dead, 60.0), (os.getpid(), 1.0)):  # gone; alive but never answers
        monkeypatch.setattr(rag.remote, "START_WAIT", wait)
        announcement.write_text(json.dumps({"url": url, "pid": pid}))
        started = time.monotonic()
        code, stdout, _ = invoke("docs", "list")
        assert code == 0 and stdout == "no documents yet; run `pagerag ingest PATH`\n"
        assert time.monotonic() - started < wait + 5
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
