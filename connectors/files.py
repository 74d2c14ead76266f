"""Read CSV, TSV, JSON, NDJSON and Parquet files into one Arrow table.

``read_files`` takes files, folders (walked recursively) or glob patterns on any fsspec
filesystem (local by default, ``s3://`` with an ``s3fs.S3FileSystem``), reads each file with
pyarrow's fast C++ readers and unifies them into a single :class:`pyarrow.Table`.

Bad input raises :class:`matrixos.errors.IngestError` naming the file and, where the format has
them, the 1-based line and column. pyarrow's readers rarely say where a problem is, so on a
failure the file is rescanned with Python's ``csv``/``json`` modules only to locate it.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from matrixos.errors import ConfigError, IngestError

__all__ = ["FORMATS", "infer_format", "list_files", "normalize_format", "read_files"]

#: The formats ``read_files`` understands (values of ``format=`` and of ``infer_format``).
FORMATS: tuple[str, ...] = ("csv", "tsv", "json", "ndjson", "parquet")

_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".parquet": "parquet",
}
_FORMAT_ALIASES: dict[str, str] = {
    "csv": "csv",
    "tsv": "tsv",
    "json": "json",
    "ndjson": "ndjson",
    "jsonl": "ndjson",
    "parquet": "parquet",
}
_COMPRESSIONS: dict[str, str] = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
_GLOB_CHARS = frozenset("*?[")
_BOM = b"\xef\xbb\xbf"
_JSON_WS = " \t\r\n"
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def infer_format(path: str) -> str:
    """Return the format of ``path`` from its extension: one of :data:`FORMATS`.

    A compression suffix (``.gz``, ``.bz2``, ``.zst``) is looked through, so ``x.csv.gz`` is
    ``"csv"``. Raises :class:`IngestError` naming the file for an unsupported extension.
    """
    stem, _ = _split_compression(posixpath.basename(path.rstrip("/")))
    ext = posixpath.splitext(stem)[1].lower()
    fmt = _EXTENSIONS.get(ext)
    if fmt is None:
        known = ", ".join(sorted(_EXTENSIONS))
        what = f"extension {ext!r}" if ext else "a file without an extension"
        raise IngestError(
            f"unsupported file type: {what}; expected one of {known} "
            "(optionally compressed .gz/.bz2/.zst), or pass format=",
            path=path,
        )
    return fmt


def list_files(paths: Sequence[str] | str, filesystem: fsspec.AbstractFileSystem) -> list[str]:
    """Expand files, folders and glob patterns into the list of files to read.

    Folders are walked recursively; files and folders whose name starts with ``.`` or ``_``
    (``.crc`` files, ``_SUCCESS``, ``_delta_log``) below a folder or matched by a glob are
    skipped. Each folder's or glob's files are sorted; duplicates are dropped. A file named
    directly is kept as given. Paths with a protocol (``s3://bucket/x``) keep it in the result.

    Raises :class:`IngestError` when a path does not exist, a glob matches nothing, or nothing
    at all is found.
    """
    if isinstance(paths, str):
        paths = [paths]
    found: list[str] = []
    seen: set[str] = set()

    def add(item: str) -> None:
        if item not in seen:
            seen.add(item)
            found.append(item)

    for path in paths:
        prefix = _protocol_prefix(path)
        if any(ch in _GLOB_CHARS for ch in path):
            matches = sorted(filesystem.glob(path))
            if not matches:
                raise IngestError("no files match this pattern", path=path)
            for match in matches:
                if _is_hidden(posixpath.basename(match.rstrip("/"))):
                    continue
                if filesystem.isdir(match):
                    for item in _walk(filesystem, match):
                        add(prefix + item)
                else:
                    add(prefix + match)
        elif filesystem.isdir(path):
            for item in _walk(filesystem, path):
                add(prefix + item)
        elif filesystem.exists(path):
            add(path)
        else:
            raise IngestError("no such file or folder", path=path)
    if not found:
        raise IngestError("no data files found", path=", ".join(paths))
    return found


def read_files(
    paths: Sequence[str] | str,
    *,
    format: str | None = None,
    filesystem: fsspec.AbstractFileSystem | None = None,
    schema: pa.Schema | None = None,
) -> pa.Table:
    """Read files and folders of CSV/TSV/JSON/NDJSON/Parquet into one Arrow table.

    ``paths`` are files, folders (walked recursively, see :func:`list_files`) or glob patterns,
    local or on ``filesystem`` (for ``s3://`` URIs pass an ``s3fs.S3FileSystem``; without one
    the filesystem is chosen from the first path's protocol). Each file's format comes from its
    extension (:func:`infer_format`) unless ``format`` is given; ``.gz``/``.bz2``/``.zst``
    compression is undone first. A ``.json`` file holds either a top-level array of objects or
    objects one after another (one per line, as NDJSON). Formats may be mixed in one call.

    Without ``schema`` the files' columns are unified by name in order of first appearance:
    integers and floats widen to float64, other conflicting types become strings, and columns
    missing from a file are null. With ``schema`` each file's columns are cast to it by name
    (missing columns are null, extra columns dropped) and the result has exactly that schema.

    Raises :class:`IngestError` naming the file, and where known the 1-based line and column
    (a CSV column is the field number, a JSON column the character), for anything unreadable.
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise IngestError("no paths given", path="")
    fs = filesystem if filesystem is not None else fsspec.core.url_to_fs(paths[0])[0]
    fixed = normalize_format(format) if format is not None else None
    files = list_files(paths, fs)
    formats = [fixed or infer_format(item) for item in files]  # fail fast, before any reading
    tables: list[pa.Table] = []
    for item, fmt in zip(files, formats, strict=True):
        source = _read_one(fs, item, fmt, schema)
        tables.append(_conform(source, schema) if schema is not None else source.table)
    if schema is not None:
        return pa.concat_tables(tables)
    return _unify(tables, files)


# --------------------------------------------------------------------------------------------
# Listing helpers
# --------------------------------------------------------------------------------------------


def _protocol_prefix(path: str) -> str:
    return path.split("://", 1)[0] + "://" if "://" in path else ""


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _walk(filesystem: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    root = filesystem._strip_protocol(folder).rstrip("/")
    out = []
    for item in filesystem.find(folder, withdirs=False):
        if item.endswith("/"):
            continue  # an S3 "folder" marker object
        rel = item[len(root) + 1 :] if item.startswith(root + "/") else posixpath.basename(item)
        if any(_is_hidden(part) for part in rel.split("/")):
            continue
        out.append(item)
    return sorted(out)


def normalize_format(fmt: str) -> str:
    """The canonical name of a ``format=`` value (``"JSONL"`` is ``"ndjson"``).

    Raises :class:`ConfigError` naming the valid formats for anything else.
    """
    key = fmt.lower().lstrip(".") if isinstance(fmt, str) else None
    if key is None or key not in _FORMAT_ALIASES:
        raise ConfigError(
            f"unknown file format {fmt!r}; expected one of {', '.join(FORMATS)}",
            hint="leave format out to infer it from each file's extension "
            f"({', '.join(sorted(_EXTENSIONS))})",
        )
    return _FORMAT_ALIASES[key]


def _split_compression(name: str) -> tuple[str, str | None]:
    stem, ext = posixpath.splitext(name)
    codec = _COMPRESSIONS.get(ext.lower())
    return (stem, codec) if codec else (name, None)


# --------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------


class _LineIndex:
    """Maps character offsets in a text to 1-based (line, column)."""

    def __init__(self, text: str) -> None:
        self.starts = [0, *(m.end() for m in re.finditer("\n", text))]

    def position(self, pos: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, pos)
        return line, pos - self.starts[line - 1] + 1


@dataclass
class _Source:
    """One file read into a table, with what is needed to locate a row in it later."""

    path: str
    fmt: str
    table: pa.Table
    data: bytes = b""
    json_mode: str = ""  # "array", "lines" or "stream" for JSON sources
    _text: str | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = _decode(self.data)
        return self._text

    def locate(self, row: int, column: str) -> tuple[int | None, int | None]:
        """Return the (line, column) of ``column`` in data row ``row`` (0-based)."""
        if self.fmt in ("csv", "tsv"):
            records = list(_csv_records(self.text, _delimiter(self.fmt)))
            if row + 1 >= len(records):
                return None, None
            header = records[0][1]
            col = header.index(column) + 1 if column in header else None
            return records[row + 1][0], col
        if self.fmt in ("json", "ndjson"):
            spans = [(start, end) for start, end, _ in _json_records(self.text, self.json_mode)]
            if row >= len(spans):
                return None, None
            start, end = spans[row]
            pos = _find_member_value(self.text, start, end, [column])
            return _LineIndex(self.text).position(pos)
        return None, None


def _read_one(
    fs: fsspec.AbstractFileSystem, path: str, fmt: str, schema: pa.Schema | None
) -> _Source:
    _, codec = _split_compression(posixpath.basename(path))
    if fmt == "parquet" and codec is None:
        return _Source(path, fmt, _read_parquet(fs, path, None))
    try:
        raw = fs.cat_file(path)
    except (OSError, ValueError) as exc:
        raise IngestError(f"cannot read file: {exc}", path=path) from exc
    data = _decompress(path, raw, codec) if codec else raw
    if fmt == "parquet":
        return _Source(path, fmt, _read_parquet(fs, path, data))
    if fmt in ("csv", "tsv"):
        return _Source(path, fmt, _read_csv(path, data, _delimiter(fmt), schema), data)
    try:
        source = _read_json(path, data, fmt)
    except RecursionError as exc:
        # Python's json module (used to locate errors) recurses once per nesting level.
        raise IngestError(
            "JSON nested too deeply to read",
            path=path,
            hint="flatten the structure, or store the deep part as a JSON string",
        ) from exc
    if "" in source.table.column_names:
        raise IngestError(
            'a JSON object has a member with an empty name ("")',
            path=path,
            hint="name every member: an empty column name cannot be queried",
        )
    return source


def _decompress(path: str, raw: bytes, codec: str) -> bytes:
    try:
        with pa.CompressedInputStream(pa.BufferReader(raw), codec) as stream:
            return bytes(stream.read())
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"not a valid {codec} file: {exc}", path=path) from None


def _decode(data: bytes) -> str:
    return data.decode("utf-8-sig", errors="replace")


def _delimiter(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


# ---- Parquet --------------------------------------------------------------------------------


def _read_parquet(fs: fsspec.AbstractFileSystem, path: str, data: bytes | None) -> pa.Table:
    try:
        if data is not None:
            return pq.ParquetFile(pa.BufferReader(data)).read()
        with fs.open(path, "rb") as handle:
            return pq.ParquetFile(handle).read()
    except FileNotFoundError as exc:
        raise IngestError(f"cannot read file: {exc}", path=path) from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise IngestError(f"not a valid Parquet file ({exc})", path=path) from None


# ---- CSV ------------------------------------------------------------------------------------

_EXPECTED_COLUMNS = re.compile(r"Expected (\d+) columns?, got (\d+)")
_CONVERSION = re.compile(
    r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (.+?): invalid value '(.*)'",
    re.S,
)


def _csv_convertible(dtype: pa.DataType) -> bool:
    return not (pa.types.is_nested(dtype) or pa.types.is_null(dtype))


def _read_csv(path: str, data: bytes, delimiter: str, schema: pa.Schema | None) -> pa.Table:
    body = data[len(_BOM) :] if data.startswith(_BOM) else data
    if not body.strip():
        raise IngestError("empty file: expected a header line", path=path, line=1, col=1)
    column_types = (
        {f.name: f.type for f in schema if _csv_convertible(f.type)} if schema is not None else {}
    )
    try:
        table = pa_csv.read_csv(
            pa.BufferReader(body),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(column_types=column_types or None),
        )
    except _ARROW_ERRORS as exc:
        if _may_leave_a_quote_open(body, delimiter):
            _refuse_unterminated_quote(path, body, delimiter)
        raise _locate_csv_error(path, data, delimiter, str(exc)) from None
    # pyarrow reads an unterminated quote as a field running to the end of the file (one
    # row where there were many, no error).
    if _may_leave_a_quote_open(body, delimiter) or _last_value_spans_lines(table):
        _refuse_unterminated_quote(path, body, delimiter)
    names = table.column_names
    if "" in names:
        # Refused rather than auto-named (DuckDB's ``column1``): a made-up name would not
        # match the column of an existing table the rows are appended to, and a table with
        # an empty column name cannot be queried at all.
        line = next(_csv_records(_decode(data), delimiter))[0]
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
                line = next(_csv_records(_decode(data), delimiter))[0]
                raise IngestError(
                    f"duplicate column name {name!r}", path=path, line=line, col=i + 1
                )
            seen.add(name)
    return table


def _may_leave_a_quote_open(body: bytes, delimiter: str) -> bool:
    """Whether the exact (slower) scan for an unterminated quote is needed.

    Quoted fields hold an even number of quote characters (opening, closing, doubled ones
    inside), so with no quote in the middle of a bare field (``5"3``, text to pyarrow) an
    odd count is exactly an open quote. A mid-field quote, found here by one regular
    expression over the text without its ``""`` pairs, sends the file to the scan too, and so
    does a last value with a line break (``_last_value_spans_lines``).
    """
    if b'"' not in body:
        return False
    if body.count(b'"') % 2:
        return True
    bound = re.escape(delimiter.encode())
    mid_field = re.compile(rb'[^\r\n"' + bound + rb']"[^\r\n"' + bound + rb"]")
    return mid_field.search(body.replace(b'""', b"")) is not None


def _last_value_spans_lines(table: pa.Table) -> bool:
    """Whether a text value of the last row holds a line break: what a quote left open to
    the end of the file leaves behind (also when the quote count is even)."""
    if table.num_rows == 0:
        return False
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            value = col[table.num_rows - 1].as_py()
            if value is not None and ("\n" in value or "\r" in value):
                return True
    return False


def _refuse_unterminated_quote(path: str, body: bytes, delimiter: str) -> None:
    unterminated = _unterminated_quote(_decode(body), delimiter)
    if unterminated is not None:
        line, col = unterminated
        raise IngestError(
            "unterminated quoted field: the quote that opens it is never closed",
            path=path,
            line=line,
            col=col,
            hint='close the quote; a quote inside a quoted field is written twice ("")',
        )


def _unterminated_quote(text: str, delimiter: str) -> tuple[int, int] | None:
    """(line, field) where a quoted field opens that never closes, or None.

    Follows pyarrow's reading: a quote is special only at the start of a field, and ``""``
    inside a quoted field is a quote. Steps over the special characters only.
    """
    line, fieldno, opened = 1, 1, None
    field_start = 0  # offset where the current field begins
    in_quotes = False
    specials = re.compile('["\n' + re.escape(delimiter) + "]")
    pos = 0
    while True:
        m = specials.search(text, pos)
        if m is None:
            break
        i, c = m.start(), m.group()
        pos = i + 1
        if in_quotes:
            if c == "\n":
                line += 1
            elif c == '"':
                if text.startswith('"', i + 1):
                    pos = i + 2  # an escaped quote
                else:
                    in_quotes = False
        elif c == '"':
            if i == field_start:
                in_quotes, opened = True, (line, fieldno)
        elif c == delimiter:
            fieldno, field_start = fieldno + 1, i + 1
        else:  # newline: a new record
            line, fieldno, field_start = line + 1, 1, i + 1
    return opened if in_quotes else None


def _csv_records(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (physical line where the record starts, fields) for each non-blank record."""
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    end = 0
    for fields in reader:
        start, end = end + 1, reader.line_num
        if fields:
            yield start, fields


def _locate_csv_error(path: str, data: bytes, delimiter: str, message: str) -> IngestError:
    text = _decode(data)
    conversion = _CONVERSION.search(message)
    if conversion:
        index, type_name, value = int(conversion[1]), conversion[2], conversion[3]
        return _locate_csv_value(path, text, delimiter, index, type_name, value)
    try:
        records = _csv_records(text, delimiter)
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
    records = list(_csv_records(text, delimiter))
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
        bad = _first_bad_row(strings, target) if target is not None else None
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


# ---- JSON / NDJSON --------------------------------------------------------------------------

_ARRAY_WRAPPER_KEY = "rows"


def _read_json(path: str, data: bytes, fmt: str) -> _Source:
    body = data[len(_BOM) :] if data.startswith(_BOM) else data
    stripped = body.lstrip()
    if not stripped:
        if fmt == "ndjson":
            return _Source(path, fmt, pa.table({}), data, "lines")
        raise IngestError("empty file: expected a JSON array or objects", path=path, line=1, col=1)
    if fmt == "json" and stripped[:1] == b"[":
        mode = "array"
    elif fmt == "json" and not _first_line_is_complete(stripped):
        mode = "stream"  # pretty-printed object(s)
    else:
        mode = "lines"
    try:
        if mode == "array":
            wrapped = b'{"' + _ARRAY_WRAPPER_KEY.encode() + b'":' + body + b"\n}"
            wrapper = pa_json.read_json(
                pa.BufferReader(wrapped),
                read_options=pa_json.ReadOptions(block_size=len(wrapped) + 1),
                parse_options=pa_json.ParseOptions(newlines_in_values=True),
            )
            table = _table_from_wrapped_array(wrapper)
        else:
            table = pa_json.read_json(
                pa.BufferReader(body),
                parse_options=pa_json.ParseOptions(newlines_in_values=mode == "stream"),
            )
    except _ARROW_ERRORS as exc:
        raise _locate_json_error(path, _decode(data), mode, str(exc)) from None
    return _Source(path, fmt, table, data, mode)


def _first_line_is_complete(body: bytes) -> bool:
    first = body.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    try:
        json.loads(first)
    except ValueError:
        return False
    return True


def _table_from_wrapped_array(wrapper: pa.Table) -> pa.Table:
    if wrapper.num_columns != 1 or wrapper.num_rows != 1:
        raise pa.ArrowInvalid("JSON parse error: expected one top-level array")
    rows = wrapper.column(0).combine_chunks()
    if not pa.types.is_list(rows.type) or rows.is_null().to_pylist()[0]:
        raise pa.ArrowInvalid("JSON parse error: the top-level value is not an array")
    items = rows.flatten()
    if pa.types.is_null(items.type):  # an empty array, or an array of nulls
        if len(items):
            raise pa.ArrowInvalid("JSON parse error: array elements are not objects")
        return pa.table({})
    if not pa.types.is_struct(items.type):
        raise pa.ArrowInvalid("JSON parse error: array elements are not objects")
    if items.null_count:
        raise pa.ArrowInvalid("JSON parse error: array elements are not objects")
    return pa.Table.from_struct_array(items)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _JSON_WS:
        pos += 1
    return pos


def _json_records(text: str, mode: str) -> Iterator[tuple[int, int, Any]]:
    """Yield (start, end, value) per record; raises json.JSONDecodeError at the bad spot."""
    decoder = json.JSONDecoder()
    if mode == "lines":
        offset = 0
        for line in text.split("\n"):
            pos = _skip_ws(line, 0)
            if pos < len(line):
                try:
                    value, end = decoder.raw_decode(line, pos)
                    rest = _skip_ws(line, end)
                    if rest < len(line):
                        raise json.JSONDecodeError("Extra data", line, rest)
                except json.JSONDecodeError as exc:  # re-anchor the position in the whole text
                    raise json.JSONDecodeError(exc.msg, text, offset + exc.pos) from None
                yield offset + pos, offset + end, value
            offset += len(line) + 1
        return
    pos = _skip_ws(text, 0)
    if mode == "stream":
        while pos < len(text):
            value, end = decoder.raw_decode(text, pos)
            yield pos, end, value
            pos = _skip_ws(text, end)
        return
    if text[pos : pos + 1] != "[":
        raise json.JSONDecodeError("Expecting '['", text, pos)
    pos = _skip_ws(text, pos + 1)
    if text[pos : pos + 1] != "]":
        while True:
            value, end = decoder.raw_decode(text, pos)
            yield pos, end, value
            pos = _skip_ws(text, end)
            if text[pos : pos + 1] == ",":
                pos = _skip_ws(text, pos + 1)
                continue
            if text[pos : pos + 1] == "]":
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    pos = _skip_ws(text, pos + 1)
    if pos < len(text):
        raise json.JSONDecodeError("Extra data", text, pos)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _kind_conflict(
    value: Any, keys: list[str], seen: dict[tuple[str, ...], str]
) -> tuple[list[str], str, str] | None:
    """Find the first value whose JSON kind differs from earlier values at the same path."""
    kind = _json_kind(value)
    if kind == "null":
        return None
    path = tuple(keys)
    before = seen.setdefault(path, kind)
    if before != kind:
        return keys, before, kind
    if isinstance(value, dict):
        for key, item in value.items():
            found = _kind_conflict(item, [*keys, key], seen)
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _kind_conflict(item, [*keys, "[]"], seen)
            if found:
                return found
    return None


def _find_member_value(text: str, start: int, end: int, keys: list[str]) -> int:
    """Best-effort offset of the value of member ``keys`` inside the object at [start, end)."""
    pos = start
    for key in keys:
        if key == "[]":
            continue
        match = re.compile(re.escape(json.dumps(key)) + r"\s*:\s*").search(text, pos, end)
        if match is None:
            break
        pos = match.end()
    return pos


def _locate_json_error(path: str, text: str, mode: str, message: str) -> IngestError:
    try:
        records = list(_json_records(text, mode))
    except json.JSONDecodeError as exc:
        return IngestError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno, col=exc.colno)
    index = _LineIndex(text)
    seen: dict[tuple[str, ...], str] = {}
    for start, end, value in records:
        if not isinstance(value, dict):
            line, col = index.position(start)
            where = "array element" if mode == "array" else "record"
            return IngestError(
                f"expected a JSON object per {where}, got {_json_kind(value)}",
                path=path,
                line=line,
                col=col,
            )
        conflict = _kind_conflict(value, [], seen)
        if conflict:
            keys, before, now = conflict
            line, col = index.position(_find_member_value(text, start, end, keys))
            name = ".".join(k for k in keys if k != "[]")
            return IngestError(
                f"column {name!r}: expected a {before} like in earlier records, got a {now}",
                path=path,
                line=line,
                col=col,
            )
    return IngestError(f"cannot read JSON: {message}", path=path)


# --------------------------------------------------------------------------------------------
# Schemas: casting to a declared schema, unifying inferred ones
# --------------------------------------------------------------------------------------------


def _cast_fails(array: pa.Array, target: pa.DataType) -> bool:
    try:
        array.cast(target)
    except _ARROW_ERRORS:
        return True
    return False


def _first_bad_row(array: pa.Array | pa.ChunkedArray, target: pa.DataType) -> int | None:
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


def _conform(source: _Source, schema: pa.Schema) -> pa.Table:
    table = source.table
    columns = []
    for target in schema:
        if target.name not in table.column_names:
            if not target.nullable:
                raise IngestError(f"required column {target.name!r} is missing", path=source.path)
            columns.append(pa.nulls(table.num_rows, target.type))
            continue
        column = table.column(target.name)
        if column.type == target.type:
            columns.append(column)
            continue
        try:
            columns.append(column.cast(target.type))
        except _ARROW_ERRORS as exc:
            row = _first_bad_row(column, target.type)
            if row is None:
                raise IngestError(
                    f"column {target.name!r} is {column.type} and cannot be converted to "
                    f"{target.type}: {exc}",
                    path=source.path,
                ) from None
            value = column[row].as_py()
            line, col = source.locate(row, target.name)
            at_row = "" if line is not None else f" (row {row + 1})"
            raise IngestError(
                f"invalid value {value!r} in column {target.name!r}{at_row}: "
                f"not a valid {target.type}",
                path=source.path,
                line=line,
                col=col,
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)


def _is_number(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype)


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _unify_types(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """Common type of two columns of the same name: null < int < float < string."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if _is_number(a) and _is_number(b):
        if pa.types.is_integer(a) and pa.types.is_integer(b):
            return pa.int64()
        return pa.float64()
    if _is_text(a) and _is_text(b):
        return pa.large_string()
    if pa.types.is_date(a) and pa.types.is_timestamp(b):
        return b
    if pa.types.is_timestamp(a) and pa.types.is_date(b):
        return a
    try:
        merged = pa.unify_schemas(
            [pa.schema([("x", a)]), pa.schema([("x", b)])], promote_options="permissive"
        )
    except _ARROW_ERRORS:
        return pa.large_string() if pa.types.is_large_string(a) else pa.string()
    return merged.field("x").type


def _unify(tables: list[pa.Table], files: list[str]) -> pa.Table:
    types: dict[str, pa.DataType] = {}
    for table in tables:
        for column in table.schema:
            known = types.get(column.name)
            types[column.name] = column.type if known is None else _unify_types(known, column.type)
    schema = pa.schema(list(types.items()))
    out = []
    for table, path in zip(tables, files, strict=True):
        columns = []
        for target in schema:
            if target.name not in table.column_names:
                columns.append(pa.nulls(table.num_rows, target.type))
                continue
            column = table.column(target.name)
            try:
                columns.append(column.cast(target.type, safe=False))
            except _ARROW_ERRORS:
                raise IngestError(
                    f"column {target.name!r} is {column.type} here and cannot be combined with "
                    f"the {target.type} it is in other files",
                    path=path,
                ) from None
        out.append(pa.Table.from_arrays(columns, schema=schema))
    return pa.concat_tables(out)
