"""Series tables: how parsed points become rows of a Delta table, and how a table's schema
grows with its data.

A series table has one string column per tag, one typed column per field, ``time``
(``timestamp[us, UTC]``: Delta's timestamps are microseconds, so nanosecond timestamps are cut
to the microsecond) and ``day`` (``date``, the partition column, ``time``'s UTC date). Its tag
columns are the table property ``matrixos.iot.tags`` (a JSON list); with ``time`` they are the
series key on which a later point replaces an earlier one (last write wins, field by field: a
field the later point does not carry keeps its earlier value, as InfluxDB does).

Example:
    >>> import pyarrow as pa
    >>> rows = to_rows(pa.table({"host": ["a"], "v": [1.5], "time": [86_400_000_000_123]}))
    >>> rows.column_names, str(rows.column("day")[0])
    (['host', 'v', 'time', 'day'], '1970-01-02')
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from matrixos.catalog.names import TableIdent
from matrixos.errors import PointsRejected
from matrixos.iot.lineproto import LINE
from matrixos.storage.tablestore import SORT_BY_PROPERTY

if TYPE_CHECKING:
    from matrixos.catalog.base import TableInfo

TIME = "time"
DAY = "day"
TAGS_PROPERTY = "matrixos.iot.tags"
SORT_PROPERTY = SORT_BY_PROPERTY  # "matrixos.sort_by", honoured by Delta compaction
TIME_TYPE = pa.timestamp("us", tz="UTC")
# Auto-compaction threshold of series tables (many small micro-batch files per day).
COMPACT_MIN_FILES = "64"


def table_properties(tags: Sequence[str]) -> dict[str, str]:
    """The properties a new series table gets."""
    return {
        **tag_properties(tags),
        "matrixos.autoCompact.minFiles": COMPACT_MIN_FILES,
        # A checkpoint every 100 commits keeps opening the log flat under continuous ingest
        # (delta-rs writes it after the commit); stated so nobody turns it off unknowingly.
        "delta.checkpointInterval": "100",
    }


def tag_properties(tags: Sequence[str]) -> dict[str, str]:
    """The properties that follow a series table's tag columns: the tags, and the sort order
    compaction writes files in (the series key: tags, then ``time``), so a query for one
    series reads few files and row groups.

    Example:
        >>> tag_properties(["host"])[SORT_PROPERTY]
        '["host", "time"]'
    """
    return {TAGS_PROPERTY: json.dumps(list(tags)), SORT_PROPERTY: json.dumps([*tags, TIME])}


def tags_of(properties: Mapping[str, str]) -> list[str]:
    raw = properties.get(TAGS_PROPERTY)
    return list(json.loads(raw)) if raw else []


def to_rows(points: pa.Table) -> pa.Table:
    """Parsed points (``time`` in int64 nanoseconds) as the table's rows: ``time`` as
    ``timestamp[us, UTC]``, ``day`` added, ``_line`` dropped."""
    if LINE in points.column_names:
        points = points.drop_columns([LINE])
    ns = points.column(TIME)
    if pa.types.is_timestamp(ns.type):
        ts = pc.cast(ns, TIME_TYPE)
    else:
        us = pc.divide(pc.subtract(ns, pc.if_else(pc.less(ns, 0), 999, 0)), 1000)
        ts = pc.cast(pc.cast(us, pa.int64()), TIME_TYPE)
    i = points.column_names.index(TIME)
    points = points.set_column(i, TIME, ts)
    return points.append_column(DAY, pc.cast(ts, pa.date32()))


def conform(
    rows: pa.Table,
    known: pa.Schema | None,
    tags: Sequence[str],
    *,
    lines: pa.Array | None = None,
    source: str = "points",
) -> pa.Table:
    """``rows`` with the types the table (``known``: its schema with the pending points') has
    for its columns: an integer field into a float column is widened; any other type change
    is a conflict, refused naming the first line and the field (nothing acknowledged)."""
    if known is None:
        return rows
    rejected: list[dict[str, Any]] = []
    for name in rows.column_names:
        if name not in known.names:  # a new field or tag: the table grows a column
            continue
        want = known.field(name).type
        col = rows.column(name)
        if col.type == want or col.null_count == len(col):
            if col.type != want:
                rows = rows.set_column(rows.column_names.index(name), name, col.cast(want))
            continue
        if pa.types.is_integer(col.type) and pa.types.is_floating(want):
            rows = rows.set_column(rows.column_names.index(name), name, col.cast(want))
            continue
        first = _first_line(col, lines)
        rejected.append(
            {
                "line": first,
                "column": None,
                "field": name,
                "message": (f"line {first}: " if first else "")
                + f"field {name!r} is {_type_name(col.type)} but the table's column is "
                f"{_type_name(want)} (type conflict)",
            }
        )
    if rejected:
        raise PointsRejected(
            f"type conflict, nothing written: {rejected[0]['message']}",
            path=source,
            rejected=rejected,
            hint="send the field with the column's type, or write it under another name",
        )
    return rows


def merged_schema(known: pa.Schema | None, rows: pa.Table) -> pa.Schema:
    """``known`` plus the columns of ``rows`` it lacks."""
    if known is None:
        return rows.schema
    extra = [f for f in rows.schema if f.name not in known.names]
    return pa.schema(list(known) + extra) if extra else known


def last_wins(rows: pa.Table, keys: Sequence[str]) -> pa.Table:
    """``rows`` with one row per key: for each field the last non-null value (rows in arrival
    order). Unchanged when no key repeats."""
    keys = [k for k in keys if k in rows.column_names]
    if not rows.num_rows or not keys:
        return rows
    grouped = rows.group_by(keys, use_threads=False)
    counts = grouped.aggregate([([], "count_all")])
    if counts.num_rows == rows.num_rows:
        return rows
    fields = [c for c in rows.column_names if c not in keys]
    out = grouped.aggregate([(c, "last") for c in fields])
    renamed = out.rename_columns([n.removesuffix("_last") for n in out.column_names])
    return renamed.select(rows.column_names)


@dataclass
class Entry:
    """Points of one write-ahead log record of one table."""

    seq: int
    rows: pa.Table
    late: bool  # may replace points with the same series and time (last write wins)
    version: int | None = None  # the Delta version that holds them, once committed
    committed_at: float = 0.0
    committing: bool = False  # their commit is under way (it may have landed already)


@dataclass
class SeriesTable:
    """What the ingest service keeps of one table: its entry, tag columns, the schema its
    points have so far (committed and pending), each series' latest time, and the entries
    not yet dropped."""

    ident: TableIdent
    info: TableInfo
    tags: list[str]
    schema: pa.Schema | None
    latest: dict[str, int] | None = None  # series key → latest time (µs); None: not loaded
    entries: list[Entry] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The last commit's failure (a read-only or unreachable warehouse): until a commit
    # succeeds again, writes to the table are refused rather than piled up in the log.
    commit_error: Exception | None = None
    # What the pending source last answered, by the entries it took (log seqs): queries
    # between two writes reuse it instead of concatenating (and, for late points, resolving
    # last write wins over) every pending point again.
    pending_memo: tuple[tuple[int, ...], Any] | None = None

    @property
    def keys(self) -> list[str]:
        return [*self.tags, TIME]


def _first_line(col: pa.ChunkedArray, lines: pa.Array | None) -> int | None:
    if lines is None:
        return None
    idx = pc.index(pc.is_valid(col), True).as_py()
    return int(lines[idx].as_py()) if idx is not None and idx >= 0 else None


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return str(t)


__all__ = [
    "DAY",
    "SORT_PROPERTY",
    "TAGS_PROPERTY",
    "TIME",
    "TIME_TYPE",
    "Entry",
    "SeriesTable",
    "conform",
    "last_wins",
    "merged_schema",
    "table_properties",
    "tag_properties",
    "tags_of",
    "to_rows",
]
