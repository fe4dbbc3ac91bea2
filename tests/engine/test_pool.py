"""rna_engine.runtime.pool: order, bounds and errors of the plate-I/O thread pools."""

from __future__ import annotations

import threading

import pytest

from rna_engine.errors import Cancelled, InputError
from rna_engine.runtime.pool import background_writer, io_workers, ordered_map, thread_pool
from rna_engine.runtime.progress import CancelToken


def test_io_workers_default_and_override() -> None:
    assert 1 <= io_workers() <= 8
    assert io_workers(3) == 3


def test_ordered_map_keeps_order_and_stays_ahead_by_at_most_its_bound() -> None:
    lock = threading.Lock()
    alive = [0, 0]  # results made and not yet consumed; the most seen

    def square(x: int) -> int:
        with lock:
            alive[0] += 1
            alive[1] = max(alive[1], alive[0])
        return x * x

    out = []
    with thread_pool(4, "test") as pool:
        for value in ordered_map(pool, square, range(40), ahead=3):
            out.append(value)
            with lock:
                alive[0] -= 1
    assert out == [x * x for x in range(40)]
    assert alive[1] <= 3 + 1


def test_ordered_map_raises_the_first_error_in_item_order() -> None:
    later_failed = threading.Event()

    def job(x: int) -> int:
        if x == 1:
            later_failed.wait()  # item 3 fails first, in time
            raise InputError("frame 1")
        if x == 3:
            later_failed.set()
            raise ValueError("frame 3")
        return x

    got = []
    with thread_pool(4, "test") as pool, pytest.raises(InputError, match="frame 1"):
        for value in ordered_map(pool, job, range(6), ahead=4):
            got.append(value)
    assert got == [0]


def test_writer_bounds_unfinished_jobs_and_reports_each_in_order() -> None:
    lock = threading.Lock()
    unfinished = [0, 0]  # handed to submit and not finished; the most seen by a running job
    done: list[int] = []

    def job(x: int) -> int:
        threading.Event().wait(0.005)  # slower than the submitter, so an unbounded queue grows
        with lock:
            unfinished[1] = max(unfinished[1], unfinished[0])
            unfinished[0] -= 1
        return x

    with background_writer(2, on_done=done.append) as writer:
        for x in range(30):
            with lock:
                unfinished[0] += 1
            writer.submit(lambda x=x: job(x))
    assert done == list(range(30))
    # At most 2 submitted and unfinished, plus the one the caller is blocked submitting.
    assert unfinished[0] == 0 and unfinished[1] <= 2 + 1


def test_writer_error_keeps_its_type_and_stops_the_submits() -> None:
    ran: list[int] = []

    def job(x: int) -> None:
        if x == 0:
            raise InputError("disk full")
        ran.append(x)

    with pytest.raises(InputError, match="disk full"), background_writer(1) as writer:
        for x in range(5):
            writer.submit(lambda x=x: job(x))
    assert ran == []  # with one job allowed unfinished, the next submit saw the error


def test_writer_cancel_stops_a_blocked_submit() -> None:
    token = CancelToken()
    started = threading.Event()

    def slow() -> None:
        started.set()
        token.cancel()
        threading.Event().wait(0.3)

    with pytest.raises(Cancelled), background_writer(1, check=token.check) as writer:
        writer.submit(slow)
        started.wait()
        writer.submit(slow)  # blocks on the bound, sees the cancel
