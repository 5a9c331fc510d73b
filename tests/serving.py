"""Helpers for the server, API and UI tests: a service on the tiny models with a small library."""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import Settings
from rag.service import PageRAG
from tests.pdfs import make_pdf

if TYPE_CHECKING:
    from rag.models.generator import Generator
    from rag.models.retriever import Retriever


def serving_settings(
    data: Path, retriever_dir: Path, generator_dir: Path, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data,
        "retriever_model": str(retriever_dir),
        "generator_model": str(generator_dir),
        "device": "cpu",
        "dtype": "float32",
        "max_visual_tokens": 32,
        "render_dpi": 50,
        "batch_size": 4,
        "ask_pages": 2,
        "gen_min_pixels": 4 * 28 * 28,
        "gen_max_pixels": 16 * 28 * 28,
    }
    return Settings(_env_file=None, **{**values, **extra})


def make_library(folder: Path) -> Path:
    make_pdf(folder / "report.pdf", ["Revenue 2015", "Costs 2015", "Total 2015"], title="Report")
    make_pdf(folder / "minutes.pdf", ["Minutes", "Budget"])
    return folder


def serving_service(
    data: Path,
    retriever_dir: Path,
    generator_dir: Path,
    retriever: Retriever,
    generator: Generator,
    *,
    new_tokens: int = 6,
    **extra: Any,
) -> PageRAG:
    """A service on the session's tiny models. The generator is a greedy copy that always
    writes `new_tokens` tokens (a random model would often stop at once)."""
    gen = copy.copy(generator)
    gen.temperature, gen.min_new_tokens, gen.max_new_tokens = 0.0, new_tokens, new_tokens
    settings = serving_settings(data, retriever_dir, generator_dir, **extra)
    return PageRAG(settings, retriever=retriever, generator=gen)


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port of 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the port is held from here on: no race with other tests
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
