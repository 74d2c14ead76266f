"""Binding: each table reference of a query resolved in the catalog, at its version (time
travel), to a scan of that snapshot pruned by the query's predicates on the table's columns.

Also the folding of constant expressions (time-travel arguments, predicate values, the
platform functions' arguments) on a connection that may touch no file.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import duckdb
from sqlglot import exp

from matrixos._lru import LRU
from matrixos.catalog import TableIdent, TableInfo, lineage_runs
from matrixos.catalog.service import VIEW_FORMAT
from matrixos.engine.sandbox import check_query
from matrixos.engine.scan import DatasetScan, Predicate, PrunedScan, Snapshot, load_snapshot, prune
from matrixos.engine.sql.errors import engine_error
from matrixos.engine.sql.plans import LIFTED
from matrixos.errors import AccessDenied, MatrixOSError, NotSupported, SQLError
from matrixos.storage.tablestore import store_class

if TYPE_CHECKING:
    from collections.abc import Callable

    from matrixos.catalog.access import Principal
    from matrixos.catalog.service import TableService

Bound = list[tuple[TableIdent, PrunedScan | DatasetScan]]

_CMP: dict[type[exp.Expr], str] = {
    exp.EQ: "=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.GT: ">",
    exp.GTE: ">=",
}
_FLIP = {"=": "=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
# Modifiers that would select other rows than the table's current ones and have no meaning
# here: refused rather than dropped (hints such as T-SQL's NOLOCK change no result). What
# applies to the rows read (PIVOT, TABLESAMPLE, …) stays with the scan: ``local.TABLE_CARRIED``.
_TABLE_REFUSED = {
    "changes": "CHANGES",
    "partition": "PARTITION (…)",
    "format": "FILE_FORMAT",
    "pattern": "PATTERN",
    "rows_from": "ROWS FROM",
    "system_time": "FOR SYSTEM_TIME",
}
# Meta of a table reference a row filter or mask wraps (engine.sql.row_security): the masked
# columns (lower case); files are pruned by the query's conditions around its subquery (the
# nearest one above it) on the other columns too. No node is kept in meta: trees are copied.
SECURED = "mx_secured"
SECURED_SOURCE = "mx_secured_source"  # meta of a policy subquery: it stands for one table
_SNAPSHOTS = 64  # Delta snapshots kept per engine (file lists of recent versions)


class Binder:
    """Resolves and binds the table references of one session's queries.

    ``service`` resolves and authorizes names and opens a table's data at a version;
    ``planning`` is a connection that may touch no file (constant folding).
    """

    def __init__(
        self, service: TableService, planning: Callable[[], duckdb.DuckDBPyConnection]
    ) -> None:
        self.service = service
        self._planning = planning
        self._snapshots: LRU[tuple[str, int], Snapshot] = LRU(_SNAPSHOTS)
        # Told when binding evaluates something whose value may change between runs (a
        # constant DuckDB folds, a time-travel offset): the plan is then not reused.
        self.volatile: Callable[[], None] = _nothing

    def clear(self) -> None:
        """Forget the cached snapshots."""
        self._snapshots.clear()

    # -- the catalog and the table's data (through the table service) ----------------------
    def table_info(self, ident: TableIdent, principal: Principal) -> TableInfo:
        """The catalog entry of ``ident``, which ``principal`` may read (``TableNotFound``
        when there is none, ``AccessDenied`` without ``SELECT``)."""
        return self.service.resolve(principal, ident, "SELECT")

    def snapshot(
        self, info: TableInfo, version: int | None = None, timestamp: Any = None
    ) -> Snapshot:
        """The Delta table's file list at a version (latest by default), cached per version."""
        dt = self.service.snapshot(info, version, timestamp)
        key = (info.location, int(dt.version()))
        snap = self._snapshots.get(key)
        if snap is None:
            snap = load_snapshot(dt)
            self._snapshots.put(key, snap)
        return snap

    def dataset_scan(self, info: TableInfo, version: int | None, timestamp: Any) -> DatasetScan:
        """A table DuckDB scans as a dataset (Lance, or any format without Delta's file
        lists) at a version (latest by default)."""
        store = self.service.store(info)
        ds = store.dataset(version, timestamp)
        return DatasetScan(info.location, store.version(ds), ds, info.format)

    # -- binding ----------------------------------------------------------------------------
    def bind(
        self, refs: list[exp.Table], principal: Principal, trace: Trace | None = None
    ) -> Bound:
        """Resolve every table reference (each checked for ``principal``'s ``SELECT``) to a
        pruned scan of its snapshot; with ``trace``, what the pruning made of lifted
        literals is recorded there."""
        snaps: list[tuple[exp.Table, TableInfo, Snapshot | DatasetScan]] = []
        # A table named twice (self-joins, subqueries: TPC-H Q2, Q21) is looked up and its
        # snapshot loaded once, so every reference also reads the same version.
        infos: dict[tuple[str, str, str], TableInfo] = {}
        seen: dict[tuple[str, int | None, Any], Snapshot | DatasetScan] = {}
        latest: set[int] = set()  # references that read the latest version (no time travel)
        for node in refs:
            key = (node.catalog, node.db, node.name)
            info = infos.get(key)
            if info is None:
                ident = TableIdent.from_parts(node.catalog or None, node.db or None, node.name)
                info = infos[key] = self.table_info(ident, principal)
            version, timestamp = self.time_travel(node)
            skey = (info.location, version, timestamp)
            snap = seen.get(skey)
            if snap is None:
                # Delta tables are read from their file lists (engine.scan: pruning, deletion
                # vectors, column mapping); any other format as its store's dataset.
                if info.format == VIEW_FORMAT:  # rows computed for the principal
                    rows = self.service.view_rows(info, principal)
                    snap = seen[skey] = DatasetScan(info.location, 0, rows, VIEW_FORMAT)
                else:
                    snap = seen[skey] = self.own_rows(
                        principal,
                        info,
                        self.snapshot(info, version, timestamp)
                        if store_class(info.format).file_lists
                        else self.dataset_scan(info, version, timestamp),
                    )
            snaps.append((node, info, snap))
            lineage_runs.read(info.name, snap.version)
            if (version, timestamp) == (None, None):
                latest.add(id(node))
        out: Bound = []
        for i, (node, info, snap) in enumerate(snaps):
            if isinstance(snap, DatasetScan):
                out.append((info.ident, snap))
                continue
            record: Traced | None = None
            if trace is not None:
                record = trace.predicates[i] = []
            preds = self._predicates(node, snap, snaps, record, trace)
            scan = prune(snap, preds)
            if id(node) in latest:
                # Rows a write-ahead log acknowledged are part of the latest version.
                scan.pending = self.service.pending_rows(info.ident, snap.version)
            out.append((info.ident, scan))
        return out

    def own_rows(
        self, principal: Principal, info: TableInfo, snap: Snapshot | DatasetScan
    ) -> Snapshot | DatasetScan:
        """``snap``, or only its files of ``principal``'s own partition when the service says
        it may read only its own rows of the table (``system.query.history``): the other
        rows are never read, so no predicate, join or time travel of the query reaches them."""
        own = self.service.own_rows(principal, info)
        if own is None:
            return snap
        column, value = own
        if isinstance(snap, DatasetScan) or column not in snap.partition_columns:
            raise AccessDenied(  # not partitioned by the principal: no safe way to cut it
                f"{principal.name} has no SELECT privilege on {info.name}",
                hint=f"an admin can run: GRANT SELECT ON TABLE {info.name} TO {principal.name}",
            )
        at = snap.partition_columns.index(column)
        mine = [f for f in snap.files if f.partition[at] == value]
        return dataclasses.replace(snap, files=mine)

    # -- time travel ------------------------------------------------------------------------
    def time_travel(self, node: exp.Table) -> tuple[int | None, Any]:
        """The version or timestamp a table reference reads (``None, None``: the latest)."""
        _check_table_modifiers(node)
        when = node.args.get("when")
        if when is not None:
            return self._historical(node, when)
        v = node.args.get("version")
        if v is None:
            return None, None
        value = self.constant(v.expression)
        kind = str(v.this).upper()
        if kind == "VERSION":
            try:
                return int(value), None
            except (TypeError, ValueError) as e:
                raise SQLError(f"VERSION AS OF needs an integer, got {value!r}") from e
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError as e:
                raise SQLError(f"TIMESTAMP AS OF needs a timestamp, got {value!r}") from e
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return None, value

    def _historical(self, node: exp.Table, when: exp.Expr) -> tuple[int | None, Any]:
        """Snowflake's ``AT (VERSION | TIMESTAMP | OFFSET => …)`` and ``BEFORE (VERSION => n)``
        as Delta/Lance time travel; the rest (``STATEMENT``, ``BEFORE`` a time) has no
        equivalent and is refused, never ignored."""
        where = str(when.this).upper()
        kind = str(when.args.get("kind") or "").upper()
        text = f"{where} ({kind} => {when.expression.sql(dialect='snowflake')})"
        if node.args.get("version") is not None:
            raise SQLError(f"{text} and AS OF on one table reference", sql=node.sql())
        supported = (where == "AT" and kind in ("VERSION", "TIMESTAMP", "OFFSET")) or (
            where == "BEFORE" and kind == "VERSION"
        )
        if not supported:
            raise NotSupported(
                f"time travel {text} is not supported",
                hint="use AT (VERSION => n), AT (TIMESTAMP => '…'), AT (OFFSET => -seconds) or "
                "BEFORE (VERSION => n); DESCRIBE HISTORY lists the versions",
            )
        value = self.constant(when.expression)
        if kind == "VERSION":
            if not isinstance(value, int) or isinstance(value, bool):
                raise SQLError(f"{text} needs an integer version", sql=node.sql())
            if where == "BEFORE" and value <= 0:
                raise SQLError(f"{text}: there is no version before {value}", sql=node.sql())
            return (value - 1 if where == "BEFORE" else value), None
        if kind == "OFFSET":
            if not isinstance(value, int | float | Decimal) or isinstance(value, bool):
                raise SQLError(f"{text} needs a number of seconds", sql=node.sql())
            self.volatile()
            return None, datetime.now(UTC) + timedelta(seconds=float(value))
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError as e:
                raise SQLError(f"{text} needs a timestamp", sql=node.sql()) from e
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)
        if not isinstance(value, datetime):
            raise SQLError(f"{text} needs a timestamp", sql=node.sql())
        return None, value if value.tzinfo else value.replace(tzinfo=UTC)

    # -- constants --------------------------------------------------------------------------
    def constant(self, node: exp.Expr) -> Any:
        """The value of a constant expression (``SQLError`` when it reads a column)."""
        if node.find(exp.Column, exp.Query):
            raise SQLError(f"{node.sql()} must be a constant")
        value = _literal_value(node)
        if value is not _NOT_LITERAL:
            return value
        if not _deterministic(node):
            self.volatile()  # now(), current_date, random(): decided when it runs
        # Callers check their statements first; checked again here because this connection
        # runs the expression as it stands.
        select = exp.select(node.copy())
        check_query(select)
        try:
            # Through Arrow: DuckDB's own Python conversion of TIMESTAMPTZ needs pytz.
            table = self._planning().sql(select.sql(dialect="duckdb")).to_arrow_table()
        except duckdb.Error as e:
            raise engine_error(e, node.sql()) from e
        return table.column(0)[0].as_py() if table.num_rows else None

    # -- predicates for pruning -------------------------------------------------------------
    def _predicates(
        self,
        node: exp.Table,
        snap: Snapshot,
        all_snaps: list[tuple[exp.Table, TableInfo, Snapshot | DatasetScan]],
        record: Traced | None = None,
        trace: Trace | None = None,
    ) -> list[Predicate]:
        preds = self._where(node, node, snap, all_snaps, frozenset(), record, trace)
        masked = node.meta.get(SECURED)
        if masked is not None:
            # In a row filter's subquery (row_security): the query's own conditions around
            # it prune too, on the columns no mask replaces (they compare the real values).
            preds += self._where(_anchor(node), node, snap, all_snaps, masked, record, trace)
        return preds

    def _where(
        self,
        anchor: exp.Expr,
        node: exp.Table,
        snap: Snapshot,
        all_snaps: list[tuple[exp.Table, TableInfo, Snapshot | DatasetScan]],
        masked: frozenset[str],
        record: Traced | None = None,
        trace: Trace | None = None,
    ) -> list[Predicate]:
        """The predicates on ``node``'s columns of the WHERE of the select ``anchor`` (the
        table reference, or the policy subquery standing for it) reads from."""
        sel = _select_of(anchor)
        if sel is None or not sel.args.get("where"):
            return []
        alias = anchor.args.get("alias")
        if anchor is not node and alias is not None and alias.columns:
            return []  # renamed columns: the names outside are not the table's
        siblings = [s for n, _, s in all_snaps if n is not node and _select_of(_anchor(n)) is sel]
        sources = list(sel.find_all(exp.From, exp.Join))
        only_tables = all(
            isinstance(s.this, exp.Table) or s.this.meta.get(SECURED_SOURCE)
            for s in sources
            if s.find_ancestor(exp.Select) is sel
        )
        mine = {f.name.lower() for f in snap.schema} - masked
        theirs = {f.name.lower() for s in siblings for f in s.schema}
        qualifier = anchor.alias_or_name.lower()

        def owns(col: exp.Column) -> str | None:
            name = col.name.lower()
            if name not in mine:
                return None
            if col.table:
                return name if col.table.lower() == qualifier else None
            return name if only_tables and name not in theirs else None

        names = {f.name.lower(): f.name for f in snap.schema}
        preds: list[Predicate] = []
        for conj in conjuncts(sel.args["where"].this):
            p = self._predicate(conj, owns)
            if p is not None:
                preds.append(Predicate(names[p.column], p.op, p.value))
                if record is not None and trace is not None:
                    record.append((preds[-1], trace.sources(conj)))
        return preds

    def _predicate(self, e: exp.Expr, owns: Any) -> Predicate | None:
        try:
            if type(e) in _CMP:
                op = _CMP[type(e)]
                left, right = e.this, e.expression
                if isinstance(right, exp.Column) and not isinstance(left, exp.Column):
                    left, right, op = right, left, _FLIP[op]
                if isinstance(left, exp.Column) and (col := owns(left)) and _is_const(right):
                    return Predicate(col, op, self.constant(right))
            elif isinstance(e, exp.In) and isinstance(e.this, exp.Column):
                col = owns(e.this)
                values = e.expressions
                if col and values and all(_is_const(v) for v in values):
                    return Predicate(col, "in", [self.constant(v) for v in values])
            elif isinstance(e, exp.Between) and isinstance(e.this, exp.Column):
                col = owns(e.this)
                lo, hi = e.args.get("low"), e.args.get("high")
                if col and lo is not None and _is_const(lo) and _is_const(hi):
                    # Two predicates collapse into one range test via the caller's AND.
                    return Predicate(col, ">=", self.constant(lo))
            elif isinstance(e, exp.Is) and isinstance(e.this, exp.Column):
                if isinstance(e.expression, exp.Null) and (col := owns(e.this)):
                    return Predicate(col, "isnull")
            elif isinstance(e, exp.Not) and isinstance(e.this, exp.Is):
                inner = e.this
                if isinstance(inner.this, exp.Column) and isinstance(inner.expression, exp.Null):
                    col = owns(inner.this)
                    return Predicate(col, "notnull") if col else None
        except MatrixOSError:
            return None  # not foldable here; DuckDB will evaluate it per row
        return None


# A pruning predicate and where its value came from: None (no lifted literal), else per value
# (one; an IN list's each) the lifted literal's index and how it was wrapped, or None (kept).
Source = tuple[int, str]
Traced = list[tuple[Predicate, tuple[Source | None, ...] | None]]


@dataclass
class Trace:
    """What pruning made of a statement's lifted literals (``plans.compared_literals``
    marks them): per table reference (by index), every predicate its files were pruned by,
    with where each value came from (``Reprune`` prunes again with other values); and the
    literals a predicate used in a way not followed (they stay as written: ``opaque``)."""

    predicates: dict[int, Traced] = field(default_factory=dict)
    opaque: set[int] = field(default_factory=set)

    def sources(self, conj: exp.Expr) -> tuple[Source | None, ...] | None:
        """Where the value of ``conj``'s predicate (as ``Binder._predicate`` reads it) came
        from; its other lifted literals are opaque."""
        if type(conj) in _CMP:
            left, right = conj.this, conj.expression
            values = [left if isinstance(right, exp.Column) else right]
        elif isinstance(conj, exp.In):
            values = list(conj.expressions)
        else:
            values = []
        found = tuple(_source(v) for v in values)
        followed = {s[0] for s in found if s is not None}
        self.opaque |= {
            n.meta[LIFTED] for n in conj.find_all(exp.Literal) if LIFTED in n.meta
        } - followed
        return found if followed else None


def _source(node: exp.Expr) -> Source | None:
    wrap = ""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Neg):
        wrap, node = "-", node.this
    elif isinstance(node, exp.Cast) and isinstance(node.to, exp.DataType):
        wrap, node = node.to.sql(), node.this
    slot = node.meta.get(LIFTED) if isinstance(node, exp.Literal) else None
    return (slot, wrap) if isinstance(slot, int) else None


@functools.lru_cache(maxsize=4096)  # a repeated text prunes again with the same values
def lifted_value(text: str, wrap: str) -> Any:
    """The value binding gives a lifted literal written ``text`` (wrapped as ``Source``
    says); ``NOT_LITERAL`` when it would ask DuckDB."""
    lit = (
        exp.Literal.string(text[1:-1].replace("''", "'"))
        if text.startswith("'")
        else exp.Literal.number(text)
    )
    node: exp.Expr = lit
    if wrap == "-":
        node = exp.Neg(this=lit)
    elif wrap:
        node = exp.Cast(this=lit, to=exp.DataType.build(wrap))
    return _literal_value(node)


@dataclass(frozen=True)
class Reprune:
    """One table reference of a kept plan, pruned again for other values of its lifted
    literals: ``files`` gives the paths a fresh plan would read (None when a value needs
    DuckDB to fold: plan afresh)."""

    snapshot: Snapshot
    predicates: tuple[tuple[Predicate, tuple[Source | None, ...] | None], ...]
    # files by the literals used: a text sent again (a dashboard) prunes once
    _memo: LRU[tuple[str, ...], tuple[str, ...] | None] = field(
        default_factory=lambda: LRU(64), compare=False, repr=False
    )

    def files(self, texts: tuple[str, ...]) -> tuple[str, ...] | None:
        used = tuple(texts[s[0]] for _, ss in self.predicates for s in ss or () if s is not None)
        found = self._memo.get(used)
        if found is None:
            found = self._files(texts)
            self._memo.put(used, found)
        return found

    def _files(self, texts: tuple[str, ...]) -> tuple[str, ...] | None:
        preds = []
        for p, sources in self.predicates:
            if sources is None:
                preds.append(p)
                continue
            olds = p.value if p.op == "in" else [p.value]
            values = []
            for old, source in zip(olds, sources, strict=True):
                value = old if source is None else lifted_value(texts[source[0]], source[1])
                if value is NOT_LITERAL:
                    return None
                values.append(value)
            preds.append(Predicate(p.column, p.op, values if p.op == "in" else values[0]))
        return tuple(f.path for f in prune(self.snapshot, preds).files)


def conjuncts(e: exp.Expr) -> list[exp.Expr]:
    """The terms of ``e``'s top-level ANDs (a BETWEEN as its two comparisons).

    Example:
        >>> import sqlglot
        >>> [c.sql() for c in conjuncts(sqlglot.parse_one("a = 1 AND (b BETWEEN 2 AND 3)"))]
        ['a = 1', 'b >= 2', 'b <= 3']
    """
    if isinstance(e, exp.And):
        return conjuncts(e.this) + conjuncts(e.expression)
    if isinstance(e, exp.Paren):
        return conjuncts(e.this)
    if isinstance(e, exp.Between):
        lo = exp.GTE(this=e.this.copy(), expression=e.args["low"].copy())
        hi = exp.LTE(this=e.this.copy(), expression=e.args["high"].copy())
        return [lo, hi]
    return [e]


def _anchor(node: exp.Table) -> exp.Expr:
    """What stands for a table reference in its query: its policy subquery, or itself."""
    if node.meta.get(SECURED) is None:
        return node
    return node.find_ancestor(exp.Subquery) or node


def _select_of(node: exp.Expr) -> exp.Expr | None:
    p = node.parent
    while p is not None and not isinstance(p, exp.Select):
        p = p.parent
    return p


def _check_table_modifiers(node: exp.Table) -> None:
    for key, what in _TABLE_REFUSED.items():
        if node.args.get(key):
            raise NotSupported(
                f"{what} on table {node.name} is not supported", sql=node.sql(dialect="duckdb")
            )


_NOT_LITERAL: Any = object()
NOT_LITERAL = _NOT_LITERAL
_INTEGER = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+\.[0-9]*|\.[0-9]+")
_SCIENTIFIC = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ISO_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
)


def _literal_value(node: exp.Expr) -> Any:
    """The value DuckDB would give a plain literal (``42``, ``0.05``, ``'x'``,
    ``CAST('1998-09-02' AS DATE)``), or ``_NOT_LITERAL``: a round trip to DuckDB per constant
    cost about 1 ms, and TPC-H's predicates hold several."""
    if isinstance(node, exp.Literal):
        text = node.this
        if node.is_string:
            return text
        if _INTEGER.fullmatch(text):
            return int(text)
        if _DECIMAL.fullmatch(text):
            return Decimal(text)
        if _SCIENTIFIC.fullmatch(text):
            return float(text)  # DuckDB reads 1e-05 as a DOUBLE
    elif isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
        value = _literal_value(node.this)
        if isinstance(value, int | Decimal | float) and not isinstance(value, bool):
            return -value
    elif isinstance(node, exp.Array) and node.expressions:
        # A query vector of a search function: hundreds of numbers, ~50 ms through DuckDB.
        values = [_literal_value(e) for e in node.expressions]
        if not all(isinstance(v, int | Decimal | float) for v in values):
            return _NOT_LITERAL
        if any(isinstance(v, float) for v in values):  # DuckDB's common type: DOUBLE
            return [float(v) for v in values]
        if any(isinstance(v, Decimal) for v in values):
            return [Decimal(v) for v in values]
        return values
    elif (
        isinstance(node, exp.Cast)
        and isinstance(node.this, exp.Literal)
        and node.this.is_string
        and node.to.is_type(exp.DataType.Type.DATE)
        and _ISO_DATE.fullmatch(node.this.this)
    ):
        try:
            return date.fromisoformat(node.this.this)
        except ValueError:
            return _NOT_LITERAL
    elif (
        isinstance(node, exp.Cast)
        and isinstance(node.this, exp.Literal)
        and node.this.is_string
        and node.to.is_type(exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPNTZ)
        and _ISO_TIMESTAMP.fullmatch(node.this.this)
    ):
        # TIMESTAMP '2026-01-01 00:00:00' (time-series ranges): naive, as DuckDB gives it
        try:
            return datetime.fromisoformat(node.this.this)
        except ValueError:
            return _NOT_LITERAL
    return _NOT_LITERAL


# What a constant DuckDB folds may hold and still mean the same at every run: literals,
# arithmetic, casts and intervals. Anything else (now(), current_date, random(), a cast of
# 'now' or 'today') makes the plan that used its value one not to keep.
_STABLE = (
    exp.Literal,
    exp.Cast,
    exp.TryCast,
    exp.DataType,
    exp.DataTypeParam,
    exp.Interval,
    exp.Var,
    exp.Neg,
    exp.Paren,
    exp.Boolean,
    exp.Null,
    exp.Array,
    exp.Tuple,
    exp.Binary,
)


def _deterministic(node: exp.Expr) -> bool:
    for n in node.walk():
        if not isinstance(n, _STABLE):
            return False
        if isinstance(n, exp.Cast | exp.TryCast) and isinstance(n.this, exp.Literal):
            text = n.this.this if n.this.is_string else ""
            if text and not text.lstrip()[:1].isdigit():
                return False  # 'now', 'today', 'epoch', 'infinity'
    return True


def _nothing() -> None:
    pass


def _is_const(e: exp.Expr | None) -> bool:
    return e is not None and e.find(exp.Column, exp.Query, exp.Placeholder) is None
