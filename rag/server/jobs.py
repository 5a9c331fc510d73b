"""Ingestion jobs for the server: uploads and the start-up folder, run one at a time.

A job is accepted at once and runs in a background thread, so the web UI and the API can show
its progress (files, pages, the file being read) and, when it ends, what happened to every file
in plain words. Uploaded bytes are written under generated names in the data directory: the
name a user gave a file is only ever shown (as the document's `source`), never used as a path.

Job records are kept in SQLite (`jobstore`) and staged files under a folder that outlives
the process, so a server that was stopped or killed resumes its unfinished jobs when it starts
again (the runner stores only the pages still missing). Jobs wait in one line per client, taken
in turn, so one client's many uploads do not hold back everyone else's.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from ingest.discover import describe_content, sniff_kind
from ingest.diskspace import DEFAULT_RESERVE_MB, DiskFullError, require_free
from rag.errors import log_failure, user_error_status
from rag.server.jobstore import JobStore
from rag.server.modelqueue import QueueFull
from rag.types import FileError, FileWarning

if TYPE_CHECKING:
    from ingest.runner import IngestProgress
    from rag.service import PageRAG

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed"]
JobKind = Literal["upload", "folder"]
FileStatus = Literal["queued", "indexed", "unchanged", "failed"]

_CHUNK = 1 << 20
# Staging folders no job refers to (a request cut off while uploading) are removed after this.
_STALE_SECONDS = 3600
_PROCESS = uuid.uuid4().hex  # this process, as the job records name their owner
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]+")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def display_name(raw: str | None) -> str:
    """The last component of a client's file name, without control characters: shown to
    users as the document's source, never used to build a path."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = _UNSAFE_NAME.sub(" ", name).strip()[:200]
    return name or "upload"


@dataclass(frozen=True)
class Staged:
    """An uploaded file written under a generated name, recognised as a PDF or an image."""

    path: Path
    name: str
    doc_id: str  # SHA-256 of the bytes, as ingestion computes it


def stage(
    src: IO[bytes], name: str, folder: Path, *, reserve_mb: int = DEFAULT_RESERVE_MB
) -> Staged | FileError:
    """Copy an upload into `folder` under a fresh name; a `FileError` when its content is
    not a PDF, PNG or JPEG (the extension is not looked at). `DiskFullError` (and no copy left
    behind) when writing it would leave less than `reserve_mb` MB free: the index must never
    be the one to meet the full disk (ingest/diskspace.py)."""
    then = f"{name!r} was not accepted; send it again once there is room"
    require_free(folder, reserve_mb, what="accepting an upload", then=then)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{uuid.uuid4().hex}.upload"
    digest = hashlib.sha256()
    head = b""
    try:
        with dest.open("wb") as out:
            while chunk := src.read(_CHUNK):
                if len(head) < 1024:
                    head += chunk[: 1024 - len(head)]
                digest.update(chunk)
                require_free(
                    folder,
                    reserve_mb,
                    what="accepting an upload",
                    extra_bytes=len(chunk),
                    then=then,
                )
                out.write(chunk)
    except OSError as exc:  # ENOSPC/EDQUOT: the disk filled up meanwhile
        dest.unlink(missing_ok=True)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFullError(f"no space left in {folder} for {name!r}: {then}") from exc
    except DiskFullError:
        dest.unlink(missing_ok=True)
        raise
    if sniff_kind(head) is None:
        dest.unlink()
        return FileError(name, describe_content(head))
    return Staged(dest.resolve(), name, digest.hexdigest())


def stage_files(
    files: Iterable[tuple[str, IO[bytes]]], folder: Path, *, reserve_mb: int = DEFAULT_RESERVE_MB
) -> tuple[list[Staged], list[FileError]]:
    """`stage` each (display name, stream): the accepted files and the refused ones."""
    staged: list[Staged] = []
    rejected: list[FileError] = []
    for name, src in files:
        try:
            result = stage(src, name, folder, reserve_mb=reserve_mb)
        except DiskFullError:  # the whole request is refused: keep none of its copies
            for done in staged:
                done.path.unlink(missing_ok=True)
            raise
        if isinstance(result, Staged):
            staged.append(result)
        else:
            rejected.append(result)
    return staged, rejected


@dataclass(frozen=True)
class FileResult:
    """What happened to one file of an upload."""

    name: str
    status: FileStatus
    doc_id: str | None = None
    error: str | None = None


@dataclass
class JobInfo:
    """A job as readers see it: what `JobManager.get`, `list` and `wait` return, a copy taken
    under the manager's lock (the running job goes on changing, the copy does not)."""

    id: str
    kind: JobKind
    state: JobState = "queued"
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    # Progress, as the ingestion runner reports it; the counters only grow while a run lasts.
    stage: str = ""  # the runner's (ingest.runner.Stage): reading, loading the model, ...
    files_total: int = 0
    files_done: int = 0
    pages_total: int = 0
    pages_done: int = 0
    current: str = ""  # the file being worked on
    # Outcome (indexed_documents grows as documents complete).
    indexed_documents: int = 0
    indexed_pages: int = 0
    skipped_documents: int = 0
    files: list[FileResult] = field(default_factory=list)  # uploads: one per file sent
    errors: list[FileError] = field(default_factory=list)
    warnings: list[FileWarning] = field(default_factory=list)
    message: str = ""  # why the whole job failed (a model that cannot load, ...)

    @property
    def running(self) -> bool:
        """Queued or running: not ended yet."""
        return self.state in ("queued", "running")


@dataclass
class Job(JobInfo):
    """A job with its work order, as the manager keeps it."""

    paths: list[Path] = field(default_factory=list, repr=False)
    sources: dict[Path, str] = field(default_factory=dict, repr=False)
    folder: Path | None = field(default=None, repr=False)  # staged uploads, removed at the end
    client: str = field(default="", repr=False)  # whose line it waits in (fair queue)
    # Source name -> password of an encrypted PDF: kept in memory only, never stored or shown
    # (a job resumed after a restart reports such a file as encrypted again).
    passwords: dict[str, str] = field(default_factory=dict, repr=False)

    def view(self) -> JobInfo:
        """A copy of what readers may see (call it holding the manager's lock)."""
        shown = {f.name: getattr(self, f.name) for f in fields(JobInfo)}
        # The lists are copied; their items are frozen values.
        shown.update(files=list(self.files), errors=list(self.errors), warnings=list(self.warnings))
        return JobInfo(**shown)

    def record(self) -> dict[str, Any]:
        """Everything about the job as JSON values (rag/server/jobstore.py stores it), but
        the passwords."""
        data = asdict(self)
        data.pop("passwords")
        data["paths"] = [str(p) for p in self.paths]
        data["sources"] = [[str(p), name] for p, name in self.sources.items()]
        data["folder"] = None if self.folder is None else str(self.folder)
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # written by another version
        data["files"] = [FileResult(**f) for f in data["files"]]
        data["errors"] = [FileError(e["source"], e["error"]) for e in data.get("errors", [])]
        data["warnings"] = [
            FileWarning(w["source"], w["warning"]) for w in data.get("warnings", [])
        ]
        data["paths"] = [Path(p) for p in data["paths"]]
        data["sources"] = {Path(p): name for p, name in data["sources"]}
        data["folder"] = None if data["folder"] is None else Path(data["folder"])
        return cls(**data)


class JobManager:
    """Runs ingestion jobs one after another in a worker thread (ingestion holds the service's
    write lock anyway), taking the clients' lines in turn; at most `max_pending` jobs may
    wait. Unfinished jobs of a server that died are resumed when the manager starts."""

    def __init__(self, service: PageRAG, *, max_pending: int = 16, keep: int = 200) -> None:
        self.service = service
        self.max_pending = max_pending
        self._keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._lines: OrderedDict[str, deque[Job]] = OrderedDict()  # client -> its queued jobs
        self._worker: threading.Thread | None = None
        self._closed = False
        self.store = JobStore(service.settings.manifest_path, _PROCESS)
        # One stable folder: a restarted server finds the staged files of unfinished jobs there.
        self.uploads_dir = service.settings.uploads_dir
        _remove_stale(self.uploads_dir, _STALE_SECONDS, keep=self.store.unfinished_folders())
        self._resume()

    # -- submitting -----------------------------------------------------------------------
    def upload_folder(self) -> Path:
        """A fresh folder to stage one request's files in."""
        return self.uploads_dir / uuid.uuid4().hex

    def submit_upload(
        self,
        staged: Sequence[Staged],
        rejected: Sequence[FileError],
        folder: Path,
        client: str = "",
        passwords: dict[str, str] | None = None,
    ) -> JobInfo:
        """Queue the ingestion of staged uploads; `rejected` are reported as failed files,
        `passwords` (file name -> password) open encrypted PDFs."""
        job = Job(
            client=client,
            passwords=dict(passwords or {}),
            id=uuid.uuid4().hex,
            kind="upload",
            files=[FileResult(r.source, "failed", error=r.error) for r in rejected]
            + [FileResult(s.name, "queued", s.doc_id) for s in staged],
            errors=list(rejected),
            paths=[s.path for s in staged],
            sources={s.path: s.name for s in staged},
            folder=folder,
        )
        return self._submit(job)

    def submit_paths(self, paths: Sequence[Path]) -> JobInfo:
        """Ingest files and folders on the server's disk; no paths: only embed the pages
        that wait for visual vectors (stored while the retriever could not load)."""
        return self._submit(Job(id=uuid.uuid4().hex, kind="folder", paths=list(paths)))

    def _submit(self, job: Job) -> JobInfo:
        with self._lock:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            pending = sum(j.state == "queued" for j in self._jobs.values())
            if pending >= self.max_pending:
                self._discard(job)
                what = "ingestion jobs are waiting to run; the job queue is full"
                raise QueueFull(30, pending, what)
            self._jobs[job.id] = job
            self._forget_old()
        self._save(job)
        if job.paths or job.kind == "folder":
            self._enqueue(job)
        else:  # every file was refused: nothing to run
            self._end(job, "failed", "none of the files is a PDF or an image")
        with self._lock:
            return job.view()

    def _enqueue(self, job: Job) -> None:
        with self._lock:
            self._lines.setdefault(job.client, deque()).append(job)
            self._ready.notify()
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="pagerag-jobs", daemon=True)
                self._worker.start()

    def _next(self) -> Job | None:
        """The first job of the client whose turn it is (then that client goes to the back
        of the line); None once the manager is closed."""
        with self._lock:
            while not self._lines and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            client, line = next(iter(self._lines.items()))
            job = line.popleft()
            del self._lines[client]
            if line:
                self._lines[client] = line
            return job

    def _save(self, job: Job) -> None:
        with self._lock:
            record = job.record()
        try:
            self.store.save(record)
        except Exception:  # the job runs anyway; only a restart would forget it
            log.exception("saving the record of job %s failed", job.id)

    def _resume(self) -> None:
        """List the jobs of earlier runs; queue again the ones a stopped server left
        unfinished (their files are staged under `uploads_dir`)."""
        for record in self.store.inherited(self._keep):
            job = Job.from_record(record)
            self._jobs[job.id] = job
            if job.state not in ("queued", "running") or not self.store.claim(job.id):
                continue
            if not any(p.exists() for p in job.paths):
                self._end(
                    job,
                    "failed",
                    "interrupted when the server stopped, and its staged files are gone: "
                    "send the files again (the pages already stored are kept)",
                )
                continue
            job.warnings.append(
                FileWarning(
                    job.current,
                    f"interrupted when the server stopped (job {job.state} since "
                    f"{job.started_at or job.created_at}); resumed at the restart",
                )
            )
            job.state, job.started_at = "queued", None
            # The resumed run counts afresh (the runner stores only the pages still missing).
            job.stage, job.current = "", ""
            job.files_total = job.files_done = job.pages_total = job.pages_done = 0
            self._save(job)
            self._enqueue(job)

    def _forget_old(self) -> None:
        while len(self._jobs) > self._keep:
            oldest = next(iter(self._jobs.values()))
            if oldest.state in ("queued", "running"):
                return
            self._jobs.popitem(last=False)

    # -- reading --------------------------------------------------------------------------
    def get(self, job_id: str) -> JobInfo | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.view() if job else None

    def list(self) -> list[JobInfo]:
        """The jobs kept, newest first."""
        with self._lock:
            return [j.view() for j in reversed(self._jobs.values())]

    def wait(self, job_id: str, timeout: float = 60.0) -> JobInfo | None:
        """Poll until the job has ended (or `timeout` passes); for tests and scripts."""
        end = time.monotonic() + timeout
        while (view := self.get(job_id)) and view.running:
            if time.monotonic() > end:
                break
            time.sleep(0.05)
        return view

    # -- running --------------------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._run(job)
            except Exception as exc:  # a job must never take the worker (or the server) down
                debug = self.service.settings.debug
                log_failure(log, f"ingestion job {job.id} failed", exc, debug=debug)
                if user_error_status(exc) is None:
                    message = f"ingestion failed ({type(exc).__name__}: {exc})"
                else:
                    message = str(exc)
                self._end(job, "failed", message)

    def _run(self, job: Job) -> None:
        with self._lock:
            # Named from the start: the runner's first report comes after it lists the files.
            job.state, job.started_at, job.stage = "running", _now(), job.stage or "reading"
        self._save(job)
        # Files already in the library when the job starts are skipped: say "unchanged" for
        # them rather than "indexed".
        known = {d.doc_id for d in self.service.documents()}
        report = self.service.ingest(
            job.paths,
            sources=job.sources or None,
            passwords=job.passwords or None,
            on_progress=lambda p: self._progress(job, p),
        )
        with self._lock:
            job.indexed_documents = max(job.indexed_documents, report.indexed_documents)
            job.indexed_pages = report.indexed_pages
            job.skipped_documents = report.skipped_documents
            job.errors.extend(report.failed)
            job.warnings.extend(report.warnings)
            job.files = [_outcome(f, report.failed, known) for f in job.files]
        self._end(job, "done")

    def _progress(self, job: Job, p: IngestProgress) -> None:
        # The runner's counters only grow; max() keeps the job's so whatever a report says.
        with self._lock:
            job.stage, job.current = p.stage, p.current
            job.files_total = max(job.files_total, p.files_total)
            job.files_done = max(job.files_done, p.files_done)
            job.pages_total = max(job.pages_total, p.pages_total)
            job.pages_done = max(job.pages_done, p.pages_done)
            job.indexed_documents = max(job.indexed_documents, p.indexed_documents)

    def _end(self, job: Job, state: JobState, message: str = "") -> None:
        # The ended record is stored first, then the staged files go, and only then do readers
        # see the end: whoever sees "done" can rely on the cleanup, and a crash in between
        # leaves a record that says the job ended (nothing is resumed twice).
        ended = replace(job, state=state, message=message, finished_at=_now())
        if state == "failed":
            ended.files = [
                replace(f, status="failed", error=message) if f.status == "queued" else f
                for f in job.files
            ]
        try:
            self.store.save(ended.record())
        except Exception:  # the job ended anyway; only a restart would not know
            log.exception("saving the record of job %s failed", job.id)
        self._discard(job)
        with self._lock:
            job.state, job.message, job.finished_at = ended.state, ended.message, ended.finished_at
            job.files = ended.files

    def _discard(self, job: Job) -> None:
        if job.folder is not None:
            shutil.rmtree(job.folder, ignore_errors=True)

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking jobs; the running one may finish within `timeout`. Jobs left unfinished
        keep their records and staged files: the next start resumes them."""
        with self._lock:
            self._closed = True
            self._ready.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(timeout)
        self.store.prune(self._keep)
        if worker is None or not worker.is_alive():
            self.store.close()


def _outcome(f: FileResult, failed: Sequence[FileError], known: set[str]) -> FileResult:
    """An upload's file once the ingestion ran: failed (with why), or indexed, or unchanged
    (its content was in the library before the job started)."""
    if f.status != "queued":
        return f
    error = next((e.error for e in failed if e.source == f.name), None)
    if error is not None:
        return replace(f, status="failed", error=error)
    return replace(f, status="unchanged" if f.doc_id in known else "indexed")


def _remove_stale(folder: Path, older_than: float, keep: set[str]) -> None:
    """Remove staging folders that no unfinished job needs, once they are old enough that no
    upload can still be writing to them."""
    if not folder.is_dir():
        return
    cutoff = time.time() - older_than
    for entry in folder.iterdir():
        try:
            if str(entry) not in keep and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:  # removed meanwhile by another manager
            continue
