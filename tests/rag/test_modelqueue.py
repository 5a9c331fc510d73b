"""The bounded line in front of the models: admission, order, refusal, deadlines."""

from __future__ import annotations

import threading
import time

import pytest

from rag.server.modelqueue import QueueFull, QueueTimeout, WorkQueue


def wait_until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end
        time.sleep(0.005)


def test_free_slot_is_taken_at_once_and_released_once() -> None:
    work = WorkQueue(max_waiting=0, timeout=1.0)
    ticket = work.acquire()
    assert work.stats()["running"] == 1
    ticket.release()
    ticket.release()  # idempotent
    assert work.stats() | {"mean_seconds": 0} == {
        "running": 0,
        "waiting": 0,
        "max_waiting": 0,
        "timeout_seconds": 1.0,
        "served": 1,
        "rejected": 0,
        "timed_out": 0,
        "mean_seconds": 0,
    }


def test_full_line_is_refused_with_a_retry_hint() -> None:
    work = WorkQueue(max_waiting=1, timeout=5.0)
    held = work.acquire()
    waiter = threading.Thread(target=lambda: work.acquire().release())
    waiter.start()
    wait_until(lambda: work.stats()["waiting"] == 1)
    with pytest.raises(QueueFull, match="busy") as refused:
        work.acquire()
    assert refused.value.retry_after >= 1
    held.release()
    waiter.join()
    assert work.stats()["served"] == 2 and work.stats()["rejected"] == 1


def test_waiters_are_served_first_come_first_served() -> None:
    work = WorkQueue(max_waiting=10, timeout=5.0)
    held = work.acquire()
    order: list[int] = []

    def worker(i: int) -> None:
        with work.acquire():
            order.append(i)

    threads = []
    for i in range(5):
        threads.append(threading.Thread(target=worker, args=(i,)))
        threads[-1].start()
        wait_until(lambda n=i + 1: work.stats()["waiting"] == n)
    held.release()
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3, 4]


def test_waiting_past_the_deadline_times_out_and_leaves_the_line() -> None:
    work = WorkQueue(max_waiting=4, timeout=0.1)
    with work.acquire():
        started = time.monotonic()
        with pytest.raises(QueueTimeout, match="PAGERAG_REQUEST_TIMEOUT"):
            work.acquire()
        assert 0.1 <= time.monotonic() - started < 2
        assert work.stats()["waiting"] == 0 and work.stats()["timed_out"] == 1
    with work.acquire():  # the line still works
        pass


def test_ticket_deadline_covers_the_work_too() -> None:
    work = WorkQueue(max_waiting=1, timeout=0.05)
    with work.acquire() as ticket:
        ticket.check()
        time.sleep(0.06)
        with pytest.raises(QueueTimeout):
            ticket.check()


def test_a_ticket_can_be_released_by_another_thread() -> None:
    # A streamed answer is admitted on one thread and finished on another.
    work = WorkQueue(max_waiting=1, timeout=1.0)
    ticket = work.acquire()
    other = threading.Thread(target=ticket.release)
    other.start()
    other.join()
    assert work.stats()["running"] == 0
