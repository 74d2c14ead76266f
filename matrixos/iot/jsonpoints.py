"""JSON points → the same columns the line-protocol parser gives.

Accepted shapes (one object, a list of them, or ``{"points": [...]}``):

- ``{"measurement": "cpu", "tags": {"host": "a"}, "fields": {"usage": 0.5}, "time": 1700000000}``
- a flat object: string values are tags, numbers and booleans fields, ``time`` the timestamp
  (``{"host": "a", "usage": 0.5, "time": "2026-12-05T10:00:00Z"}``).

``time`` is an integer in ``precision`` units or an ISO-8601 string; absent, the time of the
write. An integer field into a column that holds floats is widened; any other type change
between points is refused naming the point (1-based, as ``line``) and the field.

Example:
    >>> points, tags = parse_json({"host": "a", "v": 1, "time": 5}, "s")
    >>> points.to_pylist(), tags
    ([{'host': 'a', 'v': 1, 'time': 5000000000, '_line': 1}], ['host'])
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from matrixos.errors import PointsRejected
from matrixos.iot.lineproto import LINE, RESERVED, precision_factor


def parse_json(
    payload: Any,
    precision: str | None = "ns",
    *,
    extra_tags: dict[str, str] | None = None,
    source: str = "JSON points",
) -> tuple[pa.Table, list[str]]:
    """The points of a JSON payload as (columns, tag names)."""
    factor = precision_factor(precision)
    now = time.time_ns()
    items = payload.get("points", payload) if isinstance(payload, dict) else payload
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise _refuse(source, 1, None, "expected an object, a list of objects or {'points': [...]}")
    tag_cols: dict[str, list[str | None]] = {}
    field_cols: dict[str, list[Any]] = {}
    kinds: dict[str, tuple[str, int]] = {}
    times: list[int] = []
    for n, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise _refuse(source, n, None, "a point must be a JSON object")
        tags, fields, stamp = _split(item, source, n)
        if extra_tags:
            tags = {**tags, **extra_tags}
        if not fields:
            raise _refuse(source, n, None, "a point needs at least one field")
        for k, v in tags.items():
            if k in RESERVED or k in fields:
                raise _refuse(source, n, k, f"{k!r} cannot be a tag here")
            tag_cols.setdefault(k, [None] * (n - 1)).append(str(v))
        for k, v in fields.items():
            if k in RESERVED:
                raise _refuse(source, n, k, f"{k!r} is reserved and cannot be a field")
            kind = _kind(v)
            if kind is None:
                raise _refuse(source, n, k, f"unsupported field value {v!r}")
            seen = kinds.get(k)
            if seen is None:
                kinds[k] = (kind, n)
            elif seen[0] != kind:
                if {seen[0], kind} == {"i", "f"}:
                    kinds[k] = ("f", seen[1])
                else:
                    raise _refuse(
                        source,
                        n,
                        k,
                        f"field {k!r} is {_NAMES[kind]} here but {_NAMES[seen[0]]} in point "
                        f"{seen[1]} (type conflict)",
                    )
            field_cols.setdefault(k, [None] * (n - 1)).append(v)
        times.append(_time(stamp, factor, now, source, n))
        for col in (*tag_cols.values(), *field_cols.values()):
            if len(col) < n:
                col.append(None)
    columns: dict[str, pa.Array] = {k: pa.array(v, pa.string()) for k, v in tag_cols.items()}
    for k, v in field_cols.items():
        columns[k] = pa.array(v, _ARROW[kinds[k][0]])
    columns["time"] = pa.array(times, pa.int64())
    columns[LINE] = pa.array(range(1, len(times) + 1), pa.int32())
    return pa.table(columns), list(tag_cols)


_NAMES = {"f": "float", "i": "integer", "s": "string", "b": "boolean"}
_ARROW = {"f": pa.float64(), "i": pa.int64(), "s": pa.string(), "b": pa.bool_()}


def _split(item: dict[str, Any], source: str, n: int) -> tuple[dict, dict, Any]:
    if "fields" in item:
        tags = item.get("tags") or {}
        fields = item.get("fields") or {}
        if not isinstance(tags, dict) or not isinstance(fields, dict):
            raise _refuse(source, n, None, "'tags' and 'fields' must be objects")
        if "measurement" in item:
            tags = {"measurement": item["measurement"], **tags}
        return tags, fields, item.get("time")
    tags = {k: v for k, v in item.items() if isinstance(v, str) and k != "time"}
    fields = {k: v for k, v in item.items() if k != "time" and k not in tags and v is not None}
    return tags, fields, item.get("time")


def _kind(v: Any) -> str | None:
    if isinstance(v, bool):
        return "b"
    if isinstance(v, int):
        return "i" if -(2**63) <= v < 2**63 else None
    if isinstance(v, float):
        return "f" if v == v and v not in (float("inf"), float("-inf")) else None
    if isinstance(v, str):
        return "s"
    return None


def _time(stamp: Any, factor: int, now: int, source: str, n: int) -> int:
    if stamp is None:
        return now
    if isinstance(stamp, bool):
        raise _refuse(source, n, "time", f"invalid time {stamp!r}")
    if isinstance(stamp, int | float):
        return int(stamp * factor)
    if isinstance(stamp, str):
        try:
            dt = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            raise _refuse(source, n, "time", f"invalid time {stamp!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    raise _refuse(source, n, "time", f"invalid time {stamp!r}")


def _refuse(source: str, n: int, field: str | None, message: str) -> PointsRejected:
    where = f"point {n}" + (f", field {field!r}" if field else "")
    return PointsRejected(
        f"{where}: {message}; nothing written",
        path=source,
        rejected=[{"line": n, "column": None, "field": field, "message": f"{where}: {message}"}],
    )


__all__ = ["parse_json"]
