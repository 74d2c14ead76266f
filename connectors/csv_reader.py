"""CSV and TSV files: read with pyarrow's C++ reader; on bad input, say where it is.

pyarrow's reader rarely says where a problem is and reads an unterminated quote as one field
running to the end of the file, so the file is checked for an open quote, and on a failure it
is rescanned with Python's ``csv`` module only to locate the bad line and field.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Iterator
from typing import NamedTuple

import pyarrow as pa
import pyarrow.csv as pa_csv

from matrixos.connectors.file_source import (
    ARROW_ERRORS,
    Source,
    decode,
    first_bad_row,
    strip_bom,
)
from matrixos.errors import IngestError

__all__ = ["csv_records", "read_csv"]

_EXPECTED_COLUMNS = re.compile(r"Expected (\d+) columns?, got (\d+)")
_CONVERSION = re.compile(
    r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (.+?): invalid value '(.*)'",
    re.S,
)
_LINE_BREAK = re.compile(rb"\r\n?|\n")


def _csv_convertible(dtype: pa.DataType) -> bool:
    return not (pa.types.is_nested(dtype) or pa.types.is_null(dtype))


def read_csv(path: str, data: bytes, delimiter: str, schema: pa.Schema | None) -> Source:
    """Read one CSV (``delimiter=","``) or TSV (``"\\t"``) file's bytes into a :class:`Source`.

    The first line is the header. With ``schema``, its columns of a CSV-convertible type are
    parsed as that type (a value that does not convert is an error naming its line and field);
    the others are inferred. Raises :class:`IngestError` naming the file, line and field for an
    empty file, a malformed or unterminated quoted field, a row with too many or too few
    fields, an empty or duplicate column name, or a value of the wrong type.
    """
    body = strip_bom(data)
    if not body.strip():
        raise IngestError("empty file: expected a header line", path=path, line=1, col=1)
    column_types = (
        {f.name: f.type for f in schema if _csv_convertible(f.type)} if schema is not None else {}
    )
    try:
        table = _pyarrow_read_csv(body, delimiter, column_types)
    except ARROW_ERRORS as exc:
        located = _locate_csv_error(path, data, delimiter, str(exc))
        quote = _unterminated_quote(path, body, delimiter)
        if quote is None or _line_before(located, quote):
            raise located from None
        raise quote from None  # the first problem in the file, or the one to fix first
    quote = _unterminated_quote(path, body, delimiter)
    if quote is not None:
        raise quote
    try:
        names = table.column_names
    except UnicodeDecodeError:
        raise _header_not_utf8(path, body, delimiter) from None
    if "" in names:
        # Refused rather than auto-named (DuckDB's ``column1``): a made-up name would not
        # match the column of an existing table the rows are appended to, and a table with
        # an empty column name cannot be queried at all.
        line = next(csv_records(decode(data), delimiter))[0]
        raise IngestError(
            f"header field {names.index('') + 1} has no column name",
            path=path,
            line=line,
            col=names.index("") + 1,
            hint="name every column in the header line",
        )
    if len(set(names)) != len(names):
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                line = next(csv_records(decode(data), delimiter))[0]
                raise IngestError(
                    f"duplicate column name {name!r}", path=path, line=line, col=i + 1
                )
            seen.add(name)
    return Source(path, table, functools.partial(_locate_cell, data, delimiter))


def _pyarrow_read_csv(
    body: bytes, delimiter: str, column_types: dict[str, pa.DataType]
) -> pa.Table:
    def read(read_options: pa_csv.ReadOptions | None) -> pa.Table:
        return pa_csv.read_csv(
            pa.BufferReader(body),
            read_options=read_options,
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(column_types=column_types or None),
        )

    try:
        return read(None)
    except pa.ArrowInvalid as exc:
        if "straddl" not in str(exc):
            raise
    # A row longer than pyarrow's block (1 MiB) cannot be split between blocks: read the
    # file as one block.
    return read(pa_csv.ReadOptions(block_size=len(body) + 1))


def _header_not_utf8(path: str, body: bytes, delimiter: str) -> IngestError:
    """pyarrow keeps column names as bytes and decodes them on use (a raw UnicodeDecodeError);
    name the field that is not UTF-8."""
    header = next(csv.reader(io.StringIO(body.decode("latin-1")), delimiter=delimiter), [])
    col = None
    for number, name in enumerate(header, start=1):
        try:
            name.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            col = number
            break
    return IngestError(
        "the header line is not valid UTF-8 text",
        path=path,
        line=1,
        col=col,
        hint="save the file as UTF-8",
    )


def _locate_cell(
    data: bytes, delimiter: str, row: int, column: str
) -> tuple[int | None, int | None]:
    """The (physical line, field number) of ``column`` in data row ``row`` (0-based)."""
    records = list(csv_records(decode(data), delimiter))
    if row + 1 >= len(records):
        return None, None
    header = records[0][1]
    col = header.index(column) + 1 if column in header else None
    return records[row + 1][0], col


def _line_before(a: IngestError, b: IngestError) -> bool:
    return a.line is not None and b.line is not None and a.line < b.line


def _unterminated_quote(path: str, body: bytes, delimiter: str) -> IngestError | None:
    """The error naming the line and field where a quote opens that never closes, if one does.

    pyarrow reads such a quote as a field running to the end of the file: one row where there
    were many, and no error.
    """
    opened = _open_quote(body, delimiter)
    if opened is None:
        return None
    head = body[:opened]
    record = _grammar(delimiter).records.match(head)
    assert record is not None  # the pattern also matches the empty string
    before = head[record.end() :]  # the open quote's record, up to the quote
    return IngestError(
        "unterminated quoted field: the quote that opens it is never closed",
        path=path,
        line=len(_LINE_BREAK.findall(head)) + 1,
        col=len(_grammar(delimiter).field_and_delimiter.findall(before)) + 1,
        hint='close the quote; a quote inside a quoted field is written twice ("")',
    )


def _open_quote(body: bytes, delimiter: str) -> int | None:
    """Offset of a quote that opens a field and is never closed, or None.

    One regular expression steps over the file field by field as pyarrow reads it: a quote
    opens a quoted field only at the start of a field (``5"3`` is text), ``""`` inside it is a
    quote, and after the closing quote the field runs on to the next delimiter or line end.
    Its quantifiers are possessive (it never backtracks), so it stops exactly at a quote that
    does not close, and runs at C speed (faster than pyarrow's parse on quote-heavy files).
    """
    if b'"' not in body:
        return None
    scan = _grammar(delimiter).fields.match(body)
    assert scan is not None  # the pattern also matches the empty string
    return scan.end() if scan.end() < len(body) else None


class _Grammar(NamedTuple):
    """Regular expressions that read a CSV file's structure as pyarrow's parser does."""

    fields: re.Pattern[bytes]  # a run of fields, delimiters and line breaks
    field_and_delimiter: re.Pattern[bytes]  # one field and the delimiter after it
    records: re.Pattern[bytes]  # a run of whole records, each with its line break


@functools.cache
def _grammar(delimiter: str) -> _Grammar:
    d = re.escape(delimiter.encode())
    quoted = rb'"(?:[^"]++|"")*+"[^' + d + rb"\r\n]*+"
    bare = rb'[^"' + d + rb"\r\n][^" + d + rb"\r\n]*+"
    field = rb"(?:" + quoted + rb"|" + bare
    return _Grammar(
        fields=re.compile(field + rb"|[" + d + rb"\r\n])*+"),
        field_and_delimiter=re.compile(field + rb")?+" + d),
        records=re.compile(rb"(?:" + field + rb"|" + d + rb")*+(?:\r\n?|\n))*+"),
    )


def csv_records(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (physical line where the record starts, fields) for each non-blank record.

    Python's ``csv`` module reads the text (slower than pyarrow): only to locate a problem.
    """
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    end = 0
    for fields in reader:
        start, end = end + 1, reader.line_num
        if fields:
            yield start, fields


def _locate_csv_error(path: str, data: bytes, delimiter: str, message: str) -> IngestError:
    text = decode(data)
    conversion = _CONVERSION.search(message)
    if conversion:
        index, type_name, value = int(conversion[1]), conversion[2], conversion[3]
        return _locate_csv_value(path, text, delimiter, index, type_name, value)
    try:
        records = csv_records(text, delimiter)
        header = next(records, None)
        if header is None:
            return IngestError("empty file: expected a header line", path=path, line=1, col=1)
        expected = len(header[1])
        for line, fields in records:
            if len(fields) != expected:
                got = len(fields)
                what = "too many" if got > expected else "too few"
                return IngestError(
                    f"{what} fields: expected {expected}, got {got}",
                    path=path,
                    line=line,
                    col=min(got, expected) + 1,
                )
    except csv.Error as exc:
        return IngestError(f"malformed CSV: {exc}", path=path)
    counts = _EXPECTED_COLUMNS.search(message)
    if counts:
        return IngestError(f"expected {counts[1]} fields, got {counts[2]}", path=path)
    return IngestError(f"cannot parse CSV: {message}", path=path)


def _locate_csv_value(
    path: str, text: str, delimiter: str, index: int, type_name: str, value: str
) -> IngestError:
    records = list(csv_records(text, delimiter))
    header = records[0][1] if records else []
    name = header[index] if index < len(header) else f"#{index + 1}"
    rows = records[1:]
    hit = next((r for r in rows if index < len(r[1]) and r[1][index] == value), None)
    if hit is None:  # pyarrow may shorten or escape the value: find it by converting
        nulls = set(pa_csv.ConvertOptions().null_values)
        cells = [r[1][index] if index < len(r[1]) else None for r in rows]
        strings = pa.array([None if c in nulls else c for c in cells], pa.string())
        try:
            target = pa.type_for_alias(type_name)
        except ValueError:
            target = None
        bad = first_bad_row(strings, target) if target is not None else None
        if bad is not None:
            hit, value = rows[bad], cells[bad] or ""
    line = hit[0] if hit is not None else None
    col = index + 1
    return IngestError(
        f"invalid value {value!r} in column {name!r} (field {col}): not a valid {type_name}",
        path=path,
        line=line,
        col=col,
    )
