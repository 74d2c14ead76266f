"""SQL cursors over the wire: ``DECLARE c CURSOR FOR …``, ``FETCH [FORWARD] n FROM c``,
``CLOSE c``, as psycopg's server-side cursors and psql's ``FETCH_COUNT`` use them.

A declared cursor is a protocol portal of its connection (a client may ``Describe`` it by name,
as psycopg does); ``FETCH`` drains it in steps, so a large result never sits whole in the
server. Cursors end with ``CLOSE`` or the connection (``WITH HOLD`` or not: MatrixOS runs each
statement on its own snapshot, so a cursor reads the snapshot it was declared on).

Example:
    >>> bool(DECLARE_RE.match('DECLARE "c" CURSOR WITHOUT HOLD FOR SELECT 1'))
    True
    >>> FETCH_RE.match('FETCH FORWARD 100 FROM "c"').group("count", "name")
    ('100', '"c"')
"""

from __future__ import annotations

import re
from typing import Any

from pg_mimic import Portal, ResultColumn, Statement
from pg_mimic.connection import PortalEntry
from pg_mimic.errors import PgError
from pg_mimic.middleware import MiddlewareContext

DECLARE_RE = re.compile(
    r"^\s*DECLARE\s+(?P<name>\"[^\"]+\"|\w+)\s+(?:BINARY\s+)?(?:INSENSITIVE\s+)?"
    r"(?:(?:NO\s+)?SCROLL\s+)?CURSOR\s+(?:WITH(?:OUT)?\s+HOLD\s+)?FOR\s+(?P<query>.+?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
FETCH_RE = re.compile(
    r"^\s*FETCH\s+(?:(?:FORWARD|NEXT)\s+)?(?P<count>\d+|ALL)?\s*(?:FROM|IN)\s+"
    r"(?P<name>\"[^\"]+\"|\w+)\s*;?\s*$",
    re.IGNORECASE,
)
CLOSE_RE = re.compile(r"^\s*CLOSE\s+(?P<name>\"[^\"]+\"|\w+)\s*;?\s*$", re.IGNORECASE)


def _name(raw: str) -> str:
    return raw[1:-1] if raw.startswith('"') else raw.lower()


async def cursors(ctx: MiddlewareContext) -> Statement | None:
    """DECLARE/FETCH/CLOSE statements (a middleware link of the wire session)."""
    if m := DECLARE_RE.match(ctx.sql):
        inner = await ctx.connection.session.prepare(m.group("query"), ctx.param_oids)
        return DeclareStatement(ctx.connection, _name(m.group("name")), inner)
    if m := FETCH_RE.match(ctx.sql):
        count = m.group("count")
        n = 1 if count is None else 0 if count.upper() == "ALL" else int(count)
        return FetchStatement(ctx.connection, _name(m.group("name")), n)
    if m := CLOSE_RE.match(ctx.sql):
        return CloseStatement(ctx.connection, _name(m.group("name")))
    return None


def _cursor(connection: Any, name: str) -> PortalEntry:
    entry = connection.portals.get(name)
    if entry is None:
        raise PgError("34000", f'cursor "{name}" does not exist')
    return entry


class DeclareStatement(Statement):
    """``DECLARE name CURSOR FOR query``: runs the query and keeps it as portal ``name``."""

    def __init__(self, connection: Any, name: str, inner: Statement) -> None:
        self.connection = connection
        self.name = name
        self.inner = inner
        self.sql = f"DECLARE {name}"
        self.param_oids = inner.param_oids

    async def describe(self) -> list[ResultColumn] | None:
        return None

    def bind(self, params: list[Any]) -> Portal:
        return _DeclarePortal(self, params)


class _DeclarePortal(Portal):
    def __init__(self, statement: DeclareStatement, params: list[Any]) -> None:
        self.statement = statement
        self.params = params

    async def execute(self, max_rows: int) -> tuple[list[tuple[Any, ...]], bool]:
        s = self.statement
        if s.name in s.connection.portals:
            raise PgError("42P03", f'cursor "{s.name}" already exists')
        portal = s.inner.bind(self.params)
        columns = await s.inner.describe()
        s.connection.portals[s.name] = PortalEntry(portal, columns, s.inner.sql, [])
        return [], False

    def command_tag(self, rows_returned: int) -> str:
        return "DECLARE CURSOR"


class FetchStatement(Statement):
    """``FETCH [FORWARD] n|ALL FROM name``: the cursor's next rows."""

    def __init__(self, connection: Any, name: str, count: int) -> None:
        self.connection = connection
        self.name = name
        self.count = count  # 0: all
        self.sql = f"FETCH {name}"
        self.param_oids: list[int | None] = []

    async def describe(self) -> list[ResultColumn] | None:
        return _cursor(self.connection, self.name).columns

    def bind(self, params: list[Any]) -> Portal:
        return _FetchPortal(self)


class _FetchPortal(Portal):
    def __init__(self, statement: FetchStatement) -> None:
        self.statement = statement
        self.fetched = 0

    async def execute(self, max_rows: int) -> tuple[list[tuple[Any, ...]], bool]:
        entry = _cursor(self.statement.connection, self.statement.name)
        rows, _more = await entry.portal.execute(self.statement.count)
        self.fetched = len(rows)
        return rows, False

    def command_tag(self, rows_returned: int) -> str:
        return f"FETCH {self.fetched}"


class CloseStatement(Statement):
    """``CLOSE name``: forget the cursor."""

    def __init__(self, connection: Any, name: str) -> None:
        self.connection = connection
        self.name = name
        self.sql = f"CLOSE {name}"
        self.param_oids: list[int | None] = []

    async def describe(self) -> list[ResultColumn] | None:
        return None

    def bind(self, params: list[Any]) -> Portal:
        return _ClosePortal(self)


class _ClosePortal(Portal):
    def __init__(self, statement: CloseStatement) -> None:
        self.statement = statement

    async def execute(self, max_rows: int) -> tuple[list[tuple[Any, ...]], bool]:
        s = self.statement
        names = [n for n in s.connection.portals if n] if s.name == "all" else [s.name]
        for name in names:
            _cursor(s.connection, name)
            s.connection.portals.pop(name, None)
        return [], False

    def command_tag(self, rows_returned: int) -> str:
        return "CLOSE CURSOR"
