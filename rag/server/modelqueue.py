"""One bounded line in front of the models, shared by every interactive caller (UI and API).

The models run on one device, so interactive model work (search, answers, similarity maps) runs
one request at a time. Without a bound, a burst of requests would pile up threads and memory
and every caller would wait longer and longer; instead at most `max_waiting` requests wait in
line (first come, first served) and the next one is refused at once with a hint of when to
retry. Every request also has a deadline, counted from its arrival: a request still waiting
when it passes gives up (the API answers 504), and long work such as a streamed answer stops
there.

Tickets are not tied to a thread: a streamed answer is admitted by one thread and released by
whichever thread finishes the stream (Starlette iterates a response in a thread pool).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from types import TracebackType
from typing import Any

from rag.errors import UserError


class QueueFull(UserError):
    """Too many requests are already waiting for the model."""

    http_status = 429

    def __init__(
        self, retry_after: int, waiting: int, what: str = "requests are waiting for the model"
    ) -> None:
        super().__init__(f"the server is busy ({waiting} {what}); try again in {retry_after} s")
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class QueueTimeout(UserError):
    """A request passed its deadline, waiting for the model or while the model worked."""

    http_status = 504

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the request did not finish within its {seconds:g} s deadline "
            "(PAGERAG_REQUEST_TIMEOUT); the server is busy, try again later"
        )
        self.seconds = seconds


class Ticket:
    """Admission to the model; release it (or leave its `with` block) when the work is done."""

    def __init__(self, queue: WorkQueue, arrived: float, deadline: float) -> None:
        self._queue = queue
        self.arrived = arrived
        self.started = time.monotonic()
        self.deadline = deadline  # time.monotonic() value
        self._released = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise `QueueTimeout` once the deadline has passed (call it between steps of work)."""
        if self.remaining() <= 0:
            raise QueueTimeout(self._queue.timeout)

    def release(self) -> None:
        if not self._released:  # idempotent: error paths and `finally` may both release
            self._released = True
            self._queue._release(time.monotonic() - self.started)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class WorkQueue:
    def __init__(self, max_waiting: int = 16, timeout: float = 120.0, workers: int = 1) -> None:
        self.max_waiting = max_waiting
        self.timeout = timeout
        self.workers = workers
        self._cond = threading.Condition()
        self._line: deque[object] = deque()  # waiting requests, first come first served
        self._running = 0
        self._mean_seconds = 2.0  # running mean of the work time, for Retry-After
        self.served = 0
        self.rejected = 0
        self.timed_out = 0

    def acquire(self, timeout: float | None = None) -> Ticket:
        """Wait for the model; `QueueFull` at once when the line is full, `QueueTimeout` when
        the deadline (`timeout` seconds from now, default the queue's) passes first."""
        arrived = time.monotonic()
        seconds = self.timeout if timeout is None else timeout
        deadline = arrived + seconds
        me = object()
        with self._cond:
            busy = self._running >= self.workers or bool(self._line)
            if busy and len(self._line) >= self.max_waiting:
                self.rejected += 1
                raise QueueFull(self._retry_after(), len(self._line))
            self._line.append(me)
            try:
                while self._line[0] is not me or self._running >= self.workers:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.timed_out += 1
                        raise QueueTimeout(seconds)
                    self._cond.wait(left)
                self._running += 1
            finally:
                self._line.remove(me)
                self._cond.notify_all()  # the next in line may now be first
        return Ticket(self, arrived, deadline)

    def _release(self, seconds: float) -> None:
        with self._cond:
            self._running -= 1
            self.served += 1
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds
            self._cond.notify_all()

    def _retry_after(self) -> int:
        # Everybody in line, plus the request now running, before a new one would start.
        ahead = len(self._line) + self._running
        return max(1, math.ceil(self._mean_seconds * ahead / self.workers))

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "running": self._running,
                "waiting": len(self._line),
                "max_waiting": self.max_waiting,
                "timeout_seconds": self.timeout,
                "served": self.served,
                "rejected": self.rejected,
                "timed_out": self.timed_out,
                "mean_seconds": round(self._mean_seconds, 3),
            }
