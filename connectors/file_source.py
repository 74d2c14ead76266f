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

from matrixos.errors import IngestError

__all__ = [
    "ARROW_ERRORS",
    "LineIndex",
    "Locator",
    "Source",
    "decode",
    "first_bad_row",
    "not_utf8",
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


def not_utf8(path: str, body: bytes) -> IngestError | None:
    """The error naming the line and column of the first byte that is not UTF-8, if any.

    Arrow checks the bytes in place (milliseconds for tens of megabytes); only a file that
    fails is decoded by Python to find the byte.
    """
    if body.isascii():
        return None
    offsets = pa.array([0, len(body)], pa.int64()).buffers()[1]
    whole = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), 1, [None, offsets, pa.py_buffer(body)]
    )
    try:
        whole.cast(pa.large_string())
        return None
    except pa.ArrowInvalid:
        pass
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = body.rfind(b"\n", 0, exc.start) + 1
        return IngestError(
            f"not valid UTF-8 text (byte {body[exc.start]:#04x})",
            path=path,
            line=body.count(b"\n", 0, exc.start) + 1,
            col=len(body[line_start : exc.start].decode("utf-8")) + 1,
            hint="save the file as UTF-8",
        )
    return None


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
