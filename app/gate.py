"""Bounds on the expensive work a request can start (decoding, scoring, explaining, thumbnails): a few at a
time, a few more waiting, the rest refused with a Retry-After estimate, so that big uploads cannot take all
the memory and CPU and the pages stay responsive."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Busy(RuntimeError):
    """A :class:`Gate` is full (too many uploads or thumbnails in progress and waiting); try again after
    ``retry_after`` seconds (the routes answer 503 with that Retry-After)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Gate:
    """At most ``slots`` callers inside at once; at most ``queue`` more wait, each up to ``wait_seconds``.

    A caller that finds the queue full, or waits too long, gets :class:`Busy` with a Retry-After estimate
    (the recent mean time inside, times the callers ahead of it per slot). This bounds the memory and CPU
    that uploads can take, and keeps server threads free for the pages.
    """

    def __init__(self, slots: int, queue: int, wait_seconds: float, what: str = "uploads"):
        self.slots = max(1, int(slots))
        self.queue = max(0, int(queue))
        self.wait_seconds = max(0.0, float(wait_seconds))
        self.what = what
        self._sem = threading.BoundedSemaphore(self.slots)
        self._lock = threading.Lock()
        self._waiting = 0
        self._mean_s = 1.0  # moving average of the time spent inside

    @property
    def waiting(self) -> int:
        return self._waiting

    def retry_after(self) -> int:
        """Seconds after which a refused caller may find a slot."""
        ahead = self._waiting + self.slots
        return int(min(300, max(1, math.ceil(self._mean_s * ahead / self.slots))))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the ``with`` block (raises :class:`Busy` when none can be had)."""
        if not self._sem.acquire(blocking=False):
            with self._lock:
                if self._waiting >= self.queue:
                    raise Busy(f"the server is busy: {self.slots} {self.what} in progress and "
                               f"{self._waiting} waiting; try again shortly", self.retry_after())
                self._waiting += 1
            try:
                got = self._sem.acquire(timeout=self.wait_seconds)
            finally:
                with self._lock:
                    self._waiting -= 1
            if not got:
                raise Busy(f"the server is busy: no slot for these {self.what} within {self.wait_seconds:g} s; "
                           "try again shortly", self.retry_after())
        start = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            with self._lock:
                self._mean_s = 0.7 * self._mean_s + 0.3 * elapsed
            self._sem.release()
