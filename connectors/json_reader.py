"""JSON and NDJSON files: read with pyarrow's C++ reader; on bad input, say where it is.

pyarrow's reader rarely says where a problem is, so on a failure the file is rescanned with
Python's ``json`` module only to locate the bad record, member or character. Before pyarrow
reads a file, two checks at C speed keep out what crashes its reader (pyarrow 26): a record
that is ``null`` and nesting thousands of levels deep; after, its result is validated.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from matrixos.connectors.file_source import (
    ARROW_ERRORS,
    LineIndex,
    Source,
    decode,
    not_utf8,
    strip_bom,
)
from matrixos.errors import IngestError

__all__ = ["read_json"]

_JSON_WS = " \t\r\n"
_ARRAY_WRAPPER_KEY = "rows"
_MAX_DEPTH = 1000
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_DEPTH_STEP = np.zeros(256, np.int8)
_DEPTH_STEP[list(b"[{")] = 1
_DEPTH_STEP[list(b"]}")] = -1
_DEPTH_CHUNK = 1 << 24
# Where ``null`` is a member's value or an array element, as JSON writers space them
# (Python's json.dumps first).
_NULL_INSIDE_A_RECORD = (b": null", b":null", b", null", b",null", b"[null", b"[ null")


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
    # JSON is UTF-8. pyarrow stores other bytes as they are, in strings and in member names
    # (which then fail when used), or says neither where nor which.
    bad_text = not_utf8(path, body)
    if bad_text is not None:
        raise bad_text
    _refuse_deep_nesting(path, body)
    if fmt == "json" and stripped[:1] == b"[":
        mode = "array"
    elif fmt == "json" and not _first_line_is_complete(stripped):
        mode = "stream"  # pretty-printed object(s)
    else:
        mode = "lines"
    if mode != "array":
        _refuse_null_records(path, body)
    try:
        if mode == "array":
            wrapped = b'{"' + _ARRAY_WRAPPER_KEY.encode() + b'":' + body + b"\n}"
            wrapper = _pyarrow_read_json(wrapped, block_size=len(wrapped) + 1, multiline=True)
            table = _table_from_wrapped_array(wrapper)
        else:
            table = _pyarrow_read_json(body, block_size=None, multiline=mode == "stream")
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


def _refuse_deep_nesting(path: str, body: bytes) -> None:
    """Refuse arrays and objects nested more than ``_MAX_DEPTH`` levels deep.

    pyarrow's parser recurses once per level and crashes the process (a segfault, ~16,000
    levels on an 8 MiB stack); a table holds 32 levels at most. Measured at C speed: escaped
    backslashes and quotes are dropped, then everything but quotes and brackets; a string
    without brackets is then an empty pair of quotes, dropped too, and only where a string
    holds brackets is what lies between quotes cut out. The brackets left count the depth.
    """
    if len(body) <= _MAX_DEPTH:
        return
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = body.translate(None, _NOT_STRUCTURE)
    if structure.count(b"[") + structure.count(b"{") <= _MAX_DEPTH:
        return
    structure = structure.replace(b'""', b"")
    if b'"' in structure:  # dropping a pair keeps every other quote's parity
        structure = b"".join(structure.split(b'"')[::2])
    steps = _DEPTH_STEP[np.frombuffer(structure, np.uint8)]
    level = 0
    for start in range(0, len(steps), _DEPTH_CHUNK):  # int32 sums: a chunk moves < 2**31
        run = np.cumsum(steps[start : start + _DEPTH_CHUNK], dtype=np.int32)
        if level + int(run.max()) > _MAX_DEPTH:
            raise IngestError(
                f"JSON nested too deeply to read (more than {_MAX_DEPTH} levels)",
                path=path,
                hint="flatten the structure, or store the deep part as a JSON string",
            )
        level += int(run[-1])


def _refuse_null_records(path: str, body: bytes) -> None:
    """Refuse a record that is ``null`` (records one per line, or one after another).

    pyarrow reads it as a row of nulls, and crashes the process (a segfault, pyarrow 26)
    when one starts a block of its parse: the first record, or one ~1 MiB in. Counting
    ``null`` where it is a member's value or an array element rules out most files cheaply;
    the others are read with Python's ``json`` to find a null record exactly.
    """
    unexplained = body.count(b"null")
    for inside in _NULL_INSIDE_A_RECORD:
        if not unexplained:
            return
        unexplained -= body.count(inside)
    if not unexplained:
        return
    text = decode(body)
    decoder = json.JSONDecoder(strict=False)
    pos = _skip_ws(text, 0)
    while pos < len(text):
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise IngestError(
                f"invalid JSON: {exc.msg}", path=path, line=exc.lineno, col=exc.colno
            ) from None
        if value is None:
            line, col = LineIndex(text).position(pos)
            raise IngestError(
                "expected a JSON object per record, got null", path=path, line=line, col=col
            )
        pos = _skip_ws(text, end)


def _pyarrow_read_json(body: bytes, *, block_size: int | None, multiline: bool) -> pa.Table:
    """pyarrow's ``read_json``, its result checked.

    A list whose first values are null (``[null, 1]``) comes back with offsets past the end of
    its values (apache/arrow#51305, pyarrow 25 and 26): an invalid table that fails later, in
    the write. Read again with the schema the first read inferred, it is right, except a list
    of nulls only (``[null, null]``, type ``list<null>``), whose values are then made as long
    as its offsets say.
    """
    read_options = pa_json.ReadOptions(**({"block_size": block_size} if block_size else {}))
    table = pa_json.read_json(
        pa.BufferReader(body),
        read_options=read_options,
        parse_options=pa_json.ParseOptions(newlines_in_values=multiline),
    )
    try:
        table.validate(full=True)
    except pa.ArrowInvalid:
        table = pa_json.read_json(
            pa.BufferReader(body),
            read_options=read_options,
            parse_options=pa_json.ParseOptions(
                newlines_in_values=multiline, explicit_schema=table.schema
            ),
        )
        try:
            table.validate(full=True)
        except pa.ArrowInvalid:
            columns = [[_fill_null_lists(c) for c in col.chunks] for col in table.columns]
            table = pa.Table.from_arrays(
                [pa.chunked_array(c, f.type) for c, f in zip(columns, table.schema, strict=True)],
                schema=table.schema,
            )
            table.validate(full=True)
    return table


def _fill_null_lists(array: pa.Array) -> pa.Array:
    """``array`` with the values of each ``list<null>`` in it as long as its offsets say."""
    kind = array.type
    if pa.types.is_struct(kind):
        children = [_fill_null_lists(array.field(i)) for i in range(kind.num_fields)]
        return pa.StructArray.from_arrays(children, fields=list(kind), mask=array.is_null())
    if pa.types.is_list(kind):
        offsets = array.offsets
        if pa.types.is_null(kind.value_type):
            values = pa.nulls(offsets[-1].as_py())
        else:
            values = _fill_null_lists(array.values)
        return pa.ListArray.from_arrays(offsets, values, type=kind, mask=array.is_null())
    return array


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
