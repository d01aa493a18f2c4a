"""CSV cells that a spreadsheet shows as text, never runs as a formula: the one helper every CSV writer uses.

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (a file named
``=HYPERLINK("http:x","click").jpg``) would be a live formula in Excel, LibreOffice or Google Sheets. Such a
cell is written with a single quote in front (the OWASP rule), and so is a text cell that already starts with a
single quote, which keeps the change reversible: :func:`restore` drops exactly one leading quote, so the
product's own readers get the original text back. Numbers are written as they are.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from typing import IO, Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def cell(value: Any) -> Any:
    """``value`` as it is safe to write in a CSV cell (text that could start a formula gets a leading quote)."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, QUOTE)):
        return QUOTE + value
    return value


def restore(value: str) -> str:
    """The original text of a cell written through :func:`cell`."""
    return value[1:] if value.startswith(QUOTE) else value


def restore_row(row: Mapping[str, str | None]) -> dict[str, str | None]:
    """A row from :class:`csv.DictReader` with every cell restored (see :func:`restore`)."""
    return {k: restore(v) if isinstance(v, str) else v for k, v in row.items()}


class Writer:
    """:func:`csv.writer` with every cell passed through :func:`cell`."""

    def __init__(self, fh: IO[str], **fmt: Any):
        self._writer = csv.writer(fh, **fmt)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


class DictWriter(csv.DictWriter):
    """:class:`csv.DictWriter` with every value passed through :func:`cell`."""

    def writerow(self, rowdict: Mapping[str, Any]) -> Any:
        return super().writerow({k: cell(v) for k, v in rowdict.items()})

    def writerows(self, rowdicts: Iterable[Mapping[str, Any]]) -> None:
        for row in rowdicts:
            self.writerow(row)
