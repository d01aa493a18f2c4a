"""A Prefect progress artifact that follows long work (training epochs, files scored) as it goes.

The work itself (:func:`dfd.train.train`, :func:`dfd.scoring.score_folder`) only calls a ``progress(done,
total)`` function it is given; this module turns those calls into a progress artifact in the Prefect UI. An
update is an API call, so it is sent at most every ``every`` seconds (and always for the last step); the bar
never goes back (a restarted training try does not rewind it). Progress is cosmetic: a failed update is
logged and never fails the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact


def percent(done: int, total: int) -> float:
    """``done`` of ``total`` as a percentage from 0 to 100 (100 when there is nothing to do)."""
    if total <= 0:
        return 100.0
    return max(0.0, min(100.0, 100.0 * done / total))


class Progress:
    """One progress artifact under ``key`` (lowercase letters, digits and dashes), created at 0 %."""

    def __init__(self, key: str, description: str, every: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.key, self.description, self.every, self.clock = key, description, every, clock
        self.shown, self.last = 0.0, clock()
        self.artifact_id = self._call(create_progress_artifact, progress=0.0, key=key, description=description)

    def _call(self, fn: Callable, **kwargs) -> object | None:
        try:
            return fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - a progress bar must never fail the run
            get_run_logger().debug("progress artifact %s not updated: %s", self.key, exc)
            return None

    def __call__(self, done: int, total: int) -> None:
        """Note that ``done`` of ``total`` are finished."""
        value = percent(done, total)
        if value <= self.shown or (value < 100.0 and self.clock() - self.last < self.every):
            return
        self.update(value)

    def update(self, value: float, description: str | None = None) -> None:
        """Show ``value`` percent now (and a new description, when given)."""
        if self.artifact_id is None:
            return
        self.shown, self.last = value, self.clock()
        kwargs = {"description": description} if description else {}
        self._call(update_progress_artifact, artifact_id=self.artifact_id, progress=value, **kwargs)

    def finish(self, description: str | None = None) -> None:
        """Show 100 % (the work ended, possibly early, e.g. by early stopping)."""
        self.update(100.0, description)
