"""`pagerag serve` ends within seconds of SIGTERM, even with streams open (issue 10, item 2)."""

from __future__ import annotations

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

from rag.server.run import SHUTDOWN_SECONDS

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def serve(
    tmp_path: Path, tiny_colqwen_dir: Path, tiny_generator_dir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PAGERAG_DATA_DIR": str(tmp_path / "data"),
        "PAGERAG_RETRIEVER_MODEL": str(tiny_colqwen_dir),
        "PAGERAG_GENERATOR_MODEL": str(tiny_generator_dir),
        "PAGERAG_DEVICE": "cpu",
        "PAGERAG_MAX_VISUAL_TOKENS": "32",
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
    }
    cmd = [sys.executable, "-m", "rag.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < end, "the server did not start"
        time.sleep(0.3)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_sigterm_ends_the_server_with_streams_open(
    serve: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, url = serve
    # The UI's heartbeat is a stream that never ends by itself; hold two of them open.
    streams = []
    for n in range(2):
        client = httpx.Client(base_url=url, timeout=30)
        request = client.build_request("GET", f"/gradio_api/heartbeat/session{n}")
        response = client.send(request, stream=True)
        assert response.status_code == 200
        streams.append((client, response))
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=SHUTDOWN_SECONDS + 10)
    elapsed = time.monotonic() - started
    for client, response in streams:
        response.close()
        client.close()
    assert elapsed < SHUTDOWN_SECONDS + 5, elapsed
    assert code in (0, 128 + signal.SIGTERM, -signal.SIGTERM), code
