"""InfluxDB line protocol → Arrow tables, one per measurement.

``measurement[,tag=value…] field=value[,field=value…] [timestamp]`` — the syntax of InfluxDB's
reference (escapes ``\\,`` ``\\=`` ``\\ `` in names and tag values, double-quoted string fields,
``i``/``u`` suffixes for integers, ``t``/``true``/``f``/``false`` booleans).

Three parsers give the same result. A body whose lines all have its first line's shape (the
same measurement, tag keys and field keys in the same order, no quotes, escapes or comments:
what a sensor or Telegraf sends) is read by Arrow's CSV reader in one pass, the separators
turned into commas (``_uniform``; about 3x the general path). Otherwise a vectorised parser
(pyarrow compute kernels over the whole body: split, pivot and cast column by column, no Python
object per value) takes every line without quotes or backslashes, and a plain per-line scanner
takes the rest and is the one that words the errors (line, column, field). Why not the PyPI
parser: ``line-protocol-parser`` returns a dict per line (Python objects per value), about as
slow as the scanner here, and its errors name no column.

Example:
    >>> batch = parse(b"cpu,host=a usage=0.5,n=3i 1700000000000000000\\n")
    >>> batch.tables["cpu"].to_pylist()
    [{'host': 'a', 'usage': 0.5, 'n': 3, 'time': 1700000000000000000, '_line': 1}]
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from matrixos.errors import PointsRejected

# Names a tag or field may not take: the table's own columns.
RESERVED = ("time", "day", "_line")
LINE = "_line"  # the source line of each row (error messages, last-write-wins order)
PRECISIONS = {
    "ns": 1,
    "n": 1,
    "nanosecond": 1,
    "us": 1_000,
    "u": 1_000,
    "µs": 1_000,
    "microsecond": 1_000,
    "ms": 1_000_000,
    "millisecond": 1_000_000,
    "s": 1_000_000_000,
    "second": 1_000_000_000,
}
_TRUE = ("t", "T", "true", "True", "TRUE")
_FALSE = ("f", "F", "false", "False", "FALSE")
_TYPE_NAMES = {"f": "float", "i": "integer", "u": "unsigned", "s": "string", "b": "boolean"}
_ARROW = {"f": pa.float64(), "i": pa.int64(), "u": pa.int64(), "s": pa.string(), "b": pa.bool_()}
_INT64_MAX = 2**63 - 1


@dataclass
class Batch:
    """Parsed points: ``tables`` maps a measurement to its rows (tag columns as strings, field
    columns typed, ``time`` as int64 nanoseconds since the epoch, ``_line`` the source line);
    ``rejected`` lists the refused lines (``line``, ``column``, ``field``, ``message``)."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, list[str]] = field(default_factory=dict)  # measurement → its tag columns

    @property
    def points(self) -> int:
        return sum(t.num_rows for t in self.tables.values())


def precision_factor(precision: str | None) -> int:
    """Nanoseconds per unit of ``precision`` (``ns`` when not given)."""
    if not precision:
        return 1
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise PointsRejected(
            f"unknown precision {precision!r}",
            path="precision",
            rejected=[],
            hint="use ns, us, ms or s",
        ) from None


def parse(
    body: bytes | str,
    precision: str | None = "ns",
    *,
    now_ns: int | None = None,
    source: str = "line protocol",
    partial: bool = False,
) -> Batch:
    """Parse a line-protocol body.

    ``precision``: the unit of the timestamps (``ns``, ``us``, ``ms``, ``s``); a line without
    one gets ``now_ns`` (the time of the call). ``partial=False`` refuses the whole body when a
    line is bad (``PointsRejected`` listing every bad line); ``partial=True`` keeps the good
    lines and lists the bad ones in ``Batch.rejected``. A field whose type differs between
    lines (``x=1i`` then ``x="a"``) is refused on the later lines, naming them and the field.
    """
    factor = precision_factor(precision)
    now = time.time_ns() if now_ns is None else now_ns
    uniform = _uniform(body.encode() if isinstance(body, str) else body, factor, now)
    if uniform is not None:
        return uniform
    text = body.decode("utf-8", errors="strict") if isinstance(body, bytes) else body
    raw = pc.list_flatten(pc.split_pattern(pa.array([text], pa.string()), "\n"))
    raw = pc.utf8_rtrim(raw, "\r")
    n = len(raw)
    numbers = np.arange(1, n + 1, dtype=np.int64)
    blank = pc.or_(pc.equal(pc.utf8_trim_whitespace(raw), ""), pc.starts_with(raw, "#"))
    keep = pc.invert(blank).to_numpy(zero_copy_only=False)
    lines = raw.filter(pa.array(keep))
    numbers = numbers[keep]
    special = pc.or_(pc.match_substring(lines, '"'), pc.match_substring(lines, "\\"))
    special_np = special.to_numpy(zero_copy_only=False)
    batch = Batch()
    slow = list(np.flatnonzero(special_np))
    fast = np.flatnonzero(~special_np)
    parts: list[tuple[str, pa.Table]] = []
    if len(fast):
        tables, bad = _fast(lines.take(pa.array(fast)), numbers[fast], factor, now)
        parts.extend(tables)
        slow.extend(fast[bad].tolist())
    if slow:
        slow.sort()
        rows: list[tuple[int, str, dict[str, str], dict[str, tuple[str, Any]], int]] = []
        for i in slow:
            line_no = int(numbers[i])
            try:
                m, tags, fields, ts = scan_line(lines[i].as_py(), line_no)
            except _LineError as e:
                batch.rejected.append(e.entry)
                continue
            rows.append((line_no, m, tags, fields, now if ts is None else ts * factor))
        parts.extend(_slow_tables(rows, batch.rejected))
    _assemble(parts, batch)
    batch.rejected.sort(key=lambda r: int(r["line"]))
    for r in batch.rejected:
        if r["field"] and r["column"] == 1:  # a type conflict: point at the field's value
            text = lines[int(np.searchsorted(numbers, r["line"]))].as_py()
            at = _field_column(text, r["field"])
            if at:
                r["column"] = at
                r["message"] = r["message"].replace(", column 1,", f", column {at},", 1)
    if batch.rejected and not partial:
        first = batch.rejected[0]
        raise PointsRejected(
            f"{len(batch.rejected)} line(s) refused, nothing written; first: {first['message']}",
            path=source,
            rejected=batch.rejected,
            hint="fix the lines listed, or send accept_partial=true to keep the good lines",
        )
    return batch


# -- bodies of one shape: Arrow's CSV reader ------------------------------------------------
# Separators, and the bytes that send a body to the general parser (quotes, escapes, carriage
# returns, comments): one ``translate`` keeps them, in order, for the shape check.
_SEPARATORS = b', =\n"\\\r#'
_NOT_SEPARATORS = bytes(b for b in range(256) if b not in _SEPARATORS)
_TO_COMMAS = bytes.maketrans(b" =", b",,")
# measurement, tags; fields; an optional timestamp: the separators of a line, in order
_SHAPE = re.compile(rb"((?:,=)*) =((?:,=)*)( ?)")


def _uniform(data: bytes, factor: int, now: int) -> Batch | None:
    """The points of a body whose every line has the shape of its first (``None`` for any
    other body: the general parser takes it and words its errors). Checked, not assumed: the
    separators of every line must be the first line's (one ``translate`` over the body; a
    quote, backslash, carriage return, ``#`` or blank line anywhere fails it), the measurement
    and each key column the same on every line, no value empty, every value of a field of the
    type of the field, every timestamp an integer."""
    data = data.rstrip(b"\n")
    end = data.find(b"\n")
    first = data if end < 0 else data[:end]
    shape = first.translate(None, _NOT_SEPARATORS)
    found = _SHAPE.fullmatch(shape)
    if found is None:
        return None
    separators = data.translate(None, _NOT_SEPARATORS)
    n = (len(separators) + 1) // (len(shape) + 1)
    if separators != b"\n".join([shape] * n):
        return None
    try:
        head, fieldset, *_ = first.decode().split(" ")
    except UnicodeDecodeError:
        return None
    measurement, *tag_items = head.split(",")
    tag_keys = [t.split("=", 1)[0] for t in tag_items]
    field_keys = [f.split("=", 1)[0] for f in fieldset.split(",")]
    keys = tag_keys + field_keys
    if not measurement or not all(keys) or len(set(keys)) < len(keys):
        return None
    if any(k in RESERVED for k in keys):
        return None
    has_ts = bool(found.group(3))
    width = 1 + 2 * len(keys) + has_ts
    names = [f"c{i}" for i in range(width)]
    types = {c: pa.string() for c in names}
    if has_ts:
        types[names[-1]] = pa.int64()
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data.translate(_TO_COMMAS)),
            read_options=pacsv.ReadOptions(column_names=names, block_size=4 << 20),
            parse_options=pacsv.ParseOptions(
                quote_char=False, double_quote=False, escape_char=False, ignore_empty_lines=False
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != n:
        return None
    constant = [(0, measurement)] + [(1 + 2 * i, k) for i, k in enumerate(keys)]
    for i, expected in constant:
        if not pc.all(pc.equal(table.column(i), expected)).as_py():
            return None
    columns: dict[str, pa.ChunkedArray] = {}
    for i, k in enumerate(keys):
        values = table.column(2 + 2 * i)
        if pc.min(pc.binary_length(values)).as_py() == 0:
            return None
        if i < len(tag_keys):
            columns[k] = values
            continue
        typed, bad = _typed(values)
        if bad.size:
            return None
        columns[k] = typed
    if has_ts:
        stamps = table.column(width - 1)
        if stamps.null_count:
            return None
        ts = stamps.to_numpy()
        if factor > 1:
            if np.any(np.abs(ts) > _INT64_MAX // factor):
                return None
            ts = ts * factor
    else:
        ts = np.full(n, now, dtype=np.int64)
    columns["time"] = pa.array(ts, pa.int64())
    columns[LINE] = pa.array(np.arange(1, n + 1, dtype=np.int32))
    return Batch(tables={measurement: pa.table(columns)}, tags={measurement: tag_keys})


# -- the vectorised parser -------------------------------------------------------------------
def _fast(
    lines: pa.Array, numbers: np.ndarray, factor: int, now: int
) -> tuple[list[tuple[str, pa.Table]], np.ndarray]:
    """Tables of the lines it can take and the positions (in ``lines``) of those it cannot
    (left to the scanner, which parses them or words their error)."""
    n = len(lines)
    bad = np.zeros(n, dtype=bool)
    count = pc.list_value_length(pc.split_pattern(lines, " ")).to_numpy(zero_copy_only=False)
    bad |= (count < 2) | (count > 3)
    # Two sentinel sections make every line at least three long (the real ones come first).
    sections = pc.split_pattern(pc.binary_join_element_wise(lines, " \x00 \x00", ""), " ")
    head = pc.list_element(sections, 0)
    fieldset = pc.list_element(sections, 1)
    stamp = pc.list_element(sections, 2)
    has_ts = count == 3
    ts_ok = pc.match_substring_regex(stamp, r"^-?\d{1,19}$").to_numpy(zero_copy_only=False)
    bad |= has_ts & ~ts_ok
    # A series sends the same measurement and tags on every line: parse each distinct head
    # once (a few thousand per body, not one per line) and map the lines to them.
    enc = pc.dictionary_encode(head)
    series = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    heads = enc.dictionary
    head_bad = np.zeros(len(heads), dtype=bool)
    head_items = pc.split_pattern(heads, ",")
    measurement = pc.list_element(head_items, 0)
    head_bad |= pc.equal(measurement, "").to_numpy(zero_copy_only=False)
    tags = _pairs(pc.list_slice(head_items, 1), head_bad)
    if len(tags[1]):
        reserved = pc.is_in(tags[1], pa.array(RESERVED)).to_numpy(zero_copy_only=False)
        head_bad[tags[0][reserved]] = True
    bad |= head_bad[series]
    fields = _pairs(pc.split_pattern(fieldset, ","), bad)
    if fields[0].size:
        bad |= np.bincount(fields[0], minlength=n) == 0
    else:
        bad[:] = True
    if len(fields[1]):
        reserved = pc.is_in(fields[1], pa.array(RESERVED)).to_numpy(zero_copy_only=False)
        bad[fields[0][reserved]] = True
    ts = np.full(n, now, dtype=np.int64)
    if has_ts.any():
        valid = has_ts & ~bad
        stamps = pc.cast(stamp.filter(pa.array(valid)), pa.int64()).to_numpy()
        scaled = stamps * factor
        if factor > 1 and np.any(np.abs(stamps) > _INT64_MAX // factor):
            overflow = np.flatnonzero(valid)[np.abs(stamps) > _INT64_MAX // factor]
            bad[overflow] = True
        ts[valid] = scaled
    out: list[tuple[str, pa.Table]] = []
    line_m = measurement.take(pa.array(series))
    names = pc.unique(line_m.filter(pa.array(~bad))).to_pylist()
    for m in names:
        rows = np.flatnonzero(pc.equal(line_m, m).to_numpy(zero_copy_only=False) & ~bad)
        table, wrong = _pivot_table(rows, tags, fields, ts, numbers, series)
        if wrong.size:
            bad[wrong] = True  # a value the casts refused: the scanner words the error
            rows = rows[~np.isin(rows, wrong)]
            if not rows.size:
                continue
            table, wrong = _pivot_table(rows, tags, fields, ts, numbers, series)
            bad[wrong] = True
        out.append((m, table))
    return out, np.flatnonzero(bad)


def _pairs(items: pa.Array, bad: np.ndarray) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """``k=v`` items of each line as (line position, key, value); lines with an item that is
    not ``k=v`` with a non-empty key and value are marked bad."""
    parent = pc.list_parent_indices(items).to_numpy(zero_copy_only=False).astype(np.int64)
    kv = pc.split_pattern(pc.list_flatten(items), "=", max_splits=1)
    ok = pc.equal(pc.list_value_length(kv), 2).to_numpy(zero_copy_only=False)
    bad[parent[~ok]] = True
    kv = kv.filter(pa.array(ok))
    parent = parent[ok]
    keys = pc.list_element(kv, 0)
    values = pc.list_element(kv, 1)
    empty = pc.or_(pc.equal(keys, ""), pc.equal(values, "")).to_numpy(zero_copy_only=False)
    bad[parent[empty]] = True
    return parent, keys, values


def _pivot_table(
    rows: np.ndarray,
    tags: tuple[np.ndarray, pa.Array, pa.Array],
    fields: tuple[np.ndarray, pa.Array, pa.Array],
    ts: np.ndarray,
    numbers: np.ndarray,
    series: np.ndarray,
) -> tuple[pa.Table, np.ndarray]:
    """One measurement's rows (``rows``: line positions) as a table, and the positions of
    lines with a field value no type accepts. ``tags`` are items of the distinct heads,
    ``series`` each line's head."""
    columns: dict[str, pa.Array] = {}
    heads = np.unique(series[rows])
    if heads.size:
        take = pa.array(np.searchsorted(heads, series[rows]))
        for name, col in _pivot(heads, *tags).items():
            columns[name] = col.take(take)
    wrong: list[np.ndarray] = []
    for name, col in _pivot(rows, *fields).items():
        if name in columns:
            wrong.append(rows[pc.is_valid(col).to_numpy(zero_copy_only=False)])
            continue
        typed, bad_rows = _typed(col)
        if bad_rows.size:
            wrong.append(rows[bad_rows])
        columns[name] = typed
    columns["time"] = pa.array(ts[rows])
    columns[LINE] = pa.array(numbers[rows].astype(np.int32))
    bad = np.unique(np.concatenate(wrong)) if wrong else np.zeros(0, dtype=np.int64)
    return pa.table(columns), bad


def _pivot(rows: np.ndarray, parent: np.ndarray, keys: pa.Array, values: pa.Array) -> dict:
    """Key-value items pivoted to one column per key over the lines ``rows`` (null where a
    line lacks the key; the last of a key repeated on one line wins)."""
    n_all = int(rows.max()) + 1 if rows.size else 0
    where = np.full(max(n_all, int(parent.max()) + 1 if parent.size else 0), -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    row_of = where[parent] if parent.size else parent
    sel = np.flatnonzero(row_of >= 0)
    if not sel.size:
        return {}
    sel_arr = pa.array(sel)
    enc = pc.dictionary_encode(keys.take(sel_arr))
    codes = enc.indices.to_numpy(zero_copy_only=False)
    names = enc.dictionary.to_pylist()
    vals = values.take(sel_arr)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    out: dict[str, pa.Array] = {}
    target = row_of[sel]
    for j, name in enumerate(names):
        pick = order[bounds[j] : bounds[j + 1]]
        pos = np.full(len(rows), -1, dtype=np.int64)
        pos[target[pick]] = pick
        out[name] = vals.take(pa.array(pos, mask=pos < 0))
    return out


def _typed(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A field column of value texts as its type, and the positions of values that do not
    parse as that type (or whose type differs from the column's first value's)."""
    present = col.drop_null()
    if not len(present):
        return pa.nulls(len(col), pa.float64()), np.zeros(0, dtype=np.int64)
    kind = _kind(present[0].as_py())
    if kind == "x":  # the first value is invalid: the column takes the first valid one's type
        kinds = [_kind(t) for t in present.to_pylist()]
        kind = next((k for k in kinds if k != "x"), "x")
        if kind == "x":
            every = np.flatnonzero(pc.is_valid(col).to_numpy(zero_copy_only=False))
            return pa.nulls(len(col), pa.float64()), every
    try:
        if kind in ("i", "u"):
            if pc.all(pc.ends_with(col, kind)).as_py() is False:
                raise ValueError
            typed = pc.cast(pc.utf8_slice_codeunits(col, 0, -1), pa.int64())
            if kind == "u" and pc.any(pc.less(typed, 0)).as_py():
                raise ValueError
        elif kind == "b":
            if pc.all(pc.is_in(col, pa.array(_TRUE + _FALSE))).as_py() is False:
                raise ValueError
            typed = pc.if_else(
                pc.is_valid(col), pc.is_in(col, pa.array(_TRUE)), pa.scalar(None, pa.bool_())
            )
        else:
            if pc.any(pc.or_(pc.ends_with(col, "i"), pc.ends_with(col, "u"))).as_py():
                raise ValueError
            typed = pc.cast(col, pa.float64())
            if pc.any(pc.or_(pc.is_nan(typed), pc.is_inf(typed))).as_py():
                raise ValueError
        return typed, np.zeros(0, dtype=np.int64)
    except (ValueError, pa.ArrowInvalid):
        # Rare: the values at fault go to the scanner, which words their errors.
        texts = col.to_pylist()
        bad = [i for i, t in enumerate(texts) if t is not None and _kind(t) != kind]
        drop = set(bad)
        cleaned = pa.array([None if i in drop else t for i, t in enumerate(texts)], pa.string())
        typed, _ = _typed(cleaned) if cleaned.null_count < len(cleaned) else (None, None)
        if typed is None:
            typed = pa.nulls(len(col), _ARROW[kind])
        return typed, np.asarray(bad, dtype=np.int64)


def _kind(text: str) -> str:
    """The type a field value's text spells (``x`` when none)."""
    if text in _TRUE or text in _FALSE:
        return "b"
    if text.endswith("i") and _is_int(text[:-1]):
        return "i"
    if text.endswith("u") and text[:-1].isdigit():
        return "u" if int(text[:-1]) <= _INT64_MAX else "x"
    try:
        v = float(text)
    except ValueError:
        return "x"
    return "f" if v == v and v not in (float("inf"), float("-inf")) else "x"


def _is_int(text: str) -> bool:
    digits = text[1:] if text[:1] in "+-" else text
    return digits.isdigit() and -(2**63) <= int(text) <= _INT64_MAX


# -- the per-line scanner ---------------------------------------------------------------------
class _LineError(Exception):
    def __init__(self, line: int, column: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        where = f"line {line}, column {column}" + (f", field {field!r}" if field else "")
        self.entry: dict[str, Any] = {
            "line": line,
            "column": column,
            "field": field,
            "message": f"{where}: {message}",
        }


def scan_line(
    text: str, line: int
) -> tuple[str, dict[str, str], dict[str, tuple[str, Any]], int | None]:
    """One line as (measurement, tags, fields as (kind, value), timestamp or None)."""
    i = 0
    n = len(text)

    def name(stops: str, what: str) -> str:
        nonlocal i
        start = i
        out = []
        while i < n and text[i] not in stops:
            if text[i] == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            out.append(text[i])
            i += 1
        if not out:
            raise _LineError(line, start + 1, f"empty {what}")
        return "".join(out)

    measurement = name(", ", "measurement")
    tags: dict[str, str] = {}
    while i < n and text[i] == ",":
        i += 1
        col = i + 1
        key = name("=, ", "tag key")
        if i >= n or text[i] != "=":
            raise _LineError(line, i + 1, f"tag {key!r} has no '=value'", key)
        i += 1
        if key in RESERVED:
            raise _LineError(line, col, f"{key!r} is reserved and cannot be a tag", key)
        tags[key] = name(", ", f"value of tag {key!r}")
    if i >= n or text[i] != " ":
        raise _LineError(line, i + 1, "expected a space and the field set")
    i += 1
    fields: dict[str, tuple[str, Any]] = {}
    while True:
        col = i + 1
        key = name("= ,", "field key")
        if i >= n or text[i] != "=":
            raise _LineError(line, i + 1, f"field {key!r} has no '=value'", key)
        i += 1
        if key in RESERVED:
            raise _LineError(line, col, f"{key!r} is reserved and cannot be a field", key)
        if key in tags:
            raise _LineError(line, col, f"{key!r} is both a tag and a field", key)
        vcol = i + 1
        if i < n and text[i] == '"':
            i += 1
            out = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\':
                    i += 1
                out.append(text[i])
                i += 1
            if i >= n:
                raise _LineError(line, vcol, "string value has no closing quote", key)
            i += 1
            fields[key] = ("s", "".join(out))
        else:
            start = i
            while i < n and text[i] not in ", ":
                i += 1
            raw = text[start:i]
            kind = _kind(raw) if raw else "x"
            if kind == "x":
                raise _LineError(line, vcol, f"invalid field value {raw!r}", key)
            fields[key] = (kind, _value(kind, raw))
        if i < n and text[i] == ",":
            i += 1
            continue
        break
    ts: int | None = None
    if i < n:
        if text[i] != " ":
            raise _LineError(line, i + 1, "expected a space and the timestamp")
        i += 1
        raw = text[i:].strip()
        if raw:
            if not _is_int(raw):
                raise _LineError(line, i + 1, f"invalid timestamp {raw!r}")
            ts = int(raw)
    return measurement, tags, fields, ts


def _field_column(text: str, name: str) -> int | None:
    """The 1-based column of field ``name``'s value in a line (None when not found)."""
    try:
        _, _, _, _ = scan_line(text, 0)
    except _LineError:
        return None
    space = text.find(" ", text.find(" ") if "\\" not in text else 0)
    at = text.find(name + "=", max(space, 0))
    return at + len(name) + 2 if at >= 0 else None


def _value(kind: str, raw: str) -> Any:
    if kind == "b":
        return raw in _TRUE
    if kind in ("i", "u"):
        return int(raw[:-1])
    return float(raw)


def _slow_tables(
    rows: list[tuple[int, str, dict[str, str], dict[str, tuple[str, Any]], int]],
    rejected: list[dict[str, Any]],
) -> list[tuple[str, pa.Table]]:
    by_m: dict[str, list[tuple[int, str, dict[str, str], dict[str, tuple[str, Any]], int]]] = {}
    for r in rows:
        by_m.setdefault(r[1], []).append(r)
    out = []
    for m, group in by_m.items():
        kinds: dict[str, tuple[str, int]] = {}
        kept = []
        for r in group:
            line_no, fields = r[0], r[3]
            conflict = next(
                (
                    (k, kind)
                    for k, (kind, _) in fields.items()
                    if k in kinds and not _compatible(kinds[k][0], kind)
                ),
                None,
            )
            if conflict:
                k, kind = conflict
                rejected.append(_conflict(line_no, k, kind, kinds[k]))
                continue
            for k, (kind, _) in fields.items():
                kinds.setdefault(k, (kind, line_no))
            kept.append(r)
        if not kept:
            continue
        tag_names = list(dict.fromkeys(t for r in kept for t in r[2]))
        cols: dict[str, pa.Array] = {
            t: pa.array([r[2].get(t) for r in kept], pa.string()) for t in tag_names
        }
        for k, (kind, _) in kinds.items():
            cols[k] = pa.array([r[3][k][1] if k in r[3] else None for r in kept], _ARROW[kind])
        cols["time"] = pa.array([r[4] for r in kept], pa.int64())
        cols[LINE] = pa.array([r[0] for r in kept], pa.int32())
        out.append((m, pa.table(cols)))
    return out


def _compatible(a: str, b: str) -> bool:
    return a == b or {a, b} == {"i", "u"}


def _conflict(line: int, field: str, kind: str, first: tuple[str, int]) -> dict[str, Any]:
    return _LineError(
        line,
        1,
        f"field {field!r} is {_TYPE_NAMES.get(kind, kind)} here but "
        f"{_TYPE_NAMES.get(first[0], first[0])} on line {first[1]} (type conflict)",
        field,
    ).entry


def _assemble(parts: list[tuple[str, pa.Table]], batch: Batch) -> None:
    """Tables of the same measurement (fast and scanned lines) as one, in line order; a field
    whose type differs between them is refused on the later lines."""
    grouped: dict[str, list[pa.Table]] = {}
    for m, t in parts:
        grouped.setdefault(m, []).append(t)
    for m, tables in grouped.items():
        tag_cols = [
            c
            for t in tables
            for c, f in zip(t.column_names, t.schema, strict=True)
            if pa.types.is_string(f.type) and c not in ("time", LINE)
        ]
        if len(tables) > 1:
            tables = _drop_conflicts(tables, batch)
            table = pa.concat_tables(tables, promote_options="permissive")
            table = table.sort_by(LINE)
        else:
            table = tables[0]
        if table.num_rows:
            batch.tables[m] = table
            batch.tags[m] = list(dict.fromkeys(tag_cols))


def _drop_conflicts(tables: list[pa.Table], batch: Batch) -> list[pa.Table]:
    first: dict[str, tuple[pa.DataType, int]] = {}
    out = []
    for t in tables:
        lines = t.column(LINE).to_numpy()
        drop = np.zeros(t.num_rows, dtype=bool)
        clashing: dict[str, pa.DataType] = {}
        for name in t.column_names:
            if name in ("time", LINE):
                continue
            typ = t.schema.field(name).type
            col = t.column(name)
            present = pc.is_valid(col).to_numpy(zero_copy_only=False)
            if not present.any():
                continue
            seen = first.get(name)
            if seen is None:
                first[name] = (typ, int(lines[present][0]))
            elif seen[0] != typ:
                for ln in lines[present]:
                    batch.rejected.append(
                        _conflict(int(ln), name, _kind_of(typ), (_kind_of(seen[0]), seen[1]))
                    )
                drop |= present
                clashing[name] = seen[0]
        if drop.any():
            t = t.filter(pa.array(~drop))
        for name, typ in clashing.items():  # only nulls are left in it
            t = t.set_column(t.column_names.index(name), name, pa.nulls(t.num_rows, typ))
        out.append(t)
    return out


def _kind_of(t: pa.DataType) -> str:
    return {pa.float64(): "f", pa.int64(): "i", pa.string(): "s", pa.bool_(): "b"}.get(t, "f")


__all__ = ["LINE", "PRECISIONS", "RESERVED", "Batch", "parse", "precision_factor", "scan_line"]
