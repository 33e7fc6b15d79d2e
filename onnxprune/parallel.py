"""Per-weight work on a small thread pool: numpy releases the GIL while it copies, squares,
sums and slices large arrays, so reading and slicing many weights scales with the cores.

Results come back in input order with only a few items in flight, so a pass over every
weight of a large model never holds more than a handful of decoded weights at once.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_WORKERS = 4  # memory-bound work: more threads than this only add contention


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def weight_workers() -> int:
    """Threads for per-weight work: ``ONNXPRUNE_THREADS`` when set (1 turns threading
    off), else the available CPUs, at most ``MAX_WORKERS``."""
    env = os.environ.get("ONNXPRUNE_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError as exc:
            raise ValueError(f"ONNXPRUNE_THREADS must be an integer, got {env!r}") from exc
    return max(1, min(MAX_WORKERS, available_cpus()))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads (default ``weight_workers()``), results in
    order, at most two items per worker in flight. An exception in ``fn`` is raised here,
    for its item, after the items before it were yielded."""
    workers = weight_workers() if workers is None else workers
    if workers <= 1:
        yield from map(fn, items)
        return
    ahead = 2 * workers
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnxprune") as pool:
        try:
            for item in items:
                if len(pending) >= ahead:
                    yield pending.popleft().result()
                pending.append(pool.submit(fn, item))
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
