"""pyarrow's JSON reader, kept from what crashes it or comes back wrong from it (pyarrow 26).

Before a read, :func:`check_bytes` refuses bytes that are not UTF-8 and nesting more than
1000 levels deep (the parser recurses per level and segfaults at ~16,000), and
:func:`refuse_null_records` a record that is ``null`` (a segfault when one starts a parse
block, a row of nulls otherwise), naming the line and column where they can, at C speed
where they must run on every file. After it,
:func:`read_table` validates what pyarrow built and mends the invalid lists it builds.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from matrixos.connectors.file_source import LineIndex, decode, not_utf8
from matrixos.errors import IngestError

__all__ = ["check_bytes", "read_table", "refuse_null_records", "skip_ws"]

_JSON_WS = " \t\r\n"
_MAX_DEPTH = 1000
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_DEPTH_STEP = np.zeros(256, np.int8)
_DEPTH_STEP[list(b"[{")] = 1
_DEPTH_STEP[list(b"]}")] = -1
_DEPTH_CHUNK = 1 << 24
# Where ``null`` is a member's value or an array element, as JSON writers space them
# (Python's json.dumps first).
_NULL_INSIDE_A_RECORD = (b": null", b":null", b", null", b",null", b"[null", b"[ null")
# Where a null record can be in records one per line: at the start of a line, or after an
# object or array on the same line. (After a number or string, pyarrow refuses the line.)
_NULL_AFTER_A_RECORD = re.compile(rb"[\n}\]][ \t\r]*null")
_NULL_FIRST = re.compile(rb"[ \t\r\n]*null")


def check_bytes(path: str, body: bytes) -> None:
    """Raise :class:`IngestError` for bytes that are not UTF-8 or nest too deeply.

    ``body`` is the file without its byte order mark. JSON is UTF-8: pyarrow stores other
    bytes as they are, in strings and in member names (which fail when used).
    """
    bad_text = not_utf8(path, body)
    if bad_text is not None:
        raise bad_text
    _refuse_deep_nesting(path, body)


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


def refuse_null_records(path: str, body: bytes, *, one_per_line: bool) -> None:
    """Raise :class:`IngestError` naming a record that is ``null``, if one is.

    For records one after another: one per line (``one_per_line``) or pretty-printed. pyarrow
    reads a null record as a row of nulls, and crashes the process (a segfault) when one
    starts a block of its parse: the first record, or one ~1 MiB in. Counting ``null`` where
    it is a member's value or an array element rules out most files; with records one per
    line, so does finding no ``null`` at the start of a line or after an object or array
    (strings cannot hold a line break). The others are read with Python's ``json``.
    """
    unexplained = body.count(b"null")
    for inside in _NULL_INSIDE_A_RECORD:
        if not unexplained:
            return
        unexplained -= body.count(inside)
    if not unexplained:
        return
    if (
        one_per_line
        and _NULL_FIRST.match(body) is None
        and _NULL_AFTER_A_RECORD.search(body) is None
    ):
        return
    text = decode(body)
    decoder = json.JSONDecoder(strict=False)
    pos = skip_ws(text, 0)
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
        pos = skip_ws(text, end)


def read_table(body: bytes, *, block_size: int | None, multiline: bool) -> pa.Table:
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


def skip_ws(text: str, pos: int) -> int:
    """The offset of the first character at or after ``pos`` that is not JSON whitespace."""
    while pos < len(text) and text[pos] in _JSON_WS:
        pos += 1
    return pos
