"""The command line through a running server: the embedded index opens in one process only,
so while `pagerag serve` holds a data directory the CLI carries out its commands through the
server's REST API instead of failing on the lock.

`pagerag serve` announces itself in DATA_DIR/server.json (url and pid, written atomically,
removed on a clean exit); `running_server` finds it, ignoring a file whose process is gone or
that never answers /healthz. `RemotePageRAG` has the `PageRAG` methods the CLI calls, with the
same values and the same errors (`UserError`s carrying the exit status), so the commands do
not branch on where they run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from ingest.discover import Shard, SourceFile, discover
from ingest.library import PageImages
from ingest.runner import IngestProgress
from rag.answer import AnswerStream
from rag.config import SEARCH_MODES, SearchMode, Settings
from rag.errors import EXIT_CONFIG, UserError
from rag.ids import doc_prefix
from rag.types import (
    Answer,
    Citation,
    DocumentInfo,
    FileError,
    FileWarning,
    Hit,
    IngestReport,
    SearchFilter,
    ServiceInfo,
)

SERVER_FILE = "server.json"
START_WAIT = 60.0  # seconds to wait for an announced server that is still starting
POLL = 0.3  # seconds between looks at an ingestion job
MAX_FILTER_IDS = 100  # the API's cap on `filter.doc_ids`
MAX_UPLOAD_FILES = 256  # files per upload request the server takes (rag/server/deps.py)
BUSY_RETRIES = 30  # 429s waited out (each for its Retry-After, at most 10 s) before giving up


class ServerRefused(UserError):
    """The server refused the request as asked (a bad value, an unknown id): bad usage."""

    exit_code = 2


class ServerFailed(UserError):
    """The server could not carry the request out (a model, the index, the disk, busy, gone)."""

    exit_code = EXIT_CONFIG


# -- the announcement -----------------------------------------------------------------------


def server_file(settings: Settings) -> Path:
    from rag.libraries import root_dir

    return root_dir(settings) / SERVER_FILE  # one server for every library of the directory


def connect_url(host: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on `host:port`."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def announced(settings: Settings, url: str) -> Iterator[Path]:
    """DATA_DIR/server.json names this process and its URL while the block runs; removed at
    the end if it is still ours (a crash leaves a stale file, which `running_server` ignores)."""
    path = server_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "url": url,
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    staged.write_text(json.dumps(record))
    os.replace(staged, path)  # readers see the old file or the new one, never half of one
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def running_server(
    settings: Settings, wait: float | None = None, on_wait: Callable[[str], None] | None = None
) -> str | None:
    """The URL of the server announced in the data directory once it answers /healthz (it
    may still be starting: waited for up to `wait` s while its process lives); None when no
    server is announced, or the file is stale (its process is gone, or it never answered)."""
    try:
        record = json.loads(server_file(settings).read_text())
        url, pid = str(record["url"]), int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    deadline = time.monotonic() + (START_WAIT if wait is None else wait)
    told = False
    while _alive(pid):
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            return None
        if not told and on_wait is not None:
            on_wait(url)
            told = True
        time.sleep(0.25)
    return None


# -- the client -----------------------------------------------------------------------------


class PathLookup(Protocol):
    def doc_for_path(self, path: str) -> str | None: ...


class Service(Protocol):
    """What the CLI calls: `PageRAG` in this process, or `RemotePageRAG` through a server."""

    @property
    def manifest(self) -> PathLookup: ...

    def resolve(self, doc_id: str) -> str: ...

    def documents(self) -> list[DocumentInfo]: ...

    def delete(self, doc_id: str, timeout: float | None = None) -> DocumentInfo: ...

    def update_document(
        self, doc_id: str, *, title: str | None = None, tags: Sequence[str] | None = None
    ) -> DocumentInfo: ...

    def info(self) -> ServiceInfo: ...

    def search_mode(self, mode: str | None = None) -> SearchMode: ...

    def search(
        self,
        query: str,
        k: int = 5,
        filters: SearchFilter | None = None,
        mode: SearchMode | None = None,
    ) -> list[Hit]: ...

    def ask(
        self,
        question: str,
        k: int | None = None,
        filters: SearchFilter | None = None,
        *,
        mode: SearchMode | None = None,
    ) -> Answer: ...

    def ask_stream(
        self,
        question: str,
        k: int | None = None,
        filters: SearchFilter | None = None,
        *,
        mode: SearchMode | None = None,
    ) -> AnswerStream: ...

    def ingest(
        self,
        paths: Iterable[Path],
        *,
        tags: Sequence[str] = (),
        passwords: dict[str, str] | None = None,
        on_progress: Callable[[IngestProgress], None] | None = None,
        shard: Shard | None = None,
    ) -> IngestReport: ...

    def close(self) -> None: ...


class _ManifestReader:
    """The manifest's path -> document lookup, read-only: the server owns the manifest, and
    SQLite lets another process read it meanwhile (WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def doc_for_path(self, path: str) -> str | None:
        if self._db is None:
            if not self.path.exists():
                return None
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        row = self._db.execute("SELECT doc_id FROM sources WHERE path = ?", (path,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


class RemotePageRAG:
    """What the CLI calls on `PageRAG`, carried out by the server at `url`."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        key = settings.key.get_secret_value().strip() if settings.key else ""
        key = key or next(iter(settings.api_key_list), "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # Reads wait as long as the server lets a request run (PAGERAG_REQUEST_TIMEOUT).
        timeout = httpx.Timeout(settings.request_timeout + 30, connect=10)
        # A library's own routes: the server may have been started on another one.
        base = f"{url}/api/v1/libraries/{settings.library}"
        self._http = httpx.Client(base_url=base, headers=headers, timeout=timeout)
        self._images = PageImages(settings.images_dir)  # the same data directory as the server
        self.manifest = _ManifestReader(settings.manifest_path)

    def close(self) -> None:
        self._http.close()
        self.manifest.close()

    # -- requests ---------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response; a 429 (the model's line is full) is waited out a few times, then
        reported like any other refusal."""
        for attempt in range(BUSY_RETRIES + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise ServerFailed(
                    f"the PageRAG server at {self.url} (announced in {server_file(self.settings)}) "
                    f"did not answer ({type(exc).__name__}: {exc}); is it still running?"
                ) from exc
            if response.status_code == 429 and attempt < BUSY_RETRIES:  # busy: wait our turn
                time.sleep(min(float(response.headers.get("Retry-After", "1")), 10))
                continue
            break
        _raise_for(response, self.url)
        return response

    # -- library ----------------------------------------------------------------------------
    def resolve(self, doc_id: str) -> str:
        prefix = doc_prefix(doc_id)  # IdError (exit 2) before any request, as locally
        return str(self._call("GET", f"/documents/{prefix}").json()["doc_id"])

    def documents(self) -> list[DocumentInfo]:
        return [_document(d) for d in self._call("GET", "/documents").json()["documents"]]

    def delete(self, doc_id: str, timeout: float | None = None) -> DocumentInfo:
        response = self._call("DELETE", f"/documents/{doc_prefix(doc_id)}")
        if response.status_code == 202:  # queued behind an ingestion: it still happens
            raise ServerFailed(_cli_words(response.json()["detail"]))
        return _document(response.json()["deleted"])

    def update_document(
        self, doc_id: str, *, title: str | None = None, tags: Sequence[str] | None = None
    ) -> DocumentInfo:
        body: dict[str, Any] = {}
        if title is not None:
            body["title"] = title
        if tags is not None:
            body["tags"] = list(tags)
        return _document(self._call("PATCH", f"/documents/{doc_prefix(doc_id)}", json=body).json())

    def info(self) -> ServiceInfo:
        status = self._call("GET", "/status").json()
        return ServiceInfo(**{f.name: status[f.name] for f in fields(ServiceInfo)})

    # -- search and answers -----------------------------------------------------------------
    def search_mode(self, mode: str | None = None) -> SearchMode:
        if mode is None:
            return self.settings.search_mode
        if mode not in SEARCH_MODES:
            raise ServerRefused(
                f"unknown search mode {mode!r}; use one of: {', '.join(SEARCH_MODES)}"
            )
        return mode  # type: ignore[return-value]  # checked against SEARCH_MODES above

    def search(
        self,
        query: str,
        k: int = 5,
        filters: SearchFilter | None = None,
        mode: SearchMode | None = None,
    ) -> list[Hit]:
        if not query.strip():  # the service's own check and words, without a request
            raise ServerRefused("the question is empty; type what you are looking for")
        body = {"query": query, "top_k": k, "filter": _filter(filters), "mode": mode}
        hits = self._call("POST", "/search", json=body).json()["hits"]
        return [
            Hit(
                doc_id=h["doc_id"],
                source=h["source"],
                page=h["page"],
                score=h["score"],
                image=self._image(h["doc_id"], h["page"]),
                title=h["title"],
            )
            for h in hits
        ]

    def ask(
        self,
        question: str,
        k: int | None = None,
        filters: SearchFilter | None = None,
        *,
        mode: SearchMode | None = None,
    ) -> Answer:
        body = self._question(question, k, filters, mode)
        return self._answer(self._call("POST", "/ask", json=body).json())

    def ask_stream(
        self,
        question: str,
        k: int | None = None,
        filters: SearchFilter | None = None,
        *,
        mode: SearchMode | None = None,
    ) -> AnswerStream:
        """As `PageRAG.ask_stream`: nothing is sent until the first chunk is asked for, and
        closing the stream closes the connection, which stops the server's generation."""
        return AnswerStream(self._events(self._question(question, k, filters, mode)))

    def _question(
        self, question: str, k: int | None, filters: SearchFilter | None, mode: str | None
    ) -> dict[str, Any]:
        if not question.strip():
            raise ServerRefused("the question is empty; type what you want to know")
        return {"question": question, "top_k": k, "filter": _filter(filters), "mode": mode}

    def _events(self, body: dict[str, Any]) -> Generator[str, None, Answer]:
        try:
            with self._http.stream("POST", "/ask/stream", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response, self.url)
                event = ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line.partition(":")[2].strip()
                    elif line.startswith("data:"):
                        data = json.loads(line.partition(":")[2])
                        if event == "token":
                            yield data["text"]
                        elif event == "answer":
                            return self._answer(data)
                        elif event == "error":
                            _raise_status(int(data["status"]), str(data["detail"]), self.url)
        except httpx.HTTPError as exc:
            raise ServerFailed(
                f"the PageRAG server at {self.url} stopped answering ({type(exc).__name__}: "
                f"{exc}); is it still running?"
            ) from exc
        raise ServerFailed(f"the PageRAG server at {self.url} ended the answer before its end")

    def _answer(self, data: dict[str, Any]) -> Answer:
        citations = [
            Citation(
                doc_id=c["doc_id"],
                source=c["source"],
                page=c["page"],
                score=c["score"],
                image=self._image(c["doc_id"], c["page"]),
                label=c["label"],
                cited=c["cited"],
                boxes=tuple(tuple(b) for b in c.get("boxes", ())),
                regions=tuple(tuple(r) for r in c.get("regions", ())),
            )
            for c in data["citations"]
        ]
        return Answer(
            question=data["question"],
            text=data["text"] if citations else _cli_words(data["text"]),
            citations=citations,
            retrieval_seconds=data["retrieval_seconds"],
            generation_seconds=data["generation_seconds"],
            prompt_tokens=data["prompt_tokens"],
            completion_tokens=data["completion_tokens"],
        )

    def _image(self, doc_id: str, page: int) -> str:
        return str(self._images.path(doc_id, page))

    # -- ingestion: uploads, one job at a time ----------------------------------------------
    def ingest(
        self,
        paths: Iterable[Path],
        *,
        tags: Sequence[str] = (),
        passwords: dict[str, str] | None = None,
        on_progress: Callable[[IngestProgress], None] | None = None,
        shard: Shard | None = None,
    ) -> IngestReport:
        """Upload the files to the server, which ingests them as jobs; the report adds the
        jobs up. Uploads keep each file's name, not its folder, and take no tags."""
        if tags or shard is not None:
            raise ServerRefused(
                f"--tag and --shard do not work while `pagerag serve` ({self.url}) holds the "
                "data directory: its uploads take neither. Leave them out, or stop the server "
                "first"
            )
        started = time.monotonic()
        files, missing = discover(paths)
        report = IngestReport(failed=list(missing))
        progress = IngestProgress(files_total=len(files))
        before = self.info().waiting_pages
        for batch in _batches(files, self.settings.max_upload_mb * 1024 * 1024):
            self._ingest_batch(batch, passwords or {}, report, progress, on_progress)
        report.seconds = time.monotonic() - started
        after = self._call("GET", "/status").json()
        report.waiting_pages = max(0, after["waiting_pages"] - before)
        report.retriever_error = after.get("retriever_error", "") if report.waiting_pages else ""
        progress.stage, progress.current = "done", ""
        if on_progress is not None:
            on_progress(progress)
        return report

    def _ingest_batch(
        self,
        batch: list[SourceFile],
        passwords: dict[str, str],
        report: IngestReport,
        progress: IngestProgress,
        on_progress: Callable[[IngestProgress], None] | None,
    ) -> None:
        sources = {_name(f): f.source for f in batch}  # the server shows names only
        given = {
            _name(f): pw
            for f in batch
            if (pw := passwords.get(f.source) or passwords.get(f.path.name)) is not None
        }
        job = self._upload(batch, given, report)
        if job is None:
            return
        base = (progress.files_done, progress.pages_total, progress.pages_done)
        while True:
            progress.stage = job["stage"] or "reading"
            progress.files_done = base[0] + job["files_done"]
            progress.pages_total = base[1] + job["pages_total"]
            progress.pages_done = base[2] + job["pages_done"]
            progress.current = sources.get(job["current"], job["current"])
            if progress.stage == "rendering" and progress.embedding_started is None:
                progress.embedding_started = time.monotonic()
            if on_progress is not None:
                on_progress(progress)
            if job["state"] not in ("queued", "running"):
                break
            time.sleep(POLL)
            job = self._call("GET", f"/jobs/{job['id']}").json()
        progress.files_done = base[0] + len(batch)
        report.indexed_documents += job["indexed_documents"]
        report.indexed_pages += job["indexed_pages"]
        report.skipped_documents += job["skipped_documents"]
        for f in job["files"]:
            if f["status"] == "failed":
                report.failed.append(FileError(sources.get(f["name"], f["name"]), f["error"]))
        for w in job["warnings"]:
            report.warnings.append(FileWarning(sources.get(w["source"], w["source"]), w["warning"]))

    def _upload(
        self, batch: list[SourceFile], passwords: dict[str, str], report: IngestReport
    ) -> dict[str, Any] | None:
        """POST the files; the job, or None when the server took none of them (each is then
        in the report's failures)."""
        data = {"passwords": json.dumps(passwords)} if passwords else {}
        for _ in range(BUSY_RETRIES):
            with contextlib.ExitStack() as stack:
                files = [
                    ("files", (f.source, stack.enter_context(f.path.open("rb")))) for f in batch
                ]
                try:
                    response = self._http.post("/documents", files=files, data=data)
                except httpx.HTTPError as exc:
                    raise ServerFailed(
                        f"the PageRAG server at {self.url} did not take the upload "
                        f"({type(exc).__name__}: {exc}); is it still running?"
                    ) from exc
            if response.status_code != 429:  # else its job line is full: wait our turn
                break
            time.sleep(min(float(response.headers.get("Retry-After", "1")), 10))
        else:
            raise ServerFailed(f"the PageRAG server at {self.url} stayed too busy for the upload")
        if response.status_code in (413, 415):  # too large, or nothing it can read
            error = _cli_words(str(response.json().get("detail", "")))
            report.failed.extend(FileError(f.source, error) for f in batch)
            return None
        _raise_for(response, self.url)
        return dict(response.json())


def _name(f: SourceFile) -> str:
    return f.source.replace("\\", "/").rsplit("/", 1)[-1]


def _batches(files: list[SourceFile], max_bytes: int) -> Iterator[list[SourceFile]]:
    """Files in upload requests the server takes: under its size cap and file count."""
    batch: list[SourceFile] = []
    size = 0
    for f in files:
        n = f.path.stat().st_size if f.path.exists() else 0
        if batch and (size + n > 0.9 * max_bytes or len(batch) >= MAX_UPLOAD_FILES):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += n
    if batch:
        yield batch


def _filter(filters: SearchFilter | None) -> dict[str, Any] | None:
    if filters is None:
        return None
    if len(filters.doc_ids) > MAX_FILTER_IDS:
        raise ServerRefused(
            f"the filter names {len(filters.doc_ids)} documents, and the server takes at most "
            f"{MAX_FILTER_IDS}: give --source as a prefix of the sources `pagerag docs list` "
            "shows, or a smaller folder"
        )
    return {
        "doc_ids": list(filters.doc_ids),
        "source_prefix": filters.source_prefix,
        "tags": list(filters.tags),
    }


def _document(d: dict[str, Any]) -> DocumentInfo:
    return DocumentInfo(
        doc_id=d["doc_id"],
        source=d["source"],
        title=d["title"],
        pages=d["pages"],
        sources=tuple(d["sources"]),
        tags=tuple(d["tags"]),
        ingested_at=d["ingested_at"],
        bytes=d["bytes"],
    )


def _cli_words(text: str) -> str:
    """A server message with its advice for API clients turned back into the CLI's."""
    from rag.server.schemas import _API_ADVICE

    for cli, api in _API_ADVICE:
        text = text.replace(api, cli)
    return text


def _raise_for(response: httpx.Response, url: str) -> None:
    if response.status_code < 400:
        return
    try:
        detail: Any = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # FastAPI's validation issues
        detail = "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail
        )
    _raise_status(response.status_code, str(detail), url)


def _raise_status(status: int, detail: str, url: str) -> None:
    message = _cli_words(detail)
    if status in (400, 404, 409, 422):  # the request as asked: as the service's own errors
        raise ServerRefused(message)
    if status == 401:
        message += (
            "; set PAGERAG_KEY to a key of the server (`pagerag keys add NAME --role read` makes"
            " one), or PAGERAG_API_KEYS to hold one of the server's keys"
        )
    raise ServerFailed(f"the PageRAG server at {url} answered {status}: {message}")
