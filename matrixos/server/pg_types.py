"""What crosses the PostgreSQL wire: Arrow types as type OIDs, result rows as the values the
wire encodes, bound parameters as literals, and MatrixOS errors as ErrorResponse fields.

Example:
    >>> import pyarrow as pa
    >>> oid_for(pa.int32()), oid_for(pa.string()), oid_for(pa.list_(pa.int64()))
    (23, 25, 1016)
    >>> bind_parameters("SELECT * FROM t WHERE a = $1 AND b = $2", ["7", "x'y"], [20, None])
    "SELECT * FROM t WHERE a = 7 AND b = 'x''y'"
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from pg_mimic.arrays import ARRAY_OID
from pg_mimic.errors import PgError
from sqlglot import exp

from matrixos.errors import MatrixOSError, SQLError

# PostgreSQL's type OIDs (pg_type.oid), for the types results and parameters carry.
BOOL, BYTEA, INT8, INT2, INT4, TEXT, JSON, FLOAT4, FLOAT8 = 16, 17, 20, 21, 23, 25, 114, 700, 701
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, NUMERIC, UUID, JSONB = (
    1082,
    1083,
    1114,
    1184,
    1186,
    1700,
    2950,
    3802,
)
# Parameters of these types become typed literals: the statement means what the client said.
_INTEGER_PARAMS = {INT2, INT4, INT8, 26}  # 26: oid
_NUMBER_PARAMS = {FLOAT4, FLOAT8, NUMERIC}
_CAST_PARAMS = {
    DATE: "DATE",
    TIME: "TIME",
    TIMESTAMP: "TIMESTAMP",
    TIMESTAMPTZ: "TIMESTAMPTZ",
    INTERVAL: "INTERVAL",
    UUID: "UUID",
    JSON: "JSON",
    JSONB: "JSON",
    BYTEA: "BLOB",
}
_TYPE_NAMES = {
    BOOL: "boolean",
    BYTEA: "bytea",
    INT2: "smallint",
    INT4: "integer",
    INT8: "bigint",
    TEXT: "text",
    JSON: "json",
    FLOAT4: "real",
    FLOAT8: "double precision",
    DATE: "date",
    TIME: "time without time zone",
    TIMESTAMP: "timestamp without time zone",
    TIMESTAMPTZ: "timestamp with time zone",
    INTERVAL: "interval",
    NUMERIC: "numeric",
    UUID: "uuid",
}


def oid_for(t: pa.DataType, sql_type: str | None = None) -> int:
    """The PostgreSQL type OID a column of Arrow type ``t`` is sent as (text for anything
    without a PostgreSQL equivalent; nested structs and maps as json). ``sql_type``: its
    DuckDB type name when known (``Result.sql_types``), for what Arrow holds as strings: UUID
    and JSON go out as uuid and json (arrays of them as uuid[] and json[]). A list of lists
    is a multi-dimensional array of its innermost type."""
    if sql_type in _SQL_STRING_OIDS and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return _SQL_STRING_OIDS[sql_type]
    if pa.types.is_boolean(t):
        return BOOL
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return INT2
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return INT4
    if pa.types.is_int64(t) or pa.types.is_uint32(t):
        return INT8
    if pa.types.is_uint64(t) or pa.types.is_decimal(t):
        return NUMERIC
    if pa.types.is_float16(t) or pa.types.is_float32(t):
        return FLOAT4
    if pa.types.is_float64(t):
        return FLOAT8
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return BYTEA
    if pa.types.is_date(t):
        return DATE
    if pa.types.is_time(t):
        return TIME
    if pa.types.is_timestamp(t):
        return TIMESTAMPTZ if t.tz else TIMESTAMP
    if pa.types.is_duration(t) or pa.types.is_interval(t):
        return INTERVAL
    if _is_list(t):
        inner = t.value_type
        while _is_list(inner):  # PostgreSQL's arrays of any dimension share one type
            inner = inner.value_type
        element = oid_for(inner, _ARRAY_SUFFIX.sub("", sql_type or "") or None)
        if element == JSON and (pa.types.is_struct(inner) or pa.types.is_map(inner)):
            return JSON  # lists of lists of structs: one JSON document
        return ARRAY_OID.get(element, JSON)
    if pa.types.is_struct(t) or pa.types.is_map(t):
        return JSON
    if pa.types.is_dictionary(t):
        return oid_for(t.value_type)
    return TEXT


def type_name(oid: int) -> str:
    """The SQL name of a type OID, as ``format_type`` shows it (``information_schema``)."""
    if oid in _TYPE_NAMES:
        return _TYPE_NAMES[oid]
    element = next((e for e, a in ARRAY_OID.items() if a == oid), None)
    return f"{_TYPE_NAMES.get(element, 'text')}[]" if element is not None else "text"


@dataclass(frozen=True)
class PgInterval:
    """An interval as PostgreSQL keeps it: months, days and microseconds, each signed (Arrow's
    ``month_day_nano_interval``; a month is not a number of days). ``str()`` is its text
    output (IntervalStyle ``postgres``)."""

    months: int
    days: int
    micros: int

    def __str__(self) -> str:
        years = int(self.months / 12)
        parts = [
            f"{n} {unit}{'' if n == 1 else 's'}"
            for n, unit in ((years, "year"), (self.months - 12 * years, "mon"), (self.days, "day"))
            if n
        ]
        if self.micros or not parts:
            sign = "-" if self.micros < 0 else "+" if any(p.startswith("-") for p in parts) else ""
            seconds, micros = divmod(abs(self.micros), 1_000_000)
            hours, seconds = divmod(seconds, 3600)
            text = f"{sign}{hours:02d}:{seconds // 60:02d}:{seconds % 60:02d}"
            parts.append(text + (f".{micros:06d}".rstrip("0") if micros else ""))
        return " ".join(parts)


@dataclass(frozen=True)
class PgInfinity:
    """A date or timestamp at ``infinity`` (``positive``) or ``-infinity``: DuckDB's and
    PostgreSQL's, which no Python date can hold."""

    positive: bool

    def __str__(self) -> str:
        return "infinity" if self.positive else "-infinity"


_SQL_STRING_OIDS = {"UUID": UUID, "JSON": JSON}
_ARRAY_SUFFIX = re.compile(r"(\[\d*\])+$")  # DuckDB's INTEGER[][], UUID[3]


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def rows(schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``batches`` as tuples of the Python values the wire encodes (see
    ``column_values``)."""
    for batch in batches:
        cols = [column_values(c) for c in batch.columns]
        yield from zip(*cols, strict=True)


def column_values(arr: pa.Array) -> list[Any]:
    """An Arrow column as the Python values the wire encodes: structs and maps as JSON
    documents, uint64 as ``Decimal``, month/day/nano intervals as ``PgInterval`` (in lists
    too), dates and timestamps at +-infinity as ``PgInfinity``."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_timestamp(t) or pa.types.is_date32(t):
        found = with_infinities(arr)
        if found is not None:
            return found
    if isinstance(arr, pa.ListArray | pa.LargeListArray):
        nested = _lists_with_infinities(arr)
        if nested is not None:
            return nested
    if (pa.types.is_timestamp(t) or pa.types.is_time64(t)) and t.unit == "ns":
        # PostgreSQL keeps microseconds (and pandas' nanosecond Timestamp is no datetime)
        us = pa.timestamp("us", t.tz) if pa.types.is_timestamp(t) else pa.time64("us")
        arr = arr.cast(us, safe=False)
    values = arr.to_pylist()
    if oid_for(t) == JSON:
        return [None if v is None else json_text(v) for v in values]
    if pa.types.is_uint64(t):
        return [None if v is None else Decimal(v) for v in values]
    if _holds_intervals(t):
        return [_interval_of(v) for v in values]
    return values


def _holds_intervals(t: pa.DataType) -> bool:
    if pa.types.is_interval(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _holds_intervals(t.value_type)
    return False


def _interval_of(v: Any) -> Any:
    """Arrow's ``MonthDayNano`` (in lists too) as a ``PgInterval`` (nanoseconds truncated)."""
    if isinstance(v, list):
        return [_interval_of(x) for x in v]
    if v is None:
        return None
    nanos = int(v.nanoseconds)
    micros = nanos // 1000 if nanos >= 0 else -(-nanos // 1000)
    return PgInterval(int(v.months), int(v.days), micros)


# What Python's dates hold (years 1 to 9999), in days and in seconds since 1970: DuckDB's
# infinities (int max and -max) lie beyond.
_DAYS = ((date(1, 1, 1) - date(1970, 1, 1)).days, (date(9999, 12, 31) - date(1970, 1, 1)).days)
_SECONDS = (-62135596800, 253402300799)
_TICKS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def with_infinities(arr: pa.Array) -> list[Any] | None:
    """The values of a date or timestamp column holding +-infinity (None: it holds none)."""
    t = arr.type
    if pa.types.is_date32(t):
        ticks, (bottom, top) = arr.view(pa.int32()), _DAYS
    else:
        per = _TICKS[t.unit]
        # (int64 nanoseconds reach years 1677 to 2262 only; their infinities are +-(2^63 - 1))
        bottom, top = max(_SECONDS[0] * per, 2 - 2**63), min(_SECONDS[1] * per, 2**63 - 2)
        ticks = arr.view(pa.int64())
    high, low = pc.greater(ticks, top), pc.less(ticks, bottom)
    if not (pc.any(high).as_py() or pc.any(low).as_py()):
        return None
    values = pc.if_else(pc.or_(high, low), pa.scalar(None, t), arr).to_pylist()
    for mask, positive in ((high, True), (low, False)):
        for i in np.flatnonzero(mask.fill_null(False).to_numpy(zero_copy_only=False)):
            values[i] = PgInfinity(positive)
    return values


def _lists_with_infinities(arr: pa.ListArray | pa.LargeListArray) -> list[Any] | None:
    """The values of a list column (of any depth) of dates or timestamps holding +-infinity,
    as nested lists with ``PgInfinity`` inside (None: it holds none)."""
    levels: list[pa.ListArray | pa.LargeListArray] = []
    inner: pa.Array = arr
    while isinstance(inner, pa.ListArray | pa.LargeListArray):
        levels.append(inner)
        inner = inner.values
    if not (pa.types.is_timestamp(inner.type) or pa.types.is_date32(inner.type)):
        return None
    found = with_infinities(inner)
    if found is None:
        return None
    # The same lists around each value's position, then each position replaced by its value.
    shape: pa.Array = pa.array(np.arange(len(inner)), pa.int64())
    for level in reversed(levels):
        shape = type(level).from_arrays(level.offsets, shape, mask=level.is_null())
    return [_at(v, found) for v in shape.to_pylist()]


def _at(v: Any, found: list[Any]) -> Any:
    if isinstance(v, list):
        return [_at(x, found) for x in v]
    return None if v is None else found[v]


def json_text(v: Any) -> str:
    """A struct or map value (as Arrow's ``to_pylist`` gives it) as a JSON document."""
    if isinstance(v, list) and v and isinstance(v[0], tuple):  # a map's (key, value) pairs
        v = dict(v)
    return json.dumps(v, default=str)


# -- parameters ------------------------------------------------------------------------------
def bind_parameters(sql: str, params: Sequence[Any], param_oids: Sequence[int | None]) -> str:
    """``sql`` (PostgreSQL dialect) with ``$n`` replaced by ``params[n-1]`` as literals.

    Never pasted as text: each value becomes a literal node of the parsed statement (a string,
    a checked number, a boolean, or a cast of a string to the declared type), so a parameter
    can only ever be a value.

    Raises:
        SQLError: a missing parameter, or a value that is not of its declared type.
    """
    if not params and "$" not in sql:
        return sql
    try:
        trees = sqlglot.parse(sql, dialect="postgres")
    except sqlglot.errors.ParseError:
        return sql  # the engine reports where it fails to parse
    out = []
    for tree in trees:
        if tree is None:
            continue
        if isinstance(tree, exp.Command) and str(tree.this).upper() == "EXPLAIN":
            # sqlglot keeps EXPLAIN as text: bind the statement it explains
            rest = tree.expression.name if isinstance(tree.expression, exp.Expr) else ""
            head = _EXPLAIN_OPTIONS.match(rest)
            cut = head.end() if head else 0
            out.append(f"EXPLAIN {rest[:cut]}{bind_parameters(rest[cut:], params, param_oids)}")
            continue
        for node in list(tree.find_all(exp.Parameter)):
            index = _param_index(node)
            if index is None:
                continue
            if index > len(params):
                raise SQLError(
                    f"there is no parameter ${index}",
                    sql=sql,
                    sqlstate="42P02",
                    hint=f"the statement was bound with {len(params)} parameter(s)",
                )
            oid = param_oids[index - 1] if index <= len(param_oids) else None
            node.replace(literal(params[index - 1], oid))
        out.append(tree.sql(dialect="postgres"))
    return "; ".join(out)


# EXPLAIN's options before the statement: ``(ANALYZE, FORMAT JSON)`` or ``ANALYZE VERBOSE``
_EXPLAIN_OPTIONS = re.compile(r"\s*(?:\([^()]*\)\s*|(?:(?:ANALY[SZ]E|VERBOSE)\b\s*)+)?", re.I)


def _param_index(node: exp.Parameter) -> int | None:
    inner = node.this
    text = inner.name if isinstance(inner, exp.Expr) else str(inner)
    return int(text) if text.isdigit() else None


def literal(value: Any, oid: int | None) -> exp.Expr:
    """A parameter's value (the wire's text, or a list for an array) as a literal node."""
    if value is None:
        return exp.null()
    if isinstance(value, list):
        return exp.Array(expressions=[literal(v, _element(oid)) for v in value])
    text = str(value)
    if oid in _INTEGER_PARAMS:
        try:
            return exp.Literal.number(int(text))
        except ValueError:
            raise _bad_param(text, oid) from None
    if oid in _NUMBER_PARAMS:
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise _bad_param(text, oid) from None
        if not number.is_finite():
            return exp.cast(exp.Literal.string(text), "DOUBLE")
        return exp.Literal.number(format(number, "f"))
    if oid == BOOL:
        lowered = text.strip().lower()
        if lowered in ("t", "true", "1", "on", "yes", "y"):
            return exp.true()
        if lowered in ("f", "false", "0", "off", "no", "n"):
            return exp.false()
        raise _bad_param(text, oid)
    if oid in _CAST_PARAMS:
        if oid == BYTEA and text.startswith("\\x"):
            return exp.Unhex(this=exp.Literal.string(text[2:]))
        return exp.cast(exp.Literal.string(text), _CAST_PARAMS[oid])
    return exp.Literal.string(text)


def _element(oid: int | None) -> int | None:
    return next((e for e, a in ARRAY_OID.items() if a == oid), None)


def _bad_param(text: str, oid: int) -> SQLError:
    shown = text if len(text) <= 40 else text[:40] + "…"
    return SQLError(
        f"invalid input syntax for type {type_name(oid)}: {shown!r}",
        sqlstate="22P02",
        hint="the parameter's value does not match the type the client declared for it",
    )


# -- errors ----------------------------------------------------------------------------------
def pg_error(e: MatrixOSError, sql: str | None = None) -> PgError:
    """``e`` as an ErrorResponse: its SQLSTATE, message, hint and, for SQL errors with a
    line and column, the 1-based character position in ``sql``."""
    fields: dict[str, str] = {}
    if e.hint:
        fields["H"] = e.hint
    if isinstance(e, SQLError) and e.line is not None and e.col is not None and sql:
        fields["P"] = str(position(sql, e.line, e.col))
    message = e.message.split("\n\nLINE ", 1)[0]  # DuckDB's excerpt: the position says it
    return PgError(e.sqlstate, message, **fields)


def position(sql: str, line: int, col: int) -> int:
    """The 1-based character offset of ``line``/``col`` (both 1-based) in ``sql``."""
    lines = sql.split("\n")
    before = sum(len(x) + 1 for x in lines[: max(line - 1, 0)])
    return min(before + max(col, 1), max(len(sql), 1))


def parameter_oids(
    sql: str,
    declared: Sequence[int | None],
    column_type: Callable[[exp.Column], pa.DataType | None],
) -> list[int | None]:
    """The type of every ``$n`` in ``sql``: as the client declared it, else inferred the way
    PostgreSQL would for the common cases (compared with, assigned to or inserted into a
    column: that column's type, ``column_type`` says it; a LIMIT/OFFSET: bigint), else text.

    Example:
        >>> parameter_oids("SELECT * FROM t WHERE a = $1 LIMIT $2", [], lambda c: pa.int32())
        [23, 20]
    """
    try:
        trees = [t for t in sqlglot.parse(sql, dialect="postgres") if t is not None]
    except sqlglot.errors.ParseError:
        return list(declared)
    found: dict[int, int] = {}
    for tree in trees:
        for node in tree.find_all(exp.Parameter):
            index = _param_index(node)
            if index is not None and index not in found:
                found[index] = _inferred(node, column_type)
    count = max([len(declared), *found])
    return [
        declared[i] if i < len(declared) and declared[i] else found.get(i + 1, TEXT)
        for i in range(count)
    ]


def _inferred(node: exp.Parameter, column_type: Callable[[exp.Column], pa.DataType | None]) -> int:
    parent = node.parent
    if isinstance(parent, exp.Limit | exp.Offset):
        return INT8
    if isinstance(parent, exp.Cast) and parent.to is not None:
        return _SQL_TYPE_OIDS.get(parent.to.this, TEXT)
    other: exp.Expr | None = None
    if isinstance(parent, exp.Binary):
        other = parent.expression if parent.this is node else parent.this
    elif isinstance(parent, exp.In | exp.Between):
        other = parent.this
    if isinstance(other, exp.Column):
        t = column_type(other)
        if t is not None:
            return oid_for(t)
    return TEXT


_SQL_TYPE_OIDS = {
    exp.DataType.Type.BOOLEAN: BOOL,
    exp.DataType.Type.SMALLINT: INT2,
    exp.DataType.Type.INT: INT4,
    exp.DataType.Type.BIGINT: INT8,
    exp.DataType.Type.FLOAT: FLOAT4,
    exp.DataType.Type.DOUBLE: FLOAT8,
    exp.DataType.Type.DECIMAL: NUMERIC,
    exp.DataType.Type.DATE: DATE,
    exp.DataType.Type.TIMESTAMP: TIMESTAMP,
    exp.DataType.Type.TIMESTAMPTZ: TIMESTAMPTZ,
    exp.DataType.Type.UUID: UUID,
    exp.DataType.Type.JSON: JSON,
    exp.DataType.Type.JSONB: JSONB,
}
