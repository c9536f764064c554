"""Per-stage busy time of one job, for operators (GetJob.stage_seconds) and for bench/e2e.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class StageTimer:
    """Sums the seconds spent in each named stage; stages may overlap and run on several threads."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._started = time.perf_counter()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def iterate(self, name: str, items: Iterable[T]) -> Iterator[T]:
        """Yield from items, counting the time spent waiting for each one as stage `name`."""
        iterator = iter(items)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                self.add(name, time.perf_counter() - start)
                return
            self.add(name, time.perf_counter() - start)
            yield item

    def seconds(self) -> dict[str, float]:
        with self._lock:
            result = {k: round(v, 4) for k, v in self._seconds.items()}
        result["total"] = round(time.perf_counter() - self._started, 4)
        return result
