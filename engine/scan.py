"""Scan planning: which Parquet files of a Delta snapshot a query needs, and how DuckDB reads them.

DuckDB reads the table's active Parquet files itself (as fast as it reads any Parquet), after
MatrixOS pruned them by partition values and the Delta log's min/max statistics. What the plain
file list would get wrong is handled here: partition values (not stored in the files) become
typed literals, column mapping renames physical columns, deletion vectors filter rows, and files
written before a schema change are read by name.
"""

from __future__ import annotations

import datetime as dt_
import functools
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from sqlglot import exp

from matrixos.storage.delta import check_readable
from matrixos.storage.warehouse import is_remote

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from matrixos.catalog.pending import PendingRows
    from matrixos.storage.options import StorageOptions

_MAPPING_KEY = "delta.columnMapping.physicalName"
_STRING_STATS_LIMIT = 32  # Spark truncates string statistics at 32 characters
_COUNTER = itertools.count()


@dataclass
class FileEntry:
    path: str  # absolute URI or local path
    size: int
    num_records: int | None
    partition: tuple[Any, ...]
    stats_min: dict[str, Any]
    stats_max: dict[str, Any]
    null_count: dict[str, Any]


@dataclass
class Snapshot:
    """One version of a Delta table, as the scan needs it."""

    location: str
    version: int
    schema: pa.Schema  # logical schema, partition columns included
    partition_columns: list[str]
    physical: dict[str, str]  # logical → physical column name
    files: list[FileEntry]
    deletion_vectors: dict[str, list[bool]]  # file path → keep mask
    read_by_name: bool  # some files lack columns: DuckDB must union by name

    @property
    def data_columns(self) -> list[pa.Field]:
        return [f for f in self.schema if f.name not in self.partition_columns]


def load_snapshot(dt: DeltaTable) -> Snapshot:
    """The file list, statistics and schema of ``dt``'s loaded version."""
    check_readable(dt)
    schema = pa.schema(dt.schema().to_arrow())  # type: ignore[arg-type]
    meta = dt.metadata()
    parts = list(meta.partition_columns)
    physical = {}
    for f in dt.schema().fields:
        md = f.metadata or {}
        physical[f.name] = str(md.get(_MAPPING_KEY, f.name)).strip('"')
    if any(isinstance(t, pa.StructType) for t in schema.types) and any(
        k != v for k, v in physical.items()
    ):
        from matrixos.errors import NotSupported

        raise NotSupported(
            f"Delta table at {dt.table_uri}: column mapping on nested (struct) columns is not "
            "supported yet; refusing rather than returning wrong values"
        )
    # Through the C stream: pa.table() of a foreign table imports pandas (~0.5 s, once).
    actions = pa.RecordBatchReader.from_stream(dt.get_add_actions(flatten=True)).read_all()
    root = dt.table_uri.rstrip("/")
    if root.startswith("file://"):
        root = root[len("file://") :]
    cols = actions.column_names
    data_names = [f.name for f in schema if f.name not in parts]
    rows = actions.to_pylist()
    # With column mapping the log keys statistics by physical name.
    stat_keys = {n: physical[n] if f"null_count.{physical[n]}" in cols else n for n in data_names}
    files = []
    read_by_name = False
    for r in rows:
        path = r["path"]
        if "://" not in path:
            path = f"{root}/{path}"
        elif path.startswith("file://"):
            path = path[len("file://") :]
        mins = {n: r.get(f"min.{k}") for n, k in stat_keys.items() if f"min.{k}" in cols}
        maxs = {n: r.get(f"max.{k}") for n, k in stat_keys.items() if f"max.{k}" in cols}
        nulls = {
            n: r.get(f"null_count.{k}") for n, k in stat_keys.items() if f"null_count.{k}" in cols
        }
        if r.get("num_records") is not None and any(nulls.get(n) is None for n in data_names):
            read_by_name = True
        files.append(
            FileEntry(
                path=_unquote(path),
                size=int(r["size_bytes"]),
                num_records=r.get("num_records"),
                partition=tuple(r.get(f"partition.{p}") for p in parts),
                stats_min=mins,
                stats_max=maxs,
                null_count=nulls,
            )
        )
    dvs: dict[str, list[bool]] = {}
    if "deletionVectors" in set(dt.protocol().reader_features or []):
        for batch in dt.deletion_vectors():
            for p, mask in zip(
                batch.column("filepath").to_pylist(),
                batch.column("selection_vector").to_pylist(),
                strict=True,
            ):
                p = p[len("file://") :] if p.startswith("file://") else p
                dvs[_unquote(p)] = mask
    if "typeWidening" in set(dt.protocol().reader_features or []):
        read_by_name = True
    return Snapshot(
        location=root,
        version=dt.version(),
        schema=schema,
        partition_columns=parts,
        physical=physical,
        files=files,
        deletion_vectors=dvs,
        read_by_name=read_by_name,
    )


def _unquote(path: str) -> str:
    from urllib.parse import unquote

    return unquote(path)


# -- pruning --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Predicate:
    """``column op value`` that a whole file can be tested against."""

    column: str
    op: str  # = < <= > >= in isnull notnull
    value: Any = None

    def describe(self) -> str:
        """The predicate as EXPLAIN shows it.

        Example:
            >>> Predicate("year", ">=", 2024).describe()
            'year >= 2024'
        """
        if self.op == "isnull":
            return f"{self.column} IS NULL"
        if self.op == "notnull":
            return f"{self.column} IS NOT NULL"
        return f"{self.column} {self.op.upper()} {self.value!r}"


@dataclass
class PrunedScan:
    snapshot: Snapshot
    files: list[FileEntry]
    predicates: list[Predicate] = field(default_factory=list)
    # Rows acknowledged by a write-ahead log but not committed yet (catalog/pending.py):
    # unioned into a scan of the latest version, never into time travel.
    pending: PendingRows | None = None

    @property
    def pruned(self) -> int:
        return len(self.snapshot.files) - len(self.files)


@dataclass
class DatasetScan:
    """A table DuckDB scans as a dataset through Arrow (a Lance table, or any format without
    Delta's file lists) at one version, pushing projections and filters into it (Lance uses
    its scalar indexes and skips fragments)."""

    location: str
    version: int
    dataset: Any  # lance.LanceDataset, pyarrow.dataset.Dataset, …
    format: str = "lance"

    @property
    def schema(self) -> pa.Schema:
        return self.dataset.schema  # type: ignore[no-any-return]


def prune(snapshot: Snapshot, predicates: Sequence[Predicate]) -> PrunedScan:
    """Files that may hold rows matching every predicate."""
    types = {f.name: f.type for f in snapshot.schema}
    usable = []
    for p in predicates:
        t = types.get(p.column)
        if t is None:
            continue
        value = _coerce(p.value, t) if p.op not in ("isnull", "notnull") else None
        if value is _NO or (p.op == "in" and any(v is _NO for v in value or [])):
            continue
        usable.append(Predicate(p.column, p.op, value))
    if not usable:
        return PrunedScan(snapshot, list(snapshot.files), [])
    pidx = {c: i for i, c in enumerate(snapshot.partition_columns)}
    kept = [
        f for f in snapshot.files if all(_may_match(f, p, pidx, types[p.column]) for p in usable)
    ]
    return PrunedScan(snapshot, kept, usable)


class _Missing:
    pass


_NO: Any = _Missing()


def _coerce(value: Any, t: pa.DataType) -> Any:
    if isinstance(value, list | tuple):
        return [_coerce(v, t) for v in value]
    if value is None:
        return _NO
    quick = _coerce_quickly(value, t)
    if quick is not None:
        return quick
    try:
        return pa.scalar(value).cast(t).as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
        return _NO


def _coerce_quickly(value: Any, t: pa.DataType) -> Any:
    """What ``_coerce`` returns for a literal that needs no conversion (an int for an integer
    or float column, a float for a double one, a str for a string one), without a pyarrow
    scalar: making one imports pandas (~0.2 s of a process's first statement). None when the
    cast must decide."""
    kind = type(value)
    if kind is int and pa.types.is_integer(t):
        width = t.bit_width
        signed = pa.types.is_signed_integer(t)
        low, high = (-(2 ** (width - 1)), 2 ** (width - 1)) if signed else (0, 2**width)
        return value if low <= value < high else _NO
    if kind is int and t in (pa.float32(), pa.float64()) and abs(value) <= 2**24:
        return float(value)  # exact in either width
    same = (kind is float and t == pa.float64() and value == value) or (
        kind is str and (pa.types.is_string(t) or pa.types.is_large_string(t))
    )
    return value if same else None


def _cmp(a: Any, op: str, b: Any) -> bool:
    try:
        if op == "=":
            return bool(a == b)
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        if op == ">=":
            return bool(a >= b)
    except TypeError:
        return True
    return True


def _may_match(f: FileEntry, p: Predicate, pidx: dict[str, int], t: pa.DataType) -> bool:
    if p.column in pidx:
        v = f.partition[pidx[p.column]]
        if p.op == "isnull":
            return v is None
        if p.op == "notnull":
            return v is not None
        if v is None:
            return False
        v = _coerce(v, t)
        if v is _NO:
            return True
        if p.op == "in":
            return any(_cmp(v, "=", x) for x in p.value)
        return _cmp(v, p.op, p.value)
    nulls = f.null_count.get(p.column)
    if p.op == "isnull":
        return nulls is None or nulls > 0
    if p.op == "notnull":
        return nulls is None or f.num_records is None or nulls < f.num_records
    lo, hi = f.stats_min.get(p.column), f.stats_max.get(p.column)
    if f.num_records is not None and nulls is not None and nulls == f.num_records:
        return False  # only NULLs: no comparison can be true
    if isinstance(lo, str) and len(lo) >= _STRING_STATS_LIMIT:
        lo = None
    if isinstance(hi, str) and len(hi) >= _STRING_STATS_LIMIT:
        hi = None
    if isinstance(hi, dt_.datetime):
        hi = hi + dt_.timedelta(milliseconds=1)  # Delta truncates timestamp stats to ms
    values = p.value if p.op == "in" else [p.value]
    op = "=" if p.op == "in" else p.op
    return any(_range_may_match(lo, hi, op, v) for v in values)


def _range_may_match(lo: Any, hi: Any, op: str, v: Any) -> bool:
    if op == "=":
        return (lo is None or _cmp(lo, "<=", v)) and (hi is None or _cmp(hi, ">=", v))
    if op in ("<", "<="):
        return lo is None or _cmp(lo, op, v)
    if op in (">", ">="):
        return hi is None or _cmp(hi, op, v)
    return True


# -- rendering ------------------------------------------------------------------------------
@dataclass
class ScanContext:
    """Per-query state: Arrow sources to register with the DuckDB cursor before it runs."""

    filesystem: Any = None  # pyarrow filesystem for object-store files
    registrations: dict[str, Any] = field(default_factory=dict)

    def register(self, obj: Any) -> str:
        name = f"__mx_src_{next(_COUNTER)}"
        self.registrations[name] = obj
        return name


def duckdb_type(t: pa.DataType) -> str:
    """The DuckDB type name for an Arrow type of a Delta schema."""
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_int8(t):
        return "TINYINT"
    if pa.types.is_int16(t):
        return "SMALLINT"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_float32(t):
        return "FLOAT"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision}, {t.scale})"  # type: ignore[attr-defined]
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "VARCHAR"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "BLOB"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"  # type: ignore[attr-defined]
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return duckdb_type(t.value_type) + "[]"  # type: ignore[attr-defined]
    if pa.types.is_struct(t):
        inner = ", ".join(f"{_ident(f.name)} {duckdb_type(f.type)}" for f in t)  # type: ignore[attr-defined]
        return f"STRUCT({inner})"
    if pa.types.is_map(t):
        return f"MAP({duckdb_type(t.key_type)}, {duckdb_type(t.item_type)})"  # type: ignore[attr-defined]
    return "VARCHAR"


def _literal(value: Any, t: pa.DataType) -> str:
    if value is None:
        return f"CAST(NULL AS {duckdb_type(t)})"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dt_.datetime | dt_.date):
        text = value.isoformat()
    else:
        text = str(value)
    return f"CAST({_string(text)} AS {duckdb_type(t)})"


@functools.lru_cache(maxsize=8192)
def _ident(name: str) -> str:
    """``name`` as a quoted DuckDB identifier: column and struct field names are data (a
    table's schema is user input), never SQL. Memoized: every query renders each column of
    each scan (~20 us a name through sqlglot)."""
    return exp.to_identifier(name, quoted=True).sql(dialect="duckdb")


@functools.lru_cache(maxsize=16384)
def _string(text: str) -> str:
    """``text`` as a DuckDB string literal (file paths: the same ones every query)."""
    return exp.Literal.string(text).sql(dialect="duckdb")


def render_scan(scan: PrunedScan, ctx: ScanContext, columns: Iterable[str] | None = None) -> str:
    """A DuckDB SELECT producing the table's rows (logical names, Delta types), with its
    pending rows (``scan.pending``) unioned in."""
    snap = scan.snapshot
    wanted = set(columns) if columns is not None else None
    fields = [f for f in snap.schema if wanted is None or f.name in wanted] or list(snap.schema)
    committed = _render_files(scan, ctx, fields)
    if scan.pending is None:
        return committed
    return _with_pending(committed, scan.pending, fields, ctx, wanted)


def _with_pending(
    committed: str,
    pending: PendingRows,
    fields: list[pa.Field],
    ctx: ScanContext,
    wanted: set[str] | None,
) -> str:
    """``committed`` plus the pending rows, by name (a pending column the table lacks yet is
    NULL in committed rows); committed rows whose key a pending row replaces are hidden."""
    rows = pending.table
    types = {f.name: f.type for f in fields}
    src = ctx.register(rows)
    proj = []
    for name in rows.column_names:
        if name in types:
            proj.append(f"CAST({_ident(name)} AS {duckdb_type(types[name])}) AS {_ident(name)}")
        elif wanted is None:
            proj.append(_ident(name))
    if not proj:
        return committed
    keys = [k for k in pending.replaces if k in types and k in rows.column_names]
    if not keys:
        return f"SELECT * FROM ({committed}) UNION ALL BY NAME SELECT {', '.join(proj)} FROM {src}"
    # Last write wins, field by field: a committed row a pending row replaces is hidden, and
    # the pending row takes the committed row's value for each field it does not carry.
    match = " AND ".join(f"__p.{_ident(k)} IS NOT DISTINCT FROM __c.{_ident(k)}" for k in keys)
    hidden = (
        f"SELECT * FROM ({committed}) AS __c "
        f"WHERE NOT EXISTS (SELECT 1 FROM {src} AS __p WHERE {match})"
    )
    fill = []
    for f in fields:
        name = _ident(f.name)
        if f.name not in rows.column_names:
            fill.append(f"__c.{name} AS {name}")
        elif f.name in keys:
            fill.append(f"CAST(__p.{name} AS {duckdb_type(f.type)}) AS {name}")
        else:
            fill.append(
                f"coalesce(CAST(__p.{name} AS {duckdb_type(f.type)}), __c.{name}) AS {name}"
            )
    if wanted is None:
        fill += [f"__p.{_ident(n)}" for n in rows.column_names if n not in types]
    replaced = (
        f"SELECT {', '.join(fill)} FROM {src} AS __p LEFT JOIN ({committed}) AS __c ON {match}"
    )
    return f"{hidden} UNION ALL BY NAME {replaced}"


def _render_files(scan: PrunedScan, ctx: ScanContext, fields: list[pa.Field]) -> str:
    snap = scan.snapshot
    if not scan.files:
        cols = ", ".join(f"{_literal(None, f.type)} AS {_ident(f.name)}" for f in fields)
        return f"SELECT {cols} WHERE false"
    groups: dict[tuple[Any, ...], list[FileEntry]] = defaultdict(list)
    for f in scan.files:
        groups[f.partition].append(f)
    pidx = {c: i for i, c in enumerate(snap.partition_columns)}
    parts: list[str] = []
    for pvals, files in groups.items():
        plain = [f for f in files if f.path not in snap.deletion_vectors]
        with_dv = [f.path for f in files if f.path in snap.deletion_vectors]
        sources = []
        # Files of an object-store table may be partly in the node's cache (local paths).
        for _, run in itertools.groupby(plain, key=lambda f: is_remote(f.path)):
            sources.append(_source(snap, list(run), ctx))
        for p in with_dv:
            sources.append(ctx.register(_read_with_dv(snap, p, ctx)))
        proj = []
        for f in fields:
            if f.name in pidx:
                proj.append(f"{_literal(pvals[pidx[f.name]], f.type)} AS {_ident(f.name)}")
                continue
            phys = _ident(snap.physical.get(f.name, f.name))
            if pa.types.is_timestamp(f.type) or snap.read_by_name:
                proj.append(f"CAST({phys} AS {duckdb_type(f.type)}) AS {_ident(f.name)}")
            elif phys != _ident(f.name):
                proj.append(f"{phys} AS {_ident(f.name)}")
            else:
                proj.append(phys)
        sel = ", ".join(proj)
        parts.extend(f"SELECT {sel} FROM {src}" for src in sources)
    return " UNION ALL ".join(parts)


def _source(snap: Snapshot, files: list[FileEntry], ctx: ScanContext) -> str:
    if is_remote(files[0].path):
        import pyarrow.dataset as ds
        from pyarrow.fs import LocalFileSystem

        physical = pa.schema(
            [pa.field(snap.physical.get(f.name, f.name), f.type) for f in snap.data_columns]
        )
        # Each file with the size its add action records: no HEAD per file and query for it
        # (the dataset, kept with a plan, also keeps each file's footer once read).
        fmt = ds.ParquetFileFormat()
        fs = ctx.filesystem or LocalFileSystem()  # what ds.dataset takes a bare key for
        fragments = [
            fmt.make_fragment(f.path.split("://", 1)[1], fs, file_size=f.size or None)
            for f in files
        ]
        return ctx.register(ds.FileSystemDataset(fragments, physical, fmt, fs))
    paths = [f.path for f in files]
    listing = ", ".join(_string(p) for p in paths)
    if not snap.read_by_name:
        return f"read_parquet([{listing}])"
    # union_by_name only yields columns that at least one of these files has; when every file
    # predates a column (one partition, or after pruning), a typed empty row supplies it.
    typed = ", ".join(
        f"CAST(NULL AS {duckdb_type(f.type)}) AS {_ident(snap.physical.get(f.name, f.name))}"
        for f in snap.data_columns
    )
    return (
        f"(SELECT * FROM read_parquet([{listing}], union_by_name = true) "
        f"UNION ALL BY NAME SELECT {typed} WHERE false)"
    )


def _read_with_dv(snap: Snapshot, path: str, ctx: ScanContext) -> pa.Table:
    import pyarrow.parquet as pq

    if is_remote(path):
        table = pq.read_table(path.split("://", 1)[1], filesystem=ctx.filesystem)
    else:
        table = pq.read_table(path)
    mask = snap.deletion_vectors[path]
    keep = pa.array(mask[: table.num_rows] + [True] * max(0, table.num_rows - len(mask)))
    return table.filter(keep)


def make_context(options: StorageOptions | None, remote: bool) -> ScanContext:
    return ScanContext(filesystem=options.to_pyarrow() if (remote and options) else None)


def table_stats(snapshot: Snapshot) -> dict[str, int]:
    rows = sum(f.num_records or 0 for f in snapshot.files)
    return {
        "files": len(snapshot.files),
        "bytes": sum(f.size for f in snapshot.files),
        "rows": rows,
    }


__all__ = [
    "Predicate",
    "PrunedScan",
    "ScanContext",
    "Snapshot",
    "duckdb_type",
    "load_snapshot",
    "make_context",
    "prune",
    "render_scan",
]
