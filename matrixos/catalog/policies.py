"""Row filters and column masks: which rows of a table an account sees, and what it sees of a
column.

A *row filter* is a SQL predicate over the table's columns bound to (table, account); a *column
mask* is a SQL expression that replaces one column's value, bound to (table, column, account).
Both live in the catalog database (``mx_policies``, SQLite or PostgreSQL), keyed by the table's
full name; dropping the table drops them.

Which apply to a principal (``applying``):

- a policy bound to the principal's own name always applies;
- one bound to a group applies to its members (directly or through other groups);
- the table's owner and admins are exempt from policies bound to their groups, not from one
  bound to their own name (an admin testing a filter on itself sees it work);
- several row filters that apply are ANDed (a row is seen only if every filter passes); of
  several masks on one column, the one bound to the principal's own name wins, else the first
  group's in name order (one mask per column, so values are never masked twice).

Enforced in one place, the SQL engine's binding of table references
(``matrixos.engine.sql.row_security``); this module only stores and selects them.

Example:
    >>> from matrixos.catalog import open_catalog
    >>> from matrixos.catalog.access import Principal
    >>> store = PolicyStore(open_catalog("sqlite://"))
    >>> store.put(Policy("main.s.t", FILTER, "", "analysts", "region = 'EU'"))
    >>> bob = Principal("bob", frozenset(), frozenset({"analysts"}))
    >>> store.applying(bob, ["main.s.t"], lambda table: "alice")["main.s.t"].filters
    ("region = 'EU'",)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from matrixos.catalog.access import Principal
from matrixos.catalog.base import Catalog, now
from matrixos.catalog.cache import CatalogCache
from matrixos.catalog.store import METADATA
from matrixos.errors import ConcurrentWriteError, NotSupported

FILTER = "row filter"
MASK = "mask"

POLICIES = sa.Table(
    "mx_policies",
    METADATA,
    sa.Column("table_name", sa.String(400), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("column_name", sa.String(256), primary_key=True),  # "" for a row filter
    sa.Column("account", sa.String(256), primary_key=True),
    sa.Column("expression", sa.Text, nullable=False),
    sa.Column("cast_to", sa.Text),  # a mask's cast to the column's type, when it needs one
    sa.Column("created_by", sa.String(256)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


# Built once: every query asks it (SQLAlchemy then reuses its compiled form, ~2x faster).
_OF_TABLES = sa.select(POLICIES).where(
    POLICIES.c.table_name.in_(sa.bindparam("names", expanding=True))
)


@dataclass(frozen=True)
class Policy:
    """One row filter (``kind=FILTER``, ``column=""``) or column mask (``kind=MASK``)."""

    table: str
    kind: str
    column: str
    account: str
    expression: str
    cast_to: str | None = None
    created_by: str | None = None
    created_at: datetime = field(default_factory=now)


@dataclass(frozen=True)
class TablePolicy:
    """What applies to one principal on one table: the filters to AND, and per column the mask
    expression and the type its value is cast to (None: it has the column's type already)."""

    table: str
    filters: tuple[str, ...] = ()
    masks: tuple[tuple[str, str, str | None], ...] = ()
    hidden: tuple[str, ...] = ()  # columns read only for the policy, left out of the result
    limit: int | None = None  # a search's k, when its filters run after the search

    @property
    def columns(self) -> frozenset[str]:
        """The columns its filters and masks read, masked ones included (as spelled there)."""
        # Lazily: the catalog is opened by CLI commands that never parse SQL.
        import sqlglot
        from sqlglot import exp

        out = {c for c, _, _ in self.masks}
        for sql in (*self.filters, *(m for _, m, _ in self.masks)):
            out.update(c.name for c in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Column))
        return frozenset(out)

    @property
    def masked(self) -> frozenset[str]:
        """The masked columns' names, lower case."""
        return frozenset(c.lower() for c, _, _ in self.masks)


def applies(account: str, principal: Principal, owner: str | None) -> bool:
    """Whether a policy bound to ``account`` applies to ``principal`` on a table ``owner``
    owns (see the module's docs: owners and admins only by their own name)."""
    if account == principal.name:
        return True
    exempt = principal.is_admin or (owner is not None and owner == principal.name)
    return not exempt and account in principal.groups


class PolicyStore:
    """The policies of one catalog. On a catalog that is not a SQL database (the object-store
    catalog) none can be defined (``NotSupported``) and none apply.

    With ``cache`` (``catalog.cache``), each table's policies are read once per catalog
    change (any process's ``put`` or ``remove`` moves the catalog's change counter)."""

    def __init__(self, catalog: Catalog, cache: CatalogCache | None = None) -> None:
        self.cache = cache
        engine = getattr(catalog, "engine", None)
        self.engine: sa.Engine | None = engine if isinstance(engine, sa.Engine) else None
        if self.engine is not None:
            try:
                POLICIES.create(self.engine, checkfirst=True)
            except (IntegrityError, OperationalError):
                # another process created it at the same moment
                POLICIES.create(self.engine, checkfirst=True)

    def _engine(self) -> sa.Engine:
        if self.engine is None:
            raise NotSupported(
                "row filters and column masks need a catalog database (SQLite or PostgreSQL)",
                hint="connect with catalog_url='postgresql://…' or the default SQLite catalog",
            )
        return self.engine

    def put(self, policy: Policy) -> None:
        """Add ``policy``, replacing the one with the same table, kind, column and account."""
        key = _key(policy.table, policy.kind, policy.column, policy.account)
        row = {
            "table_name": policy.table,
            "kind": policy.kind,
            "column_name": policy.column,
            "account": policy.account,
            "expression": policy.expression,
            "cast_to": policy.cast_to,
            "created_by": policy.created_by,
            "created_at": policy.created_at,
        }
        for _ in range(3):  # a concurrent put of the same key: the later one wins
            try:
                with self._engine().begin() as conn:
                    conn.execute(POLICIES.delete().where(*key))
                    conn.execute(POLICIES.insert().values(**row))
                return
            except IntegrityError:
                continue
        raise ConcurrentWriteError(
            f"the {policy.kind} of {policy.table} for {policy.account} is being changed "
            "concurrently",
            hint="try again",
        )

    def remove(self, table: str, kind: str, column: str, account: str) -> bool:
        """Remove one policy; whether there was one."""
        if self.engine is None:
            return False
        with self.engine.begin() as conn:
            return bool(
                conn.execute(POLICIES.delete().where(*_key(table, kind, column, account))).rowcount
            )

    def drop_table(self, table: str) -> None:
        """Remove every policy of a dropped table."""
        if self.engine is not None:
            with self.engine.begin() as conn:
                conn.execute(POLICIES.delete().where(POLICIES.c.table_name == table))

    def list(self, table: str | None = None) -> list[Policy]:
        """The policies (of ``table``), by table, kind, column and account."""
        if self.engine is None:
            return []
        q = sa.select(POLICIES).order_by(
            POLICIES.c.table_name, POLICIES.c.kind, POLICIES.c.column_name, POLICIES.c.account
        )
        if table is not None:
            q = q.where(POLICIES.c.table_name == table)
        with self.engine.connect() as conn:
            return [_policy(r) for r in conn.execute(q)]

    def applying(
        self, principal: Principal, tables: Sequence[str], owner_of: Callable[[str], str | None]
    ) -> dict[str, TablePolicy]:
        """What applies to ``principal`` on each of ``tables`` (full names) that has a policy
        for it; tables with none are left out. One query for all of them; ``owner_of`` (a
        table's owner) is asked only about tables that have policies."""
        if self.engine is None or not tables:
            return {}
        rows = self._of_tables(sorted(set(tables)))
        owners = {t: owner_of(t) for t in {p.table for p in rows}}
        out: dict[str, TablePolicy] = {}
        for table in sorted({p.table for p in rows}):
            mine = [
                p for p in rows if p.table == table and applies(p.account, principal, owners[table])
            ]
            filters = tuple(p.expression for p in sorted(mine, key=_order) if p.kind == FILTER)
            masks: dict[str, Policy] = {}
            for p in sorted(
                (p for p in mine if p.kind == MASK),
                key=lambda p: (p.account != principal.name, p.account),
            ):
                masks.setdefault(p.column.lower(), p)
            if filters or masks:
                out[table] = TablePolicy(
                    table,
                    filters,
                    tuple((p.column, p.expression, p.cast_to) for p in masks.values()),
                )
        return out

    def _of_tables(self, names: Sequence[str]) -> tuple[Policy, ...]:
        """Every policy of the tables ``names`` (through the cache when there is one)."""
        engine = self._engine()

        def read(missing: Sequence[Hashable]) -> dict[Hashable, Any]:
            wanted = [str(k[1]) for k in missing]  # type: ignore[index]
            with engine.connect() as conn:
                rows = [_policy(r) for r in conn.execute(_OF_TABLES, {"names": wanted})]
            return {("policies", n): tuple(p for p in rows if p.table == n) for n in wanted}

        keys: Sequence[Hashable] = [("policies", n) for n in names]
        found = read(keys) if self.cache is None else self.cache.get_many(keys, read)
        return tuple(p for k in keys for p in found[k])


def _order(p: Policy) -> tuple[str, str]:
    return p.account, p.column


def _key(table: str, kind: str, column: str, account: str) -> list[sa.ColumnElement[bool]]:
    return [
        POLICIES.c.table_name == table,
        POLICIES.c.kind == kind,
        POLICIES.c.column_name == column,
        POLICIES.c.account == account,
    ]


def _policy(row: sa.Row[tuple[object, ...]]) -> Policy:
    created = row.created_at
    return Policy(
        table=row.table_name,
        kind=row.kind,
        column=row.column_name,
        account=row.account,
        expression=row.expression,
        cast_to=row.cast_to,
        created_by=row.created_by,
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
    )
