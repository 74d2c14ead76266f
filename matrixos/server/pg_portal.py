"""The wire's statements and portals: a parsed statement (``$n`` parameters) bound any number of
times; each binding run once (on its first Describe or Execute) in a worker thread as the
session's principal, then its rows drained in steps (text rows encoded per column by Arrow,
binary rows per value by pg-mimic). Every statement ends once in the audit and the query
history: SUCCEEDED with its command tag, or FAILED, also when the error comes while rows are
already streaming to the client.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import sqlglot
from pg_mimic import Portal, ResultColumn, Statement, messages
from sqlglot import exp

from matrixos.errors import MatrixOSError
from matrixos.server.pg_encode import data_rows as encoded_rows
from matrixos.server.pg_encode import encode_row
from matrixos.server.pg_types import bind_parameters, oid_for, rows

if TYPE_CHECKING:
    from matrixos.engine.result import Result

SMALL_RESULT = 256  # rows: read whole with the statement, encoded without another hand-off

_NO_ROWS = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter)


class PortalSession(Protocol):
    """What a portal needs of its connection's session (``pgwire.MxSession``)."""

    writes: int

    async def run(
        self,
        sql: str,
        then: Callable[[Result], None],
        *,
        audit_as: tuple[str, str] | None = None,
    ) -> Result: ...

    async def in_thread(self, fn: Any, sql: str | None = None) -> Any: ...

    def audit(
        self,
        sql: str,
        error: BaseException | None,
        rows: int | None,
        s: float,
        *,
        statement_id: str | None = None,
        started: float | None = None,
        nbytes: int | None = None,
    ) -> None: ...


class MxPortal(Portal):
    """One bound statement: run on the first Describe or Execute (in a worker thread, as the
    session's principal, interruptible), then drained in steps."""

    def __init__(
        self,
        session: PortalSession,
        sql: str,
        param_oids: list[int | None],
        params: list[Any],
        *,
        audited: bool = True,
    ) -> None:
        self.session = session
        self.sql = sql
        self.param_oids = param_oids
        self.params = params
        self.columns: list[ResultColumn] | None = None
        self.message: str | None = None  # the engine's command tag for DML/DDL
        self.kind = "SELECT"
        self._schema: pa.Schema | None = None
        self._reader: Any = None  # the result's batches (None: no rows, or all read)
        self._queue: list[pa.RecordBatch] = []  # read from the reader, not yet sent
        self.audited = audited  # recorded in the audit trail when it completes
        self.id = uuid.uuid4().hex  # its statement id in system.query.history
        self.nbytes = 0  # the DataRow bytes sent
        self.rows_sent = 0  # the rows sent (encoded for the client) so far
        self._t0 = time.monotonic()
        self._started_at = time.time()
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._t0, self._started_at = time.monotonic(), time.time()
        sql = bind_parameters(self.sql, self.params, self.param_oids)
        result = await self.session.run(
            sql, self._prefetch, audit_as=(self.sql, self.id) if self.audited else None
        )
        self.message, self.kind = result.message, result.statement
        if self.message is None:  # rows (a DML/DDL result is only its command tag)
            self._schema = result.schema
            types = result.sql_types or [None] * len(result.schema)
            self.columns = [
                ResultColumn(f.name, oid_for(f.type, sql))
                for f, sql in zip(result.schema, types, strict=True)
            ]

    def _prefetch(self, result: Result) -> None:
        """Open the rows and read a small result whole (the query runs here, in the
        statement's thread, and a small result's Execute needs no second hand-off)."""
        if result.message is not None:
            return
        self._reader = result.to_arrow_reader(keep=False)
        total = 0
        while total <= SMALL_RESULT and self._read_batch():
            total += self._queue[-1].num_rows

    def _read_batch(self) -> bool:
        """Queue the reader's next batch; False at its end."""
        if self._reader is None:
            return False
        try:
            self._queue.append(self._reader.read_next_batch())
        except StopIteration:
            self._reader = None
            return False
        return True

    def _take(self, n: int | None) -> list[pa.RecordBatch]:
        """The next ``n`` rows (None: all the rest) as batches; in a worker thread."""
        out: list[pa.RecordBatch] = []
        want = n
        while (want is None or want > 0) and (self._queue or self._read_batch()):
            batch = self._queue.pop(0)
            if want is not None and batch.num_rows > want:
                batch, rest = batch.slice(0, want), batch.slice(want)
                self._queue.insert(0, rest)
            out.append(batch)
            if want is not None:
                want -= batch.num_rows
        return out

    async def execute(self, max_rows: int) -> tuple[list[tuple[Any, ...]], bool]:
        """The next rows as tuples (``max_rows`` 0: all)."""
        await self.start()
        if self._schema is None:
            return [], False
        schema, n = self._schema, (max_rows if max_rows > 0 else None)
        fetched = await self._streaming(lambda: list(rows(schema, iter(self._take(n)))))
        self.rows_sent += len(fetched)
        return fetched, n is not None and len(fetched) == n

    async def _streaming(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (reading more rows) in a worker thread; an error there, with rows perhaps
        sent already, ends the statement FAILED in the audit and history like any other."""

        def work() -> Any:
            try:
                return fn()
            except MatrixOSError as e:
                self.failed(e)
                raise
            except Exception as e:
                self.failed(MatrixOSError(f"internal error: {type(e).__name__}"))
                raise

        return await self.session.in_thread(work, self.sql)

    def failed(self, error: MatrixOSError) -> None:
        """Record the statement as FAILED with ``error`` (once: nothing more is recorded)."""
        if self.audited:
            self.audited = False
            seconds = time.monotonic() - self._t0
            self.session.audit(
                self.sql, error, self.rows_sent, seconds, statement_id=self.id,
                started=self._started_at, nbytes=self.nbytes,
            )  # fmt: skip

    async def data_rows(self, max_rows: int) -> tuple[bytes, int, bool]:
        """The next rows as text-format DataRow messages, their count, and whether the limit
        was reached (``max_rows`` 0: all)."""
        await self.start()
        if self._schema is None or self.columns is None:
            return b"", 0, False
        n = max_rows if max_rows > 0 else None
        oids = [c.oid for c in self.columns]
        queued = sum(b.num_rows for b in self._queue)
        if self._reader is None and queued <= SMALL_RESULT and (n is None or n > queued):
            # a small result, read whole: encoded here, row by row, without a hand-off
            batches, self._queue = self._queue, []
            cols = self.columns
            fetched = list(rows(self._schema, iter(batches)))
            data = b"".join(messages.make_data_row(encode_row(r, cols)) for r in fetched)
            self.nbytes += len(data)
            self.rows_sent += len(fetched)
            return data, len(fetched), False

        def encode() -> tuple[bytes, int]:
            batches = self._take(n)
            return b"".join(encoded_rows(b, oids) for b in batches), sum(
                b.num_rows for b in batches
            )

        data, count = await self._streaming(encode)
        self.nbytes += len(data)
        self.rows_sent += count
        return data, count, n is not None and count == n

    def command_tag(self, rows_returned: int) -> str:
        """The CommandComplete tag (the statement is done: audited here)."""
        if self.message is not None:
            tag = self.message
            last = tag.rsplit(" ", 1)[-1]
            rows_returned = int(last) if last.isdigit() else 0
        elif self.kind in ("SHOW", "EXPLAIN", "DESCRIBE"):
            tag = "SHOW" if self.kind == "SHOW" else self.kind
        else:
            tag = f"SELECT {rows_returned}"
        if self.message is not None:
            self.session.writes += 1  # committed on its own: a ROLLBACK cannot undo it
        if self.audited:
            self.audited = False  # once
            seconds = time.monotonic() - self._t0
            self.session.audit(
                self.sql, None, rows_returned, seconds, statement_id=self.id,
                started=self._started_at, nbytes=self.nbytes,
            )  # fmt: skip
        return tag


class MxStatement(Statement):
    """A parsed statement (``$n`` parameters allowed) bound any number of times."""

    def __init__(
        self,
        session: PortalSession,
        sql: str,
        param_oids: list[int | None],
        tree: exp.Expr | None = None,
    ) -> None:
        """``tree``: ``sql`` parsed already (one statement), or None."""
        self.session = session
        self.sql = sql
        self.param_oids = param_oids
        self._pending: MxPortal | None = None
        last = tree
        if last is None:
            try:
                trees = sqlglot.parse(sql, dialect="postgres")
            except sqlglot.errors.SqlglotError:
                trees = []
            last = trees[-1] if trees else None
        self.returns_rows = not isinstance(last, _NO_ROWS)

    async def describe(self) -> list[ResultColumn] | None:
        portal, self._pending = self._pending, None
        if portal is not None and self.returns_rows:
            await portal.start()  # the columns a query returns are known once it runs
            return portal.columns
        if not self.returns_rows:
            return None
        # Describe before Bind: the shape of the query with every parameter NULL, no rows.
        nulls = [None] * parameter_count(self.sql)
        probe = MxPortal(self.session, probe_query(self.sql), self.param_oids, nulls, audited=False)
        await probe.start()
        return probe.columns

    def bind(self, params: list[Any]) -> Portal:
        portal = MxPortal(self.session, self.sql, self.param_oids, params)
        self._pending = portal
        return portal


def probe_query(sql: str) -> str:
    """The query as ``SELECT * FROM (…) LIMIT 0``: its columns, not its rows."""
    try:
        tree = sqlglot.parse_one(sql, dialect="postgres")
    except sqlglot.errors.SqlglotError:
        return sql
    if not isinstance(tree, exp.Query):
        return sql
    return exp.select("*").from_(tree.subquery("_q")).limit(0).sql("postgres")


def parameter_count(sql: str) -> int:
    found = [int(m) for m in re.findall(r"\$(\d+)", sql)]
    return max(found, default=0)
