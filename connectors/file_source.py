"""What the file readers share: one file read into a table, and how to find a row in it.

:mod:`matrixos.connectors.csv_reader` and :mod:`matrixos.connectors.json_reader` each return a
:class:`Source`; :func:`matrixos.connectors.files.read_files` casts its table to a declared
schema and, when a value does not convert, asks the source where that value is in the file.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

__all__ = [
    "ARROW_ERRORS",
    "LineIndex",
    "Locator",
    "Source",
    "decode",
    "first_bad_row",
    "strip_bom",
]

_BOM = b"\xef\xbb\xbf"

#: The pyarrow errors that mean "this input is bad" (not a bug, not an I/O failure).
ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)

#: ``locate(row, column)``: the 1-based (line, column) of a data row's value, or (None, None).
Locator = Callable[[int, str], tuple[int | None, int | None]]


def strip_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte order mark."""
    return data[len(_BOM) :] if data.startswith(_BOM) else data


def decode(data: bytes) -> str:
    """The text of a file's bytes (UTF-8, a BOM dropped, bad bytes replaced)."""
    return data.decode("utf-8-sig", errors="replace")


class LineIndex:
    """Maps character offsets in a text to 1-based (line, column)."""

    def __init__(self, text: str) -> None:
        self.starts = [0, *(m.end() for m in re.finditer("\n", text))]

    def position(self, pos: int) -> tuple[int, int]:
        """The 1-based (line, column) of character offset ``pos``."""
        line = bisect.bisect_right(self.starts, pos)
        return line, pos - self.starts[line - 1] + 1


@dataclass
class Source:
    """One file read into a table, with what is needed to locate a row in it later."""

    path: str
    table: pa.Table
    locator: Locator | None = field(default=None, repr=False)

    def locate(self, row: int, column: str) -> tuple[int | None, int | None]:
        """Return the (line, column) of ``column`` in data row ``row`` (0-based)."""
        if self.locator is None:
            return None, None
        return self.locator(row, column)


def _cast_fails(array: pa.Array, target: pa.DataType) -> bool:
    try:
        array.cast(target)
    except ARROW_ERRORS:
        return True
    return False


def first_bad_row(array: pa.Array | pa.ChunkedArray, target: pa.DataType) -> int | None:
    """Index of the first value of ``array`` that does not cast to ``target`` (binary search)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    lo, hi = 0, len(array)
    if hi == 0 or _cast_fails(array.slice(0, 0), target) or not _cast_fails(array, target):
        return None  # nothing fails, or the types themselves are incompatible
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _cast_fails(array.slice(lo, mid - lo), target):
            hi = mid
        else:
            lo = mid
    return lo
