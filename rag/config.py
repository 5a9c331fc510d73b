"""Settings: environment variables prefixed PAGERAG_, an optional .env file, no global instance."""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.errors import UserError

# visual: ColQwen2 MaxSim over the page images; text: BM25 over the PDF text layer (no model);
# hybrid: both in one Qdrant query, fused by reciprocal rank fusion.
SearchMode = Literal["visual", "text", "hybrid"]
SEARCH_MODES: tuple[SearchMode, ...] = ("visual", "text", "hybrid")


ENV_PREFIX = "PAGERAG_"


def default_data_dir() -> Path:
    """Per-user data directory (XDG on Linux, ~/Library on macOS, %LOCALAPPDATA% on Windows)."""
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "pagerag"
    if (Path.home() / "Library").is_dir() and os.uname().sysname == "Darwin":
        return Path.home() / "Library" / "Application Support" / "pagerag"
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "pagerag"


class InvalidSettingsError(UserError, ValueError):
    """Settings that cannot be used: one line per bad variable, each naming the variable, the
    value given and what is allowed (pydantic's own report is written for programmers)."""

    http_status = 500  # the server's configuration, never the request's fault


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise InvalidSettingsError(_describe(exc)) from None

    data_dir: Path = Field(default_factory=default_data_dir)
    # The library commands use when none is named (`--library`); `default` is the data
    # directory itself, others live under it (rag/libraries.py).
    library: str = "default"
    # Where page images go, when not DATA_DIR/pages: set for libraries other than `default`,
    # whose images sit under one folder the web UI may serve (never beside their index).
    pages_dir: Path | None = None

    # Models: a Hugging Face Hub id or a local directory.
    retriever_model: str = "vidore/colqwen2-v1.0"
    retriever_revision: str | None = None
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    batch_size: int = Field(default=4, ge=1)
    max_visual_tokens: int = Field(default=768, ge=16)

    # Answering (Qwen2-VL). One visual token covers 28x28 pixels of the resized page. The default
    # per-page cap of 1024 tokens keeps a letter page near 880x1140 pixels, about 100 dpi, where
    # 9-10 pt table text stays legible; the minimum stops tiny images from being read as a blur.
    generator_model: str = "Qwen/Qwen2-VL-2B-Instruct"
    generator_revision: str | None = None
    gen_min_pixels: int = Field(default=256 * 28 * 28, ge=28 * 28)
    gen_max_pixels: int = Field(default=1024 * 28 * 28, ge=28 * 28)
    ask_pages: int = Field(default=3, ge=1, le=20)
    # Total visual tokens over all pages of one question: with more pages each page gets fewer
    # pixels, so the prompt (and the GPU memory it needs) stays bounded.
    visual_token_budget: int = Field(default=3072, ge=64)
    # Beside each page, a crop of the region that matched the question best, at the stored
    # image's full resolution (small print); its tokens come out of the budget above.
    answer_crops: bool = True
    max_new_tokens: int = Field(default=512, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)  # 0 = greedy decoding
    # Or answers from an OpenAI-compatible chat server (vLLM, Ollama, llama.cpp, LM Studio, a
    # hosted API): its base URL (e.g. http://gpu-box:8000/v1); PAGERAG_GENERATOR_MODEL then
    # names the model it serves. Nothing is loaded locally to answer.
    answer_url: str | None = None
    answer_api_key: SecretStr | None = None
    answer_timeout: float = Field(default=120.0, gt=0)  # seconds without a byte from the server

    # Serving (`pagerag serve`: web UI and REST API).
    # Comma-separated; when set, every API call needs `Authorization: Bearer KEY` and the UI
    # a login (any user name, a key as the password).
    api_keys: SecretStr | None = None
    # Scoped keys (rag/keys.py, `pagerag keys add`): names, roles, libraries and key hashes,
    # re-read by a running server when it changes. Default: PAGERAG_DATA_DIR/keys.json.
    keys_file: Path | None = None
    # The key CLI commands send to a running server (a scoped key from `pagerag keys add`, or
    # one of PAGERAG_API_KEYS); unset: the first of PAGERAG_API_KEYS. The server ignores it.
    key: SecretStr | None = None
    max_upload_mb: int = Field(default=200, ge=1)  # one upload request, all its files together
    # One GPU serves everybody: model work runs one request at a time, at most `queue_size`
    # more wait (then 429), and none waits or runs past `request_timeout` seconds (then 504).
    queue_size: int = Field(default=16, ge=0)
    # Web UI sessions (browser tabs, API callers of the UI's events) whose state Gradio keeps in
    # memory; older ones are dropped first. Each keeps the components its events updated (the
    # library listing among them), so this bounds the server's memory (docs/RELIABILITY.md).
    ui_sessions: int = Field(default=200, ge=1)
    request_timeout: float = Field(default=120.0, gt=0)

    # Qdrant: embedded Qdrant Edge unless a server URL is given.
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_collection: str = "pagerag"
    qdrant_shards: int = Field(default=1, ge=1)
    qdrant_replicas: int = Field(default=1, ge=1)
    qdrant_prefer_grpc: bool = False  # gRPC (port 6334): binary vectors instead of JSON text
    qdrant_upload_workers: int = Field(default=4, ge=1)  # upsert requests in flight at once
    # Visual search (rag/index/pooling.py; measured in docs/BENCHMARKS.md): a HNSW over each
    # page's ~12 token clusters picks `prefetch_limit` pages, which get exact MaxSim; more is
    # better recall and slower. `hnsw_ef`: HNSW search breadth, the other recall/speed knob.
    prefetch_limit: int = Field(default=200, ge=1)
    hnsw_ef: int | None = Field(default=1024, ge=1)
    # How the page vectors are kept (rag/index/schema.py STORAGES, measured in
    # docs/BENCHMARKS.md "Vector storage"); fixed when an index is built. Unset: what the
    # existing index was built with (float16 before this setting existed), turbo8 for a new one.
    vector_storage: (
        Literal[
            "float16",
            "turbo8",
            "turbo8-pooled8",
            "turbo8-pooled4",
            "turbo8-pooled-int8",
            "turbo4",
            "int8",
            "binary",
            "binary2",
            "tq4",
        ]
        | None
    ) = None
    # Index-time token pooling: each page's image tokens merged into ~1/factor as many by
    # colpali-engine's hierarchical pooler (1 = off). Fewer bytes a page and a cheaper MaxSim,
    # for some recall (published: 97.8% of nDCG kept at 3); similarity maps get blockier.
    # Measured in docs/BENCHMARKS.md "Token pooling at index time"; fixed when an index is built.
    pool_factor: int = Field(default=1, ge=1, le=8)

    # Search. Hybrid by default: the text layer finds exact names, codes and figures that a
    # 128-d visual embedding can blur, the visual channel finds scans, charts and paraphrases,
    # and the fusion costs one sparse lookup (well under a millisecond) on top of the visual
    # search. The text channel's weight in the fusion (the visual channel weighs 1).
    search_mode: SearchMode = "hybrid"
    hybrid_text_weight: float = Field(default=1.0, gt=0.0, le=10.0)

    # Rendering.
    renderer: Literal["pypdfium2", "pdf2image"] = "pypdfium2"
    render_dpi: int = Field(default=144, ge=36, le=600)
    # Budgets against hostile files (rendering runs in a separate, limited process).
    render_timeout_s: float = Field(default=60.0, gt=0)  # per page, OCR included
    # OCR (ingest/ocr.py) for pages whose text layer has fewer than `ocr_min_chars` visible
    # characters (scans, text drawn as images): the text feeds text and hybrid search.
    ocr_engine: Literal["auto", "rapidocr", "tesseract", "off"] = "auto"
    ocr_min_chars: int = Field(default=20, ge=1)
    render_memory_mb: int = Field(default=4096, ge=0)  # 0 = no limit
    render_max_pixels: int = Field(default=16_000_000, ge=10_000)  # per page; larger renders shrink
    max_pages_per_document: int = Field(default=2000, ge=1)  # the rest is reported, not indexed
    # Per document, besides the page cap: rendering stops once either is spent, the pages done
    # so far are indexed and the report's warning says which budget cut the document short.
    max_render_seconds_per_document: float = Field(default=600.0, gt=0)
    max_image_mb_per_document: float = Field(default=500.0, gt=0)  # page images written
    image_max_pixels: int = Field(default=100_000_000, ge=10_000)  # bigger images are refused
    # Free disk that ingestion, uploads and optimising leave untouched: Qdrant Edge writes into
    # sparse memory-mapped files, and on a full disk that is a SIGBUS, not an error. Sized in
    # ingest/diskspace.py (a WAL segment plus the batch in flight); 0 turns the check off.
    disk_reserve_mb: int = Field(default=64, ge=0)

    # Known errors (a model that cannot load, a full disk...) are logged as one line naming
    # the fix; with PAGERAG_DEBUG=1 the server log has their tracebacks too.
    debug: bool = False

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @field_validator("api_keys", mode="after")
    @classmethod
    def _some_key(cls, v: SecretStr | None) -> SecretStr | None:
        # "," or " " must not quietly mean "no authentication" (an empty value means unset).
        if v is None or not v.get_secret_value():
            return None
        if not any(k.strip() for k in v.get_secret_value().split(",")):
            raise ValueError(
                "PAGERAG_API_KEYS is set but holds no key; give comma-separated keys, or unset "
                "it to run without authentication"
            )
        return v

    @field_validator("answer_url", mode="after")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if not v or not v.strip():
            return None  # empty means unset: answers come from the local model
        if not v.strip().lower().startswith(("http://", "https://")):
            raise ValueError(
                f"PAGERAG_ANSWER_URL={v!r} is not an http(s) URL; give the server's OpenAI "
                "base URL, e.g. http://localhost:8000/v1"
            )
        return v.strip()

    @model_validator(mode="after")
    def _pixel_range(self) -> Settings:
        if self.gen_min_pixels > self.gen_max_pixels:
            raise ValueError(
                f"PAGERAG_GEN_MIN_PIXELS ({self.gen_min_pixels}) is larger than "
                f"PAGERAG_GEN_MAX_PIXELS ({self.gen_max_pixels})"
            )
        return self

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def images_dir(self) -> Path:
        return self.pages_dir or self.data_dir / "pages"

    @property
    def manifest_path(self) -> Path:
        return self.data_dir / "manifest.sqlite3"

    @property
    def uploads_dir(self) -> Path:
        """Uploaded files wait here (under generated names) until they are ingested."""
        return self.data_dir / "uploads"

    @property
    def api_key_list(self) -> tuple[str, ...]:
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        return tuple(k.strip() for k in raw.split(",") if k.strip())


def _describe(exc: ValidationError) -> str:
    """One line per bad setting: `PAGERAG_NAME='value' is not allowed; use ...`."""
    lines: dict[str, str] = {}
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        field = str(error["loc"][0]) if error["loc"] else ""
        info = Settings.model_fields.get(field)
        if info is None or ENV_PREFIX in message:  # a validator's own message names the variables
            lines.setdefault(field or message, message)
            continue
        name = ENV_PREFIX + field.upper()
        secret = SecretStr in _types(info.annotation)
        given = f"{name} (value hidden)" if secret else f"{name}={str(error['input'])!r}"
        allowed = _allowed(info)
        lines.setdefault(
            field, f"{given} is not allowed; " + (f"use {allowed}" if allowed else message)
        )
    return "\n".join(lines.values())


def _types(annotation: Any) -> tuple[Any, ...]:
    """The types of an annotation, `X | None` unpacked."""
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for a in get_args(annotation) if a is not type(None))
    return (annotation,)


def _allowed(info: FieldInfo) -> str:
    """What a setting accepts, in words: its choices, a number and its bounds, true/false."""
    [kind, *_] = _types(info.annotation)
    if get_origin(kind) is Literal:
        choices = [str(c) for c in get_args(kind)]
        return "one of " + ", ".join(choices)
    if kind is bool:
        return "true or false (also 1/0, yes/no, on/off)"
    if kind not in (int, float):
        return ""
    noun = "a whole number" if kind is int else "a number"
    low = {"at least": _bound(info, "ge"), "above": _bound(info, "gt")}
    high = {"at most": _bound(info, "le"), "below": _bound(info, "lt")}
    if low["at least"] is not None and high["at most"] is not None:
        return f"{noun} from {low['at least']:g} to {high['at most']:g}"
    bounds = [f"{word} {v:g}" for word, v in (low | high).items() if v is not None]
    return ", ".join([noun, *bounds])


def _bound(info: FieldInfo, name: str) -> float | None:
    """A numeric bound of a field (`Field(ge=...)` keeps it in the metadata, as annotated_types)."""
    return next((getattr(m, name) for m in info.metadata if hasattr(m, name)), None)
