"""JSON and NDJSON files: read with pyarrow's C++ reader; on bad input, say where it is.

pyarrow's reader rarely says where a problem is, so on a failure the file is rescanned with
Python's ``json`` module only to locate the bad record, member or character. What crashes
pyarrow's reader or comes back wrong from it is kept out by
:mod:`~matrixos.connectors.pyarrow_json`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from matrixos.connectors.file_source import ARROW_ERRORS, LineIndex, Source, decode, strip_bom
from matrixos.connectors.pyarrow_json import (
    check_bytes,
    read_table,
    refuse_null_records,
    skip_ws,
)
from matrixos.errors import IngestError

__all__ = ["read_json"]

_ARRAY_WRAPPER_KEY = "rows"


def read_json(path: str, data: bytes, fmt: str) -> Source:
    """Read one JSON (``fmt="json"``) or NDJSON (``"ndjson"``) file's bytes into a :class:`Source`.

    A JSON file holds a top-level array of objects, objects one per line, or pretty-printed
    objects one after another; an NDJSON file holds one object per line (an empty one is an
    empty table). Raises :class:`IngestError` naming the file, and where known the line and
    column, for invalid JSON, a record that is not an object (``null`` included), a member
    whose type changes between records, an empty member name, or nesting more than 1000
    levels deep.
    """
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


def _read_json(path: str, data: bytes, fmt: str) -> Source:
    body = strip_bom(data)
    stripped = body.lstrip()
    if not stripped:
        if fmt == "ndjson":
            return Source(path, pa.table({}), functools.partial(_locate_member, data, "lines"))
        raise IngestError("empty file: expected a JSON array or objects", path=path, line=1, col=1)
    check_bytes(path, body)
    if fmt == "json" and stripped[:1] == b"[":
        mode = "array"
    elif fmt == "json" and not _first_line_is_complete(stripped):
        mode = "stream"  # pretty-printed object(s)
    else:
        mode = "lines"
    if mode != "array":
        refuse_null_records(path, body, one_per_line=mode == "lines")
    try:
        if mode == "array":
            wrapped = b'{"' + _ARRAY_WRAPPER_KEY.encode() + b'":' + body + b"\n}"
            wrapper = read_table(wrapped, block_size=len(wrapped) + 1, multiline=True)
            table = _table_from_wrapped_array(wrapper)
        else:
            table = read_table(body, block_size=None, multiline=mode == "stream")
    except ARROW_ERRORS as exc:
        raise _locate_json_error(path, decode(data), mode, str(exc)) from None
    return Source(path, table, functools.partial(_locate_member, data, mode))


def _locate_member(data: bytes, mode: str, row: int, column: str) -> tuple[int | None, int | None]:
    """The (line, character) of member ``column``'s value in record ``row`` (0-based)."""
    text = decode(data)
    try:
        # pyarrow reads records one after another on a line too (``{"a": 1} {"a": 2}``): find
        # them as a stream, which is the same records when each line holds one.
        records = _json_records(text, "array" if mode == "array" else "stream")
        spans = [(start, end) for start, end, _ in records]
    except (json.JSONDecodeError, RecursionError):
        return None, None
    if row >= len(spans):
        return None, None
    start, end = spans[row]
    pos = _find_member_value(text, start, end, [column])
    return LineIndex(text).position(pos)


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


def _json_records(text: str, mode: str) -> Iterator[tuple[int, int, Any]]:
    """Yield (start, end, value) per record; raises json.JSONDecodeError at the bad spot."""
    decoder = json.JSONDecoder()
    if mode == "lines":
        offset = 0
        for line in text.split("\n"):
            pos = skip_ws(line, 0)
            if pos < len(line):
                try:
                    value, end = decoder.raw_decode(line, pos)
                    rest = skip_ws(line, end)
                    if rest < len(line):
                        raise json.JSONDecodeError("Extra data", line, rest)
                except json.JSONDecodeError as exc:  # re-anchor the position in the whole text
                    raise json.JSONDecodeError(exc.msg, text, offset + exc.pos) from None
                yield offset + pos, offset + end, value
            offset += len(line) + 1
        return
    pos = skip_ws(text, 0)
    if mode == "stream":
        while pos < len(text):
            value, end = decoder.raw_decode(text, pos)
            yield pos, end, value
            pos = skip_ws(text, end)
        return
    if text[pos : pos + 1] != "[":
        raise json.JSONDecodeError("Expecting '['", text, pos)
    pos = skip_ws(text, pos + 1)
    if text[pos : pos + 1] != "]":
        while True:
            value, end = decoder.raw_decode(text, pos)
            yield pos, end, value
            pos = skip_ws(text, end)
            if text[pos : pos + 1] == ",":
                pos = skip_ws(text, pos + 1)
                continue
            if text[pos : pos + 1] == "]":
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    pos = skip_ws(text, pos + 1)
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
    index = LineIndex(text)
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
