"""Named libraries: separate documents, index, page images and model settings in one data
directory, served by one process.

`default` is the data directory itself (today's layout, nothing moves). Another library NAME
keeps its index, manifest and uploads in DATA_DIR/libraries/NAME/ and its page images in
DATA_DIR/library-pages/NAME/ (one folder the web UI may serve, never beside an index). Its
settings are the process's, with the model settings it was created with (library.json) and:
- Qdrant Edge: its own shard (its own index directory), so nothing is shared but the process;
- a Qdrant server: its own collection, PAGERAG_QDRANT_COLLECTION + "-" + NAME. A collection
  per library rather than payload tenancy: each library may use another retriever (other
  vectors), a library is deleted by dropping its collection, and a filter bug can never leak
  pages across libraries (docs/API.md, "Libraries", says more).

`Libraries` opens each library's `PageRAG` on first use and keeps it; libraries whose model
settings agree share one `ModelHost`, and all share one device lock (one GPU).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import InvalidSettingsError, Settings
from rag.errors import UserError

if TYPE_CHECKING:
    from rag.index.base import PageIndex
    from rag.models.host import ModelHost
    from rag.service import PageRAG

DEFAULT = "default"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
_NAME = re.compile(NAME_PATTERN)
LIBRARY_FILE = "library.json"
# What a library may set for itself; everything else is the process's (PAGERAG_*).
LIBRARY_SETTINGS = (
    *("retriever_model", "retriever_revision", "max_visual_tokens"),
    *("generator_model", "generator_revision", "answer_url"),
    *("search_mode", "ask_pages", "prefetch_limit", "hnsw_ef"),
)


class LibraryError(UserError):
    exit_code = 2  # usage: a bad or unknown name


class UnknownLibrary(LibraryError):
    http_status = 404


class LibraryExists(LibraryError):
    http_status = 409


@dataclass(frozen=True)
class LibraryInfo:
    name: str
    data_dir: str
    created_at: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # the library's own model settings


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise LibraryError(
            f"{str(name)[:60]!r} is not a library name: use 1 to 40 lowercase letters, digits, "
            "'-' or '_', starting with a letter or digit (e.g. team-a)"
        )
    return name


def library_dir(root: Settings, name: str) -> Path:
    return root.data_dir / "libraries" / check_name(name)


def root_dir(settings: Settings) -> Path:
    """The data directory the library of `settings` belongs to (where `serve` announces
    itself and the keys file lives)."""
    if settings.library == DEFAULT:
        return settings.data_dir
    return settings.data_dir.parent.parent  # DATA_DIR/libraries/NAME


def pages_root(root: Settings) -> Path:
    """Where the page images of every library but `default` live (served by the web UI)."""
    return root.data_dir / "library-pages"


def exists(root: Settings, name: str) -> bool:
    return name == DEFAULT or (library_dir(root, name) / LIBRARY_FILE).is_file()


def names(root: Settings) -> list[str]:
    """`default` first, then the others by name."""
    folder = root.data_dir / "libraries"
    found = sorted(
        p.name
        for p in (folder.iterdir() if folder.is_dir() else ())
        if _NAME.match(p.name) and (p / LIBRARY_FILE).is_file()
    )
    return [DEFAULT, *(n for n in found if n != DEFAULT)]


def info(root: Settings, name: str) -> LibraryInfo:
    if name == DEFAULT:
        return LibraryInfo(DEFAULT, str(root.data_dir))
    saved = _read(root, name)
    return LibraryInfo(
        name,
        str(library_dir(root, name)),
        saved.get("created_at", ""),
        dict(saved.get("settings", {})),
    )


def settings_for(root: Settings, name: str | None = None) -> Settings:
    """The settings of library `name` (default: `root.library`, i.e. PAGERAG_LIBRARY)."""
    name = check_name(name or root.library)
    if name == DEFAULT:
        return root
    own = _read(root, name).get("settings", {})
    return root.model_copy(
        update={
            **own,
            "library": name,
            "data_dir": library_dir(root, name),
            "pages_dir": pages_root(root) / name,
            "qdrant_collection": f"{root.qdrant_collection}-{name}",
        }
    )


def create(root: Settings, name: str, settings: dict[str, Any] | None = None) -> LibraryInfo:
    """A new, empty library with its own model settings (only LIBRARY_SETTINGS)."""
    check_name(name)
    if exists(root, name):
        raise LibraryExists(f"library {name!r} exists already; pick another name")
    own = {k: v for k, v in (settings or {}).items() if v is not None}
    unknown = sorted(set(own) - set(LIBRARY_SETTINGS))
    if unknown:
        raise LibraryError(
            f"a library cannot set {', '.join(unknown)}; it may set: {', '.join(LIBRARY_SETTINGS)}"
        )
    try:  # validated as PAGERAG_* values are, with the same one-line messages
        checked = type(root)(**{**root.model_dump(), **own})
    except InvalidSettingsError as exc:
        raise LibraryError(str(exc)) from None
    own = {k: getattr(checked, k) for k in own}
    folder = library_dir(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "created_at": _now(), "settings": own}
    _write(folder / LIBRARY_FILE, record)
    return info(root, name)


def remove(root: Settings, name: str) -> None:
    """Delete a library's files (its Qdrant server collection is `Libraries.delete`'s)."""
    if name == DEFAULT:
        raise LibraryError(
            "the default library cannot be deleted; delete its documents, or `pagerag reset`"
        )
    if not exists(root, name):
        raise UnknownLibrary(f"no library named {name!r}; `pagerag libraries list` shows them")
    folder = library_dir(root, name)
    # The marker goes first: a crash halfway leaves no half library that still lists.
    (folder / LIBRARY_FILE).unlink()
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(pages_root(root) / name, ignore_errors=True)


def _read(root: Settings, name: str) -> dict[str, Any]:
    path = library_dir(root, name) / LIBRARY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnknownLibrary(
            f"no library named {name!r}; `pagerag libraries list` shows them, "
            f"`pagerag libraries create {name}` makes it"
        ) from None
    except ValueError as exc:
        raise LibraryError(f"{path} is not valid JSON ({exc}); restore it or delete it") from exc
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".library.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Libraries:
    """The libraries one process serves: each opened on first use and kept open."""

    def __init__(
        self,
        root: Settings,
        *,
        first: PageRAG | None = None,
        on_open: Callable[[str, PageRAG], None] | None = None,
        open_index: Callable[[Settings], PageIndex] | None = None,
    ) -> None:
        """`first`: an already open service of `root.library` (the server's start-up one).
        `on_open(name, service)` runs once for each library opened later (the server gives
        each its job manager there). `open_index(settings)`: the index of a library (default:
        `rag.index.open_index`, i.e. Edge or the Qdrant server the settings name)."""
        from rag.models.host import host_key

        self.root = root
        self._lock = threading.RLock()
        self._open: dict[str, PageRAG] = {}
        self._hosts: dict[tuple[Any, ...], ModelHost] = {}
        self._device_lock = threading.Lock()
        self._on_open = on_open
        self._open_index = open_index
        if first is not None:
            self._open[first.settings.library] = first
            self._hosts[host_key(first.settings)] = first.models
            self._device_lock = first.models.lock

    def names(self) -> list[str]:
        return names(self.root)

    def info(self, name: str) -> LibraryInfo:
        return info(self.root, check_name(name))

    def opened(self) -> dict[str, PageRAG]:
        with self._lock:
            return dict(self._open)

    def get(self, name: str | None = None) -> PageRAG:
        """The service of library `name` (default: the process's PAGERAG_LIBRARY)."""
        name = check_name(name or self.root.library)
        with self._lock:
            service = self._open.get(name)
            if service is not None:
                return service
            settings = settings_for(self.root, name)  # UnknownLibrary
            service = self._new(settings)
            self._open[name] = service
        if self._on_open is not None:
            self._on_open(name, service)
        return service

    def _new(self, settings: Settings) -> PageRAG:
        from rag.models.host import ModelHost, host_key
        from rag.service import PageRAG

        key = host_key(settings)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = ModelHost(settings, device_lock=self._device_lock)
        index = self._open_index(settings) if self._open_index else None
        return PageRAG(settings, models=host, index=index)

    def create(self, name: str, settings: dict[str, Any] | None = None) -> LibraryInfo:
        with self._lock:
            made = create(self.root, name, settings)
        self.get(name)  # opened now: a bad setting or backend fails here, not at first use
        return made

    def delete(self, name: str, before_close: Callable[[PageRAG], None] | None = None) -> None:
        """Close and delete a library (drops its Qdrant server collection too)."""
        check_name(name)
        if name == DEFAULT:
            remove(self.root, name)  # the refusal, with its message
        with self._lock:
            if not exists(self.root, name):
                raise UnknownLibrary(f"no library named {name!r}")
            service = self._open.pop(name, None) or self._new(settings_for(self.root, name))
        if before_close is not None:
            before_close(service)
        drop = getattr(service.index, "drop", None)  # a Qdrant server's collection
        if drop is not None:
            drop()
        service.close()
        remove(self.root, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def close(self, keep: PageRAG | None = None) -> None:
        """Close every library opened here (but `keep`, whose owner closes it)."""
        with self._lock:
            services, self._open = list(self._open.values()), {}
        for service in services:
            if service is not keep:
                service.close()
