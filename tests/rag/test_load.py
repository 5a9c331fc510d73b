"""The load test, short: 20 clients for 8 s against the real server (uvicorn on 127.0.0.1, the
web UI mounted, the tiny models, one model worker, a line of 4), driven by `bench/load.py`
(`make load` runs the full 50 clients for 60 s against a `pagerag serve` of its own).

The server runs in this process, the clients in a subprocess, so the memory measured is the
server's (plus this test process's, which is idle meanwhile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rag.server.app import create_app
from rag.service import PageRAG
from tests.serving import make_library, running_server

ROOT = Path(__file__).resolve().parents[2]

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
        "load",
        queue_size=4,  # small, so that 20 clients overflow it and 429s happen
        request_timeout=30.0,
    )
    svc.ingest([make_library(tmp_path_factory.mktemp("load-library"))])
    yield svc
    svc.close()


def test_20_clients_for_8_seconds(service: PageRAG) -> None:
    with running_server(create_app(service)) as url:
        cmd = [sys.executable, "bench/load.py", "--url", url, "--pid", str(os.getpid())]
        cmd += ["--clients", "20", "--seconds", "8", "--warmup", "3", "--json"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.stdout, done.stderr
    result = json.loads(done.stdout)
    summary = {k: v for k, v in result.items() if k != "machine"}
    assert result["clients"] == 20 and result["queue_size"] == 4
    assert result["accepted"] > 0 and result["refused_429"] > 0, summary
    assert result["sent"] == result["accepted"] + result["refused_429"], summary
    assert result["other"] == {}, summary  # no 5xx, no 504, no connection errors
    assert result["refused_without_retry_after"] == 0, summary
    assert result["all_within_deadline"] and result["max_ms"] <= 30_000, summary
    assert result["server_queue"]["timed_out"] == 0, summary
    growth = result["rss_final_mib"] - result["rss_baseline_mib"]
    assert growth <= result["rss_tolerance_mib"], summary
    assert result["ok"] and done.returncode == 0, summary
