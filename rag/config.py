"""Settings: environment variables prefixed PAGERAG_, an optional .env file, no global instance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """Per-user data directory (XDG on Linux, ~/Library on macOS, %LOCALAPPDATA% on Windows)."""
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "pagerag"
    if (Path.home() / "Library").is_dir() and os.uname().sysname == "Darwin":
        return Path.home() / "Library" / "Application Support" / "pagerag"
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "pagerag"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PAGERAG_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(default_factory=default_data_dir)

    # Models: a Hugging Face Hub id or a local directory.
    retriever_model: str = "vidore/colqwen2-v1.0"
    retriever_revision: str | None = None
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    batch_size: int = Field(default=4, ge=1)
    max_visual_tokens: int = Field(default=768, ge=16)

    # Qdrant: embedded Qdrant Edge unless a server URL is given.
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_collection: str = "pagerag"
    qdrant_shards: int = Field(default=1, ge=1)
    qdrant_replicas: int = Field(default=1, ge=1)
    prefetch_limit: int = Field(default=200, ge=1)

    # Rendering.
    renderer: Literal["pypdfium2", "pdf2image"] = "pypdfium2"
    render_dpi: int = Field(default=144, ge=36, le=600)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "pages"

    @property
    def manifest_path(self) -> Path:
        return self.data_dir / "manifest.sqlite3"
