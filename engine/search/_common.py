"""What every search module asks of a Lance dataset: which column to search, with which metric
and under which index, and the error to raise when Lance fails."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pyarrow as pa

from matrixos.errors import ConfigError, MatrixOSError, SchemaMismatch, SQLError
from matrixos.storage.lance_datasets import lance_error, lance_message

if TYPE_CHECKING:
    from lance.dataset import LanceDataset

Metric = Literal["l2", "cosine", "dot"]
StorageOptions = Mapping[str, str] | None

CONFIG_METRIC = "matrixos.search.metric."  # + column: the metric chosen for a column
T = TypeVar("T")


# --- What a dataset version says, worked out once per handle -----------------------------------

# A handle is one dataset version (``open_dataset`` keeps it while the version is the latest):
# its schema, indexes and configuration cannot change under it, so what a query derives from
# them (the column to search, its metric, the projection) is remembered per handle, and dropped
# with it. Errors are not remembered.
_MEMOS: weakref.WeakKeyDictionary[Any, dict[Hashable, Any]] = weakref.WeakKeyDictionary()
_MEMO_LOCK = threading.Lock()


def memo(ds: LanceDataset, key: Hashable, derive: Callable[[], T]) -> T:
    """``derive()``, remembered for the handle ``ds`` under ``key``."""
    with _MEMO_LOCK:
        found = _MEMOS.get(ds)
        if found is None:
            found = _MEMOS[ds] = {}
        if key in found:
            return found[key]  # type: ignore[no-any-return]
    value = derive()
    with _MEMO_LOCK:
        found[key] = value
    return value


# --- Errors ------------------------------------------------------------------------------------


def wrap(
    e: Exception,
    what: str,
    *,
    uri: str,
    ds: LanceDataset | None = None,
    predicate: str | None = None,
    options: StorageOptions = None,
) -> MatrixOSError:
    """A MatrixOSError for a lance failure; blames the filter when it alone fails to plan."""
    if predicate is not None and ds is not None and not isinstance(e, MatrixOSError):
        bad = filter_problem(ds, predicate)
        if bad is not None:
            return SQLError(
                f"invalid filter {predicate!r}: {bad}",
                sql=predicate,
                hint="filters are SQL predicates over the dataset's columns, e.g. \"lang = 'en'\"",
            )
    return lance_error(e, what, uri, options)


def filter_problem(ds: LanceDataset, predicate: str) -> str | None:
    """Why ``predicate`` is not a valid filter of ``ds``, or None when it is."""
    try:
        ds.scanner(columns=[], filter=predicate, limit=1, with_row_id=True).to_table()
    except Exception as e:
        return lance_message(e).removeprefix("Invalid user input: ")
    return None


def as_uri(uri: Any) -> str:
    return os.fspath(uri) if not isinstance(uri, str) else uri


# --- Columns, metrics, indexes -----------------------------------------------------------------


def is_vector(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type)


def is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def column_field(ds: LanceDataset, name: str, uri: str) -> pa.Field:
    schema = ds.schema
    if schema.get_field_index(name) < 0:
        raise SQLError(
            f"column {name!r} does not exist in {uri!r}",
            sql=name,
            sqlstate="42703",
            hint="columns: " + ", ".join(schema.names),
        )
    return schema.field(name)


def pick_vector_column(ds: LanceDataset, column: str | None, uri: str) -> tuple[str, int]:
    """The vector column to search (``column``, else the only one) and its dimension."""
    return memo(ds, ("vector-column", column), lambda: _pick_vector_column(ds, column, uri))


def _pick_vector_column(ds: LanceDataset, column: str | None, uri: str) -> tuple[str, int]:
    if column is not None:
        f = column_field(ds, column, uri)
        if not is_vector(f.type):
            raise SchemaMismatch(
                f"column {column!r} of {uri!r} is {f.type}, not a vector (fixed_size_list<float>)"
            )
        return column, f.type.list_size
    found = [f for f in ds.schema if is_vector(f.type)]
    f32 = [f for f in found if pa.types.is_float32(f.type.value_type)]
    if len(f32) == 1:
        found = f32
    if len(found) != 1:
        names = ", ".join(f.name for f in found) or "none"
        raise ConfigError(
            f"{uri!r} has {len(found)} vector columns ({names}); say which one",
            hint="pass column=",
        )
    return found[0].name, found[0].type.list_size


def list_indexes(ds: LanceDataset) -> list[Any]:
    try:
        return list(ds.describe_indices())
    except Exception:  # an older lance without describe_indices: no metadata, not fatal
        return []


def vector_index(ds: LanceDataset, column: str) -> Any | None:
    for d in list_indexes(ds):
        if list(d.field_names) == [column] and str(d.index_type).upper().startswith("IVF"):
            return d
    return None


def pick_text_column(ds: LanceDataset, column: str | None, uri: str) -> str:
    """The text column to search: ``column``, else the one with a text index, else the only
    string column."""
    if column is not None:
        f = column_field(ds, column, uri)
        if not is_text(f.type):
            raise SchemaMismatch(f"column {column!r} of {uri!r} is {f.type}, not text")
        return column
    indexed = [
        d.field_names[0]
        for d in list_indexes(ds)
        if str(d.index_type).lower() in ("inverted", "fts") and len(d.field_names) == 1
    ]
    if len(indexed) == 1:
        return str(indexed[0])
    texts = [f.name for f in ds.schema if is_text(f.type)]
    if len(indexed) == 0 and len(texts) == 1:
        return texts[0]
    names = ", ".join(indexed or texts) or "none"
    raise ConfigError(
        f"cannot tell which text column of {uri!r} to search ({names})", hint="pass column="
    )


_METRICS: dict[str, Metric] = {
    "l2": "l2",
    "euclidean": "l2",
    "cosine": "cosine",
    "dot": "dot",
    "ip": "dot",
    "inner_product": "dot",
}


def parse_metric(name: str) -> Metric:
    m = _METRICS.get(str(name).lower())
    if m is None:
        raise ConfigError(f"unknown metric {name!r}", hint="use 'cosine', 'l2' or 'dot'")
    return m


def column_metric(ds: LanceDataset, column: str) -> Metric:
    """The metric the column's index was built with, else the one recorded for it, else
    cosine (what sentence embedders are trained for)."""
    return memo(ds, ("metric", column), lambda: _column_metric(ds, column))


def _column_metric(ds: LanceDataset, column: str) -> Metric:
    idx = vector_index(ds, column)
    if idx is not None:
        details = idx.details if isinstance(idx.details, dict) else {}
        if details.get("metric_type"):
            return parse_metric(details["metric_type"])
    recorded = dataset_config(ds).get(CONFIG_METRIC + column)
    return parse_metric(recorded) if recorded else "cosine"


def dataset_config(ds: LanceDataset) -> dict[str, str]:
    cfg = ds.config
    return dict(cfg() if callable(cfg) else cfg or {})


def projection(ds: LanceDataset, columns: Sequence[str] | None, uri: str) -> list[str]:
    """The columns to return (checked): ``columns``, else all (a new list each call)."""
    if isinstance(columns, str):
        columns = [columns]
    key = None if columns is None else tuple(columns)
    return list(memo(ds, ("projection", key), lambda: _projection(ds, key, uri)))


def _projection(ds: LanceDataset, columns: tuple[str, ...] | None, uri: str) -> tuple[str, ...]:
    if columns is None:
        return tuple(ds.schema.names)
    for c in columns:
        column_field(ds, c, uri)
    return columns
