"""Continuous aggregates: ``CREATE MATERIALIZED VIEW`` over one table, grouped by a
``time_bucket``, stored as a Delta table and refreshed incrementally.

    CREATE MATERIALIZED VIEW iot.cpu_1m AS
      SELECT time_bucket('1 minute', time) AS bucket, host, avg(usage) AS usage
      FROM iot.cpu GROUP BY 1, 2
    WITH (refresh = '1 minute')           -- or WITH (…) before AS, as PostgreSQL writes it
    REFRESH MATERIALIZED VIEW iot.cpu_1m
    DROP MATERIALIZED VIEW [IF EXISTS] iot.cpu_1m

The view is a Delta table whose catalog properties hold its definition (``matrixos.view.*``:
the query, the source table, the bucket and time columns, the refresh interval and the source
version it was last refreshed to). A refresh compares the source's file list at that version
with its latest: the files added and removed (rewritten, deleted, given a deletion vector) carry
min/max statistics of the time column, which name the buckets that can have changed. Only
those buckets are recomputed, from the source pinned at its latest version, and written with one
Delta ``replaceWhere`` overwrite (delete + insert of those buckets in one commit). Whole buckets
are recomputed from the source rows, so any aggregate works (``avg``, ``count(DISTINCT …)``,
percentiles), not only ones that can be merged. A file without statistics on the time column,
or a source version no longer in the log, makes the refresh a full recompute.

Reads in SQL are real-time, as TimescaleDB's default: the view's rows before its watermark
(the start of the newest bucket at the last refresh) united with the newest buckets computed
from the source as it is now, points still in a write-ahead log included. ``WITH
(materialized_only = 'true')`` reads the stored rows only (and so does the SDK's
``lh.table(view)``). Late points in older buckets show after the next refresh.
"""

from __future__ import annotations

import re
import threading
import time as time_
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from matrixos.catalog import TableIdent
from matrixos.engine.sandbox import check_query, is_cte_reference
from matrixos.engine.sql.frontend import ident_of, ok, table_name
from matrixos.engine.timeseries import misuse, parse_duration
from matrixos.errors import MatrixOSError, NotSupported, SQLError
from matrixos.storage.tablestore import TARGET_FILE_PROPERTY

if TYPE_CHECKING:
    from matrixos.catalog import TableInfo
    from matrixos.catalog.access import Principal
    from matrixos.catalog.service import TableService
    from matrixos.engine.result import Result
    from matrixos.engine.scan import Snapshot

PREFIX = "matrixos.view."
QUERY, SOURCE, BUCKET, TIME, REFRESH, VERSION, WATERMARK, MATERIALIZED_ONLY = (
    PREFIX + k
    for k in (
        "query", "source", "bucket", "time", "refresh", "source_version", "watermark",
        "materialized_only",
    )
)  # fmt: skip
OPTIONS = {"refresh", "materialized_only"}
_CACHE_S = 2.0  # how long the list of real-time views is trusted (a view made elsewhere)
_MATERIALIZED = "mx_materialized"  # meta flag: this reference reads the stored rows
# Small files, rows sorted by bucket: a refresh's replaceWhere rewrites only the few files
# whose buckets it replaces (with the session's 128 MB default it rewrote the whole view).
FILE_BYTES = 8 << 20
_HISTORY = 50  # commits searched for the last refresh's source version (past compactions)
_MS = timedelta(milliseconds=1)

_CREATE = re.compile(
    r"^MATERIALIZED\s+VIEW\s+(IF\s+NOT\s+EXISTS\s+)?(\S+)\s+"
    r"(?:WITH\s*\(([^()]*)\)\s+)?AS\s+(.*?)(?:\s+WITH\s*\(([^()]*)\))?\s*$",
    re.I | re.S,
)
_REFRESH = re.compile(r"^\s*REFRESH\s+(MATERIALIZED\s+VIEW\s+\S+)\s*;?\s*$", re.I)
_OPTION = re.compile(r"^\s*([\w.]+)\s*=\s*'((?:[^']|'')*)'\s*$")


def refresh_command(sql: str) -> exp.Command | None:
    """``REFRESH MATERIALIZED VIEW s.v`` as a command, for the dialects whose parser refuses
    it (DuckDB's, Snowflake's, MySQL's); None for any other text."""
    m = _REFRESH.match(sql)
    return exp.Command(this="REFRESH", expression=exp.Literal.string(m.group(1))) if m else None


@dataclass(frozen=True)
class Definition:
    """A continuous aggregate's definition, as its catalog properties hold it."""

    query: exp.Select  # DuckDB's dialect
    source: str
    bucket: str  # the view's bucket column
    time: str  # the source's time column the buckets are of
    refresh: str | None

    @classmethod
    def of(cls, info: TableInfo) -> Definition | None:
        p = info.properties
        if QUERY not in p:
            return None
        query = sqlglot.parse_one(p[QUERY], read="duckdb")
        assert isinstance(query, exp.Select)
        return cls(query, p[SOURCE], p[BUCKET], p[TIME], p.get(REFRESH))

    def bucket_call(self) -> exp.Func:
        for item in self.query.expressions:
            if item.alias_or_name == self.bucket:
                body = item.this if isinstance(item, exp.Alias) else item
                assert isinstance(body, exp.Func)
                return body
        raise AssertionError("the bucket column is checked at CREATE")


class MaterializedViews:
    """The materialized-view statements of one session's engine.

    ``query`` runs a query tree for a principal; ``snapshot`` loads a Delta table's file list
    at a version (latest when None); ``constant`` evaluates a constant expression;
    ``scheduled`` is called after a view with a refresh interval is created (the session
    starts its background refresher).
    """

    def __init__(
        self,
        service: TableService,
        query: Callable[[exp.Expr, Principal], Result],
        snapshot: Callable[[TableInfo, int | None], Snapshot],
        constant: Callable[[exp.Expr], Any],
        *,
        scheduled: Callable[[], None] | None = None,
    ) -> None:
        self.service = service
        self._scheduled = scheduled
        self._query = query
        self._snapshot = snapshot
        self._constant = constant
        self._lock = threading.Lock()
        self._realtime: dict[str, TableInfo] = {}
        self._refreshing: dict[str, threading.Lock] = {}
        self._loaded = float("-inf")

    # -- statements -------------------------------------------------------------------------
    def command(self, cmd: str, rest: str, dialect: str, principal: Principal) -> Result | None:
        """``CREATE MATERIALIZED VIEW … AS … [WITH (…)]`` and ``REFRESH MATERIALIZED VIEW``
        (sqlglot leaves both as commands); None for any other command."""
        if not re.match(r"^MATERIALIZED\s+VIEW\s", rest, re.I):
            return None
        if cmd == "REFRESH":
            m = re.match(r"^MATERIALIZED\s+VIEW\s+(\S+)\s*$", rest, re.I)
            if not m:
                raise SQLError(
                    f"cannot parse REFRESH {rest!r}", hint="REFRESH MATERIALIZED VIEW s.v"
                )
            done = self.refresh(principal, table_name(m.group(1), dialect))
            return ok("REFRESH MATERIALIZED VIEW", **done)
        if cmd != "CREATE":
            return None
        m = _CREATE.match(rest)
        if not m:
            raise SQLError(
                f"cannot parse CREATE {rest[:80]!r}",
                hint="CREATE MATERIALIZED VIEW s.v AS SELECT time_bucket('1 minute', time) AS "
                "bucket, … FROM s.t GROUP BY 1, … [WITH (refresh = '1 minute')]",
            )
        options = _options(m.group(3)) | _options(m.group(5))
        try:
            trees = sqlglot.parse(m.group(4), read=dialect)
        except SqlglotError as e:
            raise SQLError(f"cannot parse the view's query: {e}", sql=m.group(4)) from e
        if len(trees) != 1 or not isinstance(trees[0], exp.Select):
            raise NotSupported("a materialized view is defined by one SELECT")
        return self.create(
            principal, table_name(m.group(2), dialect), trees[0], options, bool(m.group(1))
        )

    def create_statement(self, stmt: exp.Create, principal: Principal) -> Result | None:
        """``CREATE MATERIALIZED VIEW s.v WITH (…) AS …`` as sqlglot parses it; None when
        ``stmt`` is no materialized view."""
        props = stmt.args.get("properties")
        items = list(props.expressions) if props else []
        if not any(isinstance(p, exp.MaterializedProperty) for p in items):
            return None
        options: dict[str, str] = {}
        for p in items:
            if isinstance(p, exp.MaterializedProperty):
                continue
            value = p.args.get("value") if isinstance(p, exp.Property) else None
            if not isinstance(value, exp.Literal):
                raise NotSupported(f"view option {p.sql()} is not supported", hint="refresh = '…'")
            options[p.name.lower()] = value.name
        query = stmt.args.get("expression")
        if not isinstance(query, exp.Select):
            raise NotSupported("a materialized view is defined by one SELECT")
        _check_options(options)
        return self.create(
            principal, str(ident_of(stmt.this)), query, options, bool(stmt.args.get("exists"))
        )

    def refresh_statement(self, stmt: exp.Refresh, dialect: str, principal: Principal) -> Result:
        """``REFRESH [MATERIALIZED VIEW] s.v`` as Databricks' and Trino's parsers read it."""
        target = stmt.this
        if not isinstance(target, exp.Table):
            raise NotSupported(f"{stmt.sql(dialect=dialect)} is not supported")
        done = self.refresh(principal, str(ident_of(target)))
        return ok("REFRESH MATERIALIZED VIEW", **done)

    def drop(self, stmt: exp.Drop, principal: Principal) -> Result | None:
        """``DROP MATERIALIZED VIEW [IF EXISTS] s.v``; None for other DROPs."""
        if not stmt.args.get("materialized"):
            return None
        for target in stmt.args.get("tables") or [stmt.this]:
            ident = ident_of(target)
            info = self.service.catalog.find_table(ident)
            if info is None and stmt.args.get("exists"):
                continue
            if info is not None and QUERY not in info.properties:
                raise SQLError(
                    f"{info.name} is a table, not a materialized view", hint="DROP TABLE"
                )
            self.service.drop_table(principal, ident, if_exists=bool(stmt.args.get("exists")))
            with self._lock:
                self._realtime.pop(str(ident), None)
        return ok("DROP MATERIALIZED VIEW")

    # -- operations -------------------------------------------------------------------------
    def create(
        self,
        principal: Principal,
        name: str,
        query: exp.Select,
        options: dict[str, str],
        if_not_exists: bool = False,
    ) -> Result:
        """Check the definition, materialize it whole and record it in the catalog."""
        _check_options(options)
        ident = TableIdent.parse(name)
        if self.service.catalog.find_table(ident) is not None and if_not_exists:
            return ok("CREATE MATERIALIZED VIEW", skipped=True)
        source_ref, bucket, time = _check_definition(query)
        source = self.service.resolve(principal, ident_of(source_ref), "SELECT")
        version = self._snapshot(source, None).version
        canonical = query.copy()
        canonical.set("order", None)  # rows are stored unordered; ORDER BY when reading
        for table in canonical.find_all(exp.Table):  # the source by its full name
            if isinstance(table.this, exp.Identifier) and not is_cte_reference(table):
                table.set("catalog", exp.to_identifier(source.ident.catalog, quoted=True))
                table.set("db", exp.to_identifier(source.ident.schema, quoted=True))
                table.set("this", exp.to_identifier(source.ident.name, quoted=True))
        text = canonical.sql(dialect="duckdb")
        data = self._query(_pinned(canonical, version), principal).to_arrow()
        data = data.sort_by(bucket)
        props = {
            QUERY: text,
            SOURCE: source.name,
            BUCKET: bucket,
            TIME: time,
            VERSION: str(version),
            TARGET_FILE_PROPERTY: str(FILE_BYTES),
        }
        if "refresh" in options:
            props[REFRESH] = options["refresh"]
        if options.get("materialized_only", "false").lower() in ("true", "on", "1"):
            props[MATERIALIZED_ONLY] = "true"
        definition = Definition(canonical, source.name, bucket, time, props.get(REFRESH))
        watermark = self._watermark(definition, source, version, principal)
        if watermark is not None:
            props[WATERMARK] = _text(watermark)
        info = self.service.create_table(
            principal, ident, data, properties=props, mode="error", create_schema=True
        )
        self._known(info)
        if REFRESH in props and self._scheduled is not None:
            self._scheduled()
        return ok("CREATE MATERIALIZED VIEW", rows=data.num_rows, source_version=version)

    def refresh(self, principal: Principal, name: str) -> dict[str, Any]:
        """Bring the view up to its source's latest version, recomputing only the buckets the
        source's changes can touch. What it did: ``source_version``, ``buckets`` (ranges
        recomputed; -1 for a full recompute) and ``rows`` written.

        One refresh of a view at a time in this process; refreshes in two processes conflict
        in Delta's commit and the later one is retried by the store on top of the earlier.
        Either way the source version a refresh starts from is the one recorded in the view's
        own latest refresh commit (atomically with its rows), so a refresh that landed last
        with older rows is followed by a recompute of what it missed."""
        with self._lock:
            lock = self._refreshing.setdefault(str(TableIdent.parse(name)), threading.Lock())
        with lock:
            return self._refresh(principal, name)

    def _refresh(self, principal: Principal, name: str) -> dict[str, Any]:
        handle = self.service.table(principal, name)
        store = handle.writable()
        info = handle.info
        definition = Definition.of(info)
        if definition is None:
            raise SQLError(f"{info.name} is a table, not a materialized view")
        source = self.service.resolve(principal, definition.source, "SELECT")
        latest = self._snapshot(source, None)
        last = next(
            (int(c[VERSION]) for c in store.history(_HISTORY) if VERSION in c),
            int(info.properties.get(VERSION, "-1")),  # created, never refreshed since
        )
        if latest.version == last:
            return {"source_version": last, "buckets": 0, "rows": 0}
        ranges = self._changed(source, last, latest, definition)
        query = _pinned(definition.query, latest.version)
        rows = 0
        if ranges is None:
            data = self._query(query, principal).to_arrow().sort_by(definition.bucket)
            handle.overwrite(data, commit_metadata={VERSION: str(latest.version)})
            rows = data.num_rows
        elif ranges:
            buckets = self._aligned(definition, ranges)
            time = exp.column(definition.time, quoted=True)
            query.where(
                exp.or_(*[exp.and_(time >= _ts(lo), time < _ts(hi)) for lo, hi in buckets]),
                copy=False,
            )
            data = self._query(query, principal).to_arrow().sort_by(definition.bucket)
            bucket = '"' + definition.bucket.replace('"', '""') + '"'
            where = " OR ".join(
                f"({bucket} >= '{_text(lo)}' AND {bucket} < '{_text(hi)}')" for lo, hi in buckets
            )
            handle.overwrite(data, where=where, commit_metadata={VERSION: str(latest.version)})
            ranges, rows = buckets, data.num_rows
        props = {**info.properties, VERSION: str(latest.version)}
        watermark = self._watermark(definition, source, latest.version, principal)
        if watermark is not None:
            props[WATERMARK] = _text(watermark)
        self._known(
            self.service.update_properties(self.service.catalog.get_table(info.ident), props)
        )
        return {
            "source_version": latest.version,
            "buckets": -1 if ranges is None else len(ranges),
            "rows": rows,
        }

    # -- real-time reads --------------------------------------------------------------------
    def expand_realtime(self, tree: exp.Expr, principal: Principal) -> bool:
        """Each reference to a real-time view in ``tree`` (latest version, not time travel)
        becomes its stored rows before the watermark united with the newer buckets computed
        from the source; a principal who may not read the source gets the stored rows.
        Returns whether ``tree`` reads a real-time view (its plan then depends on time)."""
        if not any(isinstance(t.this, exp.Identifier) for t in tree.find_all(exp.Table)):
            return False  # reads no table (SELECT 1, a search function)
        views = self._realtime_views()
        if not views:
            return False
        found = False
        for node in list(tree.find_all(exp.Table)):
            if node.meta.get(_MATERIALIZED) or not isinstance(node.this, exp.Identifier):
                continue
            if node.args.get("version") or node.args.get("when") or not node.name:
                continue
            try:
                ident = TableIdent.from_parts(node.catalog or None, node.db or None, node.name)
            except MatrixOSError:
                continue
            info = views.get(str(ident))
            if info is None:
                continue
            found = True
            definition = Definition.of(info)
            if definition is None:
                continue
            try:
                self.service.resolve(principal, definition.source, "SELECT")
            except MatrixOSError:
                continue  # the stored rows only: what a reader of the view alone may see
            node.replace(_realtime_union(node, definition, info.properties[WATERMARK]))
        return found

    def _realtime_views(self) -> dict[str, TableInfo]:
        now = time_.monotonic()
        with self._lock:
            if now - self._loaded < _CACHE_S:
                return self._realtime
        found = {
            i.name: i
            for i in self.service.catalog.list_tables()
            if QUERY in i.properties
            and WATERMARK in i.properties
            and MATERIALIZED_ONLY not in i.properties
        }
        with self._lock:
            self._realtime, self._loaded = found, now
            return found

    def _known(self, info: TableInfo) -> None:
        """A view this engine just wrote: its watermark is current at once."""
        with self._lock:
            if WATERMARK in info.properties and MATERIALIZED_ONLY not in info.properties:
                self._realtime[info.name] = info

    def _watermark(
        self, definition: Definition, source: TableInfo, version: int, principal: Principal
    ) -> datetime | None:
        """The start of the bucket of the source's newest time at ``version`` (None when it
        has no rows): buckets from there on are computed at read time."""
        snap = self._snapshot(source, version)
        time = definition.time
        if (
            time in snap.partition_columns
            or time not in snap.schema.names
            or definition.query.args.get("with_") is not None
        ):
            return None  # a time column of a CTE: reads stay materialized only
        maxima = [f.stats_max.get(time) for f in snap.files if f.num_records != 0]
        if any(m is None for m in maxima):
            q = exp.select(exp.Max(this=exp.column(time, quoted=True))).from_(
                definition.query.args["from_"].this.copy()
            )
            newest = self._query(_pinned(q, version), principal).to_arrow().column(0)[0].as_py()
        else:
            newest = max(maxima, default=None)
        if newest is None:
            return None
        return _naive(self._constant(_bucket_of(definition.bucket_call(), newest)))

    def views(self, principal: Principal) -> list[TableInfo]:
        """The materialized views ``principal`` can see."""
        return [i for i in self.service.tables(principal) if QUERY in i.properties]

    # -- what changed -----------------------------------------------------------------------
    def _changed(
        self, source: TableInfo, last: int, latest: Snapshot, definition: Definition
    ) -> list[tuple[Any, Any]] | None:
        """The ``[min, max]`` time ranges of the source's rows added or removed between
        ``last`` and ``latest``; None when only a full recompute is safe."""
        if last < 0:
            return None
        try:
            before = self._snapshot(source, last)
        except MatrixOSError:
            return None  # the old version is gone from the log (vacuumed, checkpointed away)
        old = {f.path: f for f in before.files}
        new = {f.path: f for f in latest.files}
        changed = [f for p, f in new.items() if p not in old]
        changed += [f for p, f in old.items() if p not in new]
        for path in set(old) & set(new):
            if before.deletion_vectors.get(path) != latest.deletion_vectors.get(path):
                changed.append(new[path])
        time = definition.time
        if time in latest.partition_columns:
            return None
        ranges = []
        for f in changed:
            lo, hi = f.stats_min.get(time), f.stats_max.get(time)
            if lo is None or hi is None:
                if f.num_records == 0 or f.null_count.get(time) == f.num_records:
                    continue  # no row with a time: in no bucket
                return None
            # Delta keeps timestamp statistics to the millisecond: widen by one each way
            ranges.append((_naive(lo) - _MS, _naive(hi) + _MS))
        return ranges

    def _aligned(
        self, definition: Definition, ranges: list[tuple[Any, Any]]
    ) -> list[tuple[datetime, datetime]]:
        """The bucket-aligned ``[start, end)`` spans covering ``ranges``, merged."""
        call = definition.bucket_call()
        width = _bucket_parts(call)[0]
        spans = []
        for lo, hi in sorted(ranges, key=lambda r: r[0]):
            start = self._constant(_bucket_of(call, lo))
            end = self._constant(exp.Add(this=_bucket_of(call, hi), expression=width.copy()))
            spans.append((_naive(start), _naive(end)))
        merged: list[tuple[datetime, datetime]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged


# -- checks -------------------------------------------------------------------------------------
def _options(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        m = _OPTION.match(part)
        if not m:
            raise SQLError(
                f"view option {part.strip()!r} is not understood",
                hint="WITH (refresh = '1 minute')",
            )
        out[m.group(1).lower()] = m.group(2).replace("''", "'")
    _check_options(out)
    return out


def _check_options(options: dict[str, str]) -> None:
    unknown = set(options) - OPTIONS
    if unknown:
        raise NotSupported(
            f"view option {sorted(unknown)[0]!r} is not supported", hint="refresh = '1 minute'"
        )
    if "refresh" in options:
        parse_duration(options["refresh"], "refresh")


def _check_definition(query: exp.Select) -> tuple[exp.Table, str, str]:
    """The source table, the bucket column and the time column of a view's query; refused
    unless every bucket can be recomputed on its own from one table."""
    refs = check_query(query)
    if len(refs) != 1 or query.args.get("joins"):
        raise NotSupported(
            "a materialized view reads one table (no joins or subqueries of other tables)",
            hint="join when reading the view",
        )
    if query.args.get("limit") or query.args.get("offset"):
        raise NotSupported("a materialized view has no LIMIT/OFFSET")
    group = query.args.get("group")
    if not group:
        raise NotSupported("a materialized view aggregates: GROUP BY the time_bucket(…) column")
    if query.find(exp.Window):
        raise NotSupported("window functions span buckets; a materialized view cannot have them")
    for i, item in enumerate(query.expressions):
        body = item.this if isinstance(item, exp.Alias) else item
        is_bucket = isinstance(body, exp.DateBin) or (
            isinstance(body, exp.Anonymous) and body.name.lower() == "time_bucket"
        )
        if not is_bucket:
            continue
        args = (
            [body.this, body.args.get("expression")]
            if isinstance(body, exp.DateBin)
            else (list(body.expressions))
        )
        time = args[1] if len(args) > 1 else None
        if not isinstance(time, exp.Column):
            raise misuse(body, "the view's time_bucket() must bucket a column of the table")
        if not isinstance(item, exp.Alias):
            raise misuse(
                body, "name the bucket column", hint="time_bucket('1 minute', time) AS bucket"
            )
        grouped = any(
            g == body
            or (isinstance(g, exp.Literal) and g.is_int and int(g.name) == i + 1)
            or (isinstance(g, exp.Column) and not g.table and g.name == item.alias)
            for g in group.expressions
        )
        if not grouped:
            raise misuse(body, "the view must GROUP BY its time_bucket(…) column")
        return refs[0], item.alias, time.name
    raise NotSupported(
        "a materialized view groups by time_bucket(interval, time) in its SELECT list",
        hint="SELECT time_bucket('1 minute', time) AS bucket, … GROUP BY 1",
    )


def _bucket_parts(call: exp.Func) -> tuple[exp.Expr, list[exp.Expr]]:
    """A ``time_bucket`` call's width (an INTERVAL) and origin (empty or one expression)."""
    if isinstance(call, exp.DateBin):
        width = call.this
        unit = call.args.get("unit")
        origin = [unit] if isinstance(unit, exp.Expr) else []
    else:
        args = list(call.expressions)
        width, origin = args[0], args[2:3]
    if isinstance(width, exp.Literal) and width.is_string:
        width = exp.cast(width.copy(), exp.DataType.build("INTERVAL"))
    return width, origin


def _bucket_of(call: exp.Func, value: Any) -> exp.Expr:
    """``time_bucket(width, <value> [, origin])`` of the view's bucketing."""
    width, origin = _bucket_parts(call)
    return exp.Anonymous(
        this="time_bucket", expressions=[width.copy(), _ts(value), *[o.copy() for o in origin]]
    )


def _realtime_union(node: exp.Table, definition: Definition, watermark: str) -> exp.Expr:
    """``(stored rows before the watermark UNION ALL BY NAME the query from it on)``."""
    db, catalog = node.args.get("db"), node.args.get("catalog")
    stored = exp.Table(
        this=node.this.copy(),
        db=db.copy() if isinstance(db, exp.Expr) else None,
        catalog=catalog.copy() if isinstance(catalog, exp.Expr) else None,
    )
    stored.meta[_MATERIALIZED] = True
    bucket = exp.column(definition.bucket, quoted=True)
    cut = _ts(datetime.fromisoformat(watermark))
    old = exp.select(exp.Star()).from_(stored).where(bucket < cut)
    live = definition.query.copy()
    live.where(exp.column(definition.time, quoted=True) >= cut.copy(), copy=False)
    union = exp.Union(this=old, expression=live, distinct=False, by_name=True)
    alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
    return exp.Subquery(this=union, alias=alias.copy())


# -- literals -----------------------------------------------------------------------------------
def _pinned(query: exp.Select, version: int) -> exp.Select:
    """``query`` reading its one table at ``version`` (so the version recorded is what was
    read, whatever is committed meanwhile)."""
    pinned = query.copy()
    for table in pinned.find_all(exp.Table):
        if isinstance(table.this, exp.Identifier) and not is_cte_reference(table):
            table.set(
                "version",
                exp.Version(this="VERSION", kind="AS OF", expression=exp.Literal.number(version)),
            )
    return pinned


def _naive(value: Any) -> datetime:
    """A timestamp as UTC wall time (the engine's session time zone is UTC)."""
    if not isinstance(value, datetime):
        raise SQLError(f"time_bucket() gave {value!r}, not a timestamp")
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def _text(value: datetime) -> str:
    return value.isoformat(sep=" ")


def _ts(value: Any) -> exp.Expr:
    if isinstance(value, datetime):
        value = _naive(value)
        return exp.cast(exp.Literal.string(_text(value)), exp.DataType.build("TIMESTAMP"))
    return exp.cast(exp.Literal.string(str(value)), exp.DataType.build("TIMESTAMP"))
