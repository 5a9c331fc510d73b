"""The service the ingestion tests run: the session's tiny ColQwen2, small renders, no generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rag.config import Settings
from rag.service import PageRAG


def ingest_service(data: Path, retriever_dir: Path, retriever: Any, **settings: Any) -> PageRAG:
    values: dict[str, Any] = {
        "data_dir": data,
        "retriever_model": str(retriever_dir),
        "device": "cpu",
        "max_visual_tokens": 32,
        "render_dpi": 50,
    }
    return PageRAG(Settings(_env_file=None, **{**values, **settings}), retriever=retriever)
