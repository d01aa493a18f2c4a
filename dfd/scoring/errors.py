"""How batch scoring tells what went wrong: the one-line error of a file, and the error that stops a batch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dfd.imageio import ImageError
from dfd.storage import Store


class ScoringError(RuntimeError):
    """A batch cannot be scored at all (missing or empty folder). The message is one line for the user."""


def short(text: object, limit: int = 160) -> str:
    """``text`` on one line of at most ``limit`` characters (the form every error cell takes)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_text(exc: ImageError) -> str:
    """The error cell for a file the image reader refused: ``reason: detail``."""
    return short(f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason)


def error_reason(error: str) -> str:
    """The reason group of an error text (the part before the first colon)."""
    return error.split(":", 1)[0].strip() if error else ""


@contextlib.contextmanager
def writing(art: Store, prefix: str) -> Iterator[None]:
    """Turn an OS error while writing the batch's ledger or results (a full disk, a read-only folder) into
    one clear :class:`ScoringError`. Every write is atomic, so nothing torn is left behind."""
    try:
        yield
    except OSError as exc:
        why = (exc.strerror or str(exc)).lower()
        raise ScoringError(
            f"cannot write the results of this batch to {art.describe(prefix)}: {why}; the batch is not "
            "published (no summary.json), and a rerun resumes from what its ledger kept"
        ) from None
