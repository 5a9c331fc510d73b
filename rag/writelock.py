"""One writer at a time (an ingestion run or a deletion), and deletions that never wait for a
whole ingestion run.

A deletion is queued, then run by whoever holds the lock at its next safe point: the deleting
thread itself when the lock is free, the ingestion run between two batches, or any holder as it
lets go. So a DELETE waits at most one batch, never the whole run, and a caller may stop
waiting (the deletion still happens). Every release goes through `_release`, which runs what
was queued meanwhile: no deletion is left behind a lock nobody holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Deletion:
    doc_id: str
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def wait(self, timeout: float | None) -> bool:
        """True once the deletion has run (raising its error, if it failed)."""
        if not self.done.wait(timeout):
            return False
        if self.error is not None:
            raise self.error
        return True


class WriteLock:
    def __init__(self, delete: Callable[[str], None]) -> None:
        self._lock = threading.Lock()
        self._guard = threading.Lock()  # protects `_queued` only; never held while working
        self._queued: list[Deletion] = []
        self._delete = delete

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the write lock (an ingestion run); call `run_queued` at safe points."""
        self._lock.acquire()
        try:
            yield
        finally:
            self._release()

    def delete(self, doc_id: str) -> Deletion:
        """Queue the deletion of `doc_id` and run it now when no one is writing."""
        deletion = Deletion(doc_id)
        with self._guard:
            self._queued.append(deletion)
        if self._lock.acquire(blocking=False):
            self.run_queued()
            self._release()
        return deletion

    def run_queued(self) -> set[str]:
        """Run the queued deletions (the caller holds the lock); the ids deleted."""
        with self._guard:
            todo, self._queued = self._queued, []
        deleted: set[str] = set()
        for deletion in todo:
            try:
                self._delete(deletion.doc_id)
                deleted.add(deletion.doc_id)
            except BaseException as exc:  # handed to whoever waits for it
                deletion.error = exc
            finally:
                deletion.done.set()
        return deleted

    def _release(self) -> None:
        while True:
            self._lock.release()
            with self._guard:
                idle = not self._queued
            # Queued after the holder's last look: run it, unless another thread has the
            # lock (its own release comes back here).
            if idle or not self._lock.acquire(blocking=False):
                return
            self.run_queued()
