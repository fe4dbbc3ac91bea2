"""Bounded thread pools for the plate-resolution I/O of ingest and bake.

OpenImageIO releases the GIL while it reads and writes (and OpenCV and numpy while they resize
and compute on large arrays), so threads overlap: `benchmarks/bench_io.py` measures it. Every
queue here is bounded, so at 4K only a few frames are in memory. A job's error comes back to the
caller with its own type (`InputError` stays an input error); reads in frame order, writes as soon
as the caller next submits or waits. Leaving a pool, normally or by an error, drops the jobs not
yet started and waits for the running ones: an atomic writer either publishes its file or
removes its temporary one, so no partial file remains.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from itertools import islice
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_IO_WORKERS = 8
"""Default ceiling of I/O threads: past it EXR zip compression and reads gain little."""
POLL_S = 0.1
"""How often a blocked caller checks for a cancel while it waits on a job."""


def io_workers(requested: int = 0) -> int:
    """Threads for plate I/O: `requested`, or min(8, CPU count) when it is 0."""
    if requested > 0:
        return requested
    return max(1, min(MAX_IO_WORKERS, os.cpu_count() or 1))


@contextmanager
def thread_pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that, on leaving, drops the jobs not started and waits for the running."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"rna-{name}")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int
) -> Iterator[R]:
    """`fn(item)` for every item, in order, computed in `pool` at most `ahead` items ahead.

    The first error, in item order, is raised when its item is reached; closing the iterator
    early cancels the items not started.
    """
    source = iter(items)
    pending: deque[Future[R]] = deque(pool.submit(fn, i) for i in islice(source, max(1, ahead)))
    try:
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(fn, i) for i in islice(source, 1))
            yield result
    finally:
        for future in pending:
            future.cancel()


class BoundedWriter(Generic[R]):
    """Runs jobs in a pool with at most `limit` unfinished; the first error is re-raised.

    `on_done(result)` runs in the caller's thread for each finished job, in submission order.
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        limit: int,
        on_done: Callable[[R], None] | None = None,
        check: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._limit = max(1, limit)
        self._on_done = on_done
        self._check = check
        self._pending: deque[Future[R]] = deque()

    def submit(self, job: Callable[[], R]) -> None:
        """Queue `job`, first waiting while `limit` jobs are unfinished (back-pressure)."""
        self._collect(self._limit - 1)
        self._pending.append(self._pool.submit(job))

    def join(self) -> None:
        """Wait for every queued job."""
        self._collect(0)

    def _collect(self, keep: int) -> None:
        """Reap finished jobs, raising the first error; block until at most `keep` remain."""
        while True:
            if self._check is not None:
                self._check()
            failed = next((f for f in self._pending if f.done() and f.exception()), None)
            if failed is not None:
                failed.result()
            while self._pending and self._pending[0].done():
                result = self._pending.popleft().result()
                if self._on_done is not None:
                    self._on_done(result)
            if len(self._pending) <= keep:
                return
            wait(self._pending, timeout=POLL_S, return_when=FIRST_COMPLETED)


@contextmanager
def background_writer(
    workers: int,
    on_done: Callable[[R], None] | None = None,
    check: Callable[[], None] | None = None,
) -> Iterator[BoundedWriter[R]]:
    """A `BoundedWriter` of `workers` threads and as many queued jobs, joined on a clean exit."""
    with thread_pool(workers, "write") as pool:
        writer: BoundedWriter[R] = BoundedWriter(pool, workers, on_done, check)
        yield writer
        writer.join()
