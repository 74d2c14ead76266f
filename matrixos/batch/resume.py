"""What makes a ``map_batches`` job exactly-once and resumable: the source read at a pinned
version in batches of fixed size, the job's key, the records each commit carries, and the writer
that commits batches with their record."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from matrixos.errors import SQLError, TableNotFound

if TYPE_CHECKING:
    from matrixos.host import SessionHost
    from matrixos.table import Table

#: Commit-metadata key under which each commit of a job records what it holds.
MARKER_KEY = "matrixos.map_batches"


# -- the source --------------------------------------------------------------------------------
@dataclass
class Source:
    """A job's source: a table at a pinned version, or a query, as the SQL that reads it."""

    label: str  # for messages: the table's name or "query"
    identity: str  # what the job key hashes
    version: int | None  # the table version read (pinned for resumes); None for a query
    format: str  # the output's format by default: the table's, Delta for a query
    query: str


def is_query(source: str) -> bool:
    """True when ``source`` is SQL text rather than a table name.

    Example:
        >>> is_query("sales.orders"), is_query("SELECT * FROM sales.orders")
        (False, True)
    """
    return any(ch.isspace() for ch in source.strip()) or source.strip().endswith(")")


def open_source(
    lh: SessionHost,
    source: str,
    *,
    columns: Sequence[str] | None,
    filter: str | None,
    version: int | None,
) -> Source:
    """``source`` (a table name or a query) as the query that reads its ``columns`` where
    ``filter`` holds, a table at ``version`` (default: its latest)."""
    # Built as a tree: the source query and the filter must each parse as one query and one
    # condition, and column names are quoted identifiers, so none of them can change the
    # statement's shape.
    projection = [exp.column(c, quoted=True) for c in columns] if columns else [exp.Star()]
    try:
        where = sqlglot.condition(filter, dialect="duckdb") if filter else None
        if is_query(source):
            inner = sqlglot.parse_one(source, read="duckdb")
            if not isinstance(inner, exp.Query):
                raise SQLError(f"the source must be a query, got {source!r}")
            query = exp.select(*projection).from_(inner.subquery("s"))
            return Source("query", source.strip(), None, "delta", _where(query, where))
    except SqlglotError as e:
        raise SQLError(f"cannot parse the source or filter: {e}") from e
    t = lh.table(source)
    v = version if version is not None else int(t.version)
    i = t.info.ident
    table = exp.table_(i.name, db=i.schema, catalog=i.catalog, quoted=True)
    table.set(
        "version", exp.Version(this="VERSION", kind="AS OF", expression=exp.Literal.number(v))
    )
    return Source(
        t.name,
        t.name,
        v,
        t.info.format,
        _where(exp.select(*projection).from_(table), where),
    )


def _where(query: Any, condition: Any) -> str:
    return str((query.where(condition) if condition is not None else query).sql("duckdb"))


def rebatch(reader: Iterable[pa.RecordBatch], size: int) -> Iterator[tuple[int, pa.Table, bool]]:
    """``(index, batch of exactly size rows (the last may be shorter), is_last)``."""
    buf: list[pa.RecordBatch] = []
    held = 0
    index = 0
    pending: pa.Table | None = None
    for rb in reader:
        if rb.num_rows == 0:
            continue
        buf.append(rb)
        held += rb.num_rows
        while held >= size:
            table = pa.Table.from_batches(buf)
            batch, rest = table.slice(0, size), table.slice(size)
            buf, held = rest.to_batches(), rest.num_rows
            if pending is not None:
                yield index, pending, False
                index += 1
            pending = batch.combine_chunks()
    if held:
        if pending is not None:
            yield index, pending, False
            index += 1
        pending = pa.Table.from_batches(buf).combine_chunks()
    if pending is not None:
        yield index, pending, True


# -- resume records ------------------------------------------------------------------------
@dataclass
class Run:
    """One run of a job, as its commit records tell it."""

    run: str
    source_version: int | None
    committed: list[tuple[int, int]]  # batch ranges [first, end)
    done: bool

    def has(self, index: int) -> bool:
        return any(a <= index < b for a, b in self.committed)


def _markers(t: Table, job: str) -> list[dict[str, Any]]:
    """This job's commit records in the output table, oldest first."""
    out = []
    for h in t.store.history():
        raw = h.get(MARKER_KEY) or (h.get("operationParameters") or {}).get(MARKER_KEY)
        if not raw:
            continue
        try:
            m = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if m.get("job") == job:
            out.append({**m, "_version": int(h.get("version", 0))})
    out.sort(key=lambda m: m["_version"])
    return out


def last_run(t: Table | None, job: str) -> Run | None:
    """The latest run of ``job`` that committed to the output table ``t``; None if none did."""
    if t is None:
        return None
    marks = _markers(t, job)
    if not marks:
        return None
    run = marks[-1]["run"]
    mine = [m for m in marks if m["run"] == run]
    return Run(
        run,
        mine[-1].get("source_version"),
        [(int(m["first"]), int(m["end"])) for m in mine],
        any(m.get("last") for m in mine),
    )


def job_key(
    source: Source,
    fn: Any,
    *,
    output: str,
    columns: Sequence[str] | None,
    filter: str | None,
    batch_size: int,
    mode: str,
    key: Sequence[str] | None,
) -> str:
    """The job's id: a hash of what defines its output (source, function, options)."""
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    spec = {
        "source": source.identity,
        "fn": name,
        "output": output,
        "columns": list(columns or []),
        "filter": filter,
        "batch_size": batch_size,
        "mode": mode,
        "key": list(key or []),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# -- the writer ----------------------------------------------------------------------------------
class Writer:
    """Commits a job's results to the output table (created on the first commit), each commit
    with the record of the batches it holds."""

    def __init__(
        self,
        lh: SessionHost,
        output: str,
        *,
        format: Literal["delta", "lance"],
        mode: str,
        key: Sequence[str] | None,
        marker: dict[str, Any],
        first_commit: bool,
    ) -> None:
        self.lh = lh
        self.output = output
        self.format = format
        self.mode = mode
        self.key = list(key or [])
        self.marker = marker
        self.first_commit = first_commit
        self.table: Table | None = None

    def _table(self, schema: pa.Schema) -> Table:
        if self.table is None:
            try:
                self.table = self.lh.table(self.output)
            except TableNotFound:
                self.table = self.lh.create_table(
                    self.output, schema=schema, format=self.format, mode="ignore"
                )
        return self.table

    def commit(self, parts: list[pa.Table], first: int, end: int, last: bool) -> int:
        """Write ``parts`` (batches ``[first, end)``) in one commit that records them."""
        data = pa.concat_tables(parts, promote_options="permissive") if parts else None
        if data is None:
            raise AssertionError("nothing to commit")  # pragma: no cover
        t = self._table(data.schema)
        meta = {MARKER_KEY: json.dumps({**self.marker, "first": first, "end": end, "last": last})}
        # Through the service's handle: MODIFY checked, rows embedded, the catalog told.
        handle = self.lh.service.table(self.lh.principal, t.info.ident)
        if self.mode == "merge":
            handle.merge(data, self.key, commit_metadata=meta)
        elif self.mode == "overwrite" and self.first_commit:
            handle.overwrite(data, commit_metadata=meta)
        else:
            handle.append(data, commit_metadata=meta)
        self.first_commit = False
        return data.num_rows
