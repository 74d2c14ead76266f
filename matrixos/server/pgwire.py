"""The PostgreSQL wire protocol (v3): psql, psycopg, asyncpg and BI tools query MatrixOS.

Built on pg-mimic (MIT, pure Python, asyncio), which frames the messages and runs the simple
and extended query protocols (Parse/Bind/Describe/Execute/Sync, prepared statements, portals,
``PortalSuspended``). MatrixOS adds what a shared server needs:

* SCRAM-SHA-256 against the accounts' stored verifiers (``pg_auth.py``: the password never
  reaches the server), or ``auth="password"`` (cleartext: a password or an API token; use TLS),
  or ``auth="trust"`` (every client acts as the session's own principal: tests, local use).
* TLS when an ``ssl.SSLContext`` is given (``SSLRequest`` → ``S``), else ``N``.
* Every statement runs through the SQL engine in the PostgreSQL dialect as the logged-in
  principal (``Lakehouse.with_principal``), parameters ``$n`` bound as literals of the parsed
  statement, results in text format with type OIDs from the Arrow types, the engine's command
  tags (``INSERT 0 3``), and ``MatrixOSError``s as ErrorResponses with their SQLSTATE, hint and
  position.
* ``DECLARE``/``FETCH``/``CLOSE`` cursors (``pg_cursors.py``: psycopg's server-side cursors).
* ``BEGIN``/``COMMIT``/``ROLLBACK`` accepted and honest about autocommit (``pg_transactions.py``).
* ``CancelRequest`` interrupts the running statement (``engine/interrupt.py``): 57014.
* ``pg_catalog``/``information_schema`` from the catalog as the principal sees it
  (``pg_catalog.py``); ``SET``/``SHOW`` of the client parameters psql and drivers send are
  answered here (``pg_settings.py``) and never reach the engine; other settings are refused.

Why some pg-mimic internals are overridden (``_handle_client``, ``_negotiate_startup``,
``_execute_one_simple_statement``, ``_handle_execute``): pg-mimic 0.1.3 has no TLS upgrade, builds
command tags from the statement's first word and returned row count (``INSERT 0 0``), and
describes a simple query before binding it. The extra is pinned to that version.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> server = start_pg_server(lh, port=0, auth="trust")
    >>> server.port > 0
    True
    >>> server.stop()
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import pyarrow as pa
from pg_mimic import PgServer, Portal, ResultColumn, Session, Statement, messages
from pg_mimic.auth import AuthPlugin, TrustAuthPlugin
from pg_mimic.connection import Connection, command_tag
from pg_mimic.errors import PgError
from pg_mimic.middleware import (
    MiddlewareContext,
    asyncpg_typeinfo,
    is_transaction_end,
    session_functions,
)
from pg_mimic.stream import ConnectionClosed, PgStream
from sqlglot import exp

from matrixos import __version__
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.throttle import LoginThrottle
from matrixos.engine.interrupt import Interrupt, interruptible
from matrixos.errors import (
    ConfigError,
    MatrixOSError,
    SQLError,
    StatementCanceled,
)
from matrixos.server.pg_auth import PasswordAuth, ScramAuth, peer_address
from matrixos.server.pg_catalog import (
    BoundCatalogQuery,
    CatalogView,
    catalog_statement,
    is_catalog_query,
)
from matrixos.server.pg_cursors import cursors
from matrixos.server.pg_encode import encode_row, text_only
from matrixos.server.pg_portal import MxPortal, MxStatement
from matrixos.server.pg_settings import qualified_session_functions, settings
from matrixos.server.pg_transactions import transactions
from matrixos.server.pg_types import parameter_oids, pg_error
from matrixos.server.statements import Limits, Slots, interrupt_until

if TYPE_CHECKING:
    import ssl

    from matrixos.catalog.access import Principal
    from matrixos.engine.result import Result
    from matrixos.server.audit import AuditWriter
    from matrixos.session import Lakehouse

log = logging.getLogger("matrixos.server.pg")

AuthMethod = Literal["scram-sha-256", "password", "trust"]
SERVER_VERSION = f"16.0 (MatrixOS {__version__})"
MAX_STARTUP_BYTES = 10_000  # PostgreSQL's own limit on the first message
STARTUP_TIMEOUT_S = 60.0  # a client that opens a socket and says nothing is dropped


# -- the session: one client connection ------------------------------------------------------
class MxSession(Session):
    """One connection's state: its principal's view of the lakehouse and the statement that
    is running (for cancel requests)."""

    def __init__(self, server: MatrixOSPgServer) -> None:
        self.server = server
        self.lakehouse: Lakehouse = server.lakehouse
        self.catalog = "main"
        self.client: str | None = None
        self._interrupt: tuple[Interrupt, threading.Event] | None = None  # the running one
        self.writes = 0  # statements that changed something (see pg_transactions)

    async def init(self, connection: Any) -> None:
        await super().init(connection)
        principal = await asyncio.to_thread(self.server.principal_for, connection.username)
        self.lakehouse = self.server.lakehouse.with_principal(principal)
        catalogs = {s.split(".", 1)[0] for s in self.lakehouse.schemas()}
        self.catalog = connection.database if connection.database in catalogs else "main"
        self.client = peer_address(connection.stream)
        self.server.sessions[connection.pid] = (connection.secret, self)

    async def close(self) -> None:
        if self._connection is not None:
            self.server.sessions.pop(self._connection.pid, None)

    async def prepare(self, sql: str, param_oids: list[int | None]) -> Statement:
        ctx = MiddlewareContext(self._connection, sql, param_oids)
        for link in (
            cursors,
            settings,
            transactions,
            session_functions,
            qualified_session_functions,
        ):
            if (answered := await link(ctx)) is not None:
                return answered
        for link in (asyncpg_typeinfo, catalog):
            if sql.strip() and (answered := await link(ctx)) is not None:
                return answered
        if "$" in sql:  # ParameterDescription tells every parameter's type, as PostgreSQL's
            param_oids = await asyncio.to_thread(parameter_oids, sql, param_oids, self._column_type)
        return MxStatement(self, sql, param_oids, ctx.expression)

    def _column_type(self, column: exp.Column) -> pa.DataType | None:
        """The type of a column a parameter meets, from the tables of its statement."""
        tree = column.root()
        for table in tree.find_all(exp.Table):
            if column.table and column.table not in (table.alias_or_name, table.name):
                continue
            try:
                schema = self.lakehouse.table(".".join(p.name for p in table.parts)).schema
            except MatrixOSError:
                continue
            if column.name in schema.names:
                return schema.field(column.name).type
        return None

    async def run(
        self,
        sql: str,
        then: Callable[[Result], None],
        *,
        audit_as: tuple[str, str] | None = None,
    ) -> Result:
        """Run ``sql`` as this session's principal, then ``then(result)`` in the same worker
        thread (one hand-off per statement); errors as ``PgError``s. A failure is audited as
        ``audit_as``: (the statement as sent, ``$n`` and all; its id), None: not audited."""
        handle, ended = Interrupt(), threading.Event()
        self._interrupt = (handle, ended)
        server, who = self.server, self.lakehouse.principal.name
        try:
            server.admit(who, handle)
        except MatrixOSError as e:
            raise pg_error(e) from None
        timeout = server.limits.statement_timeout_s
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            interrupt_until(handle, ended)

        timer = None if timeout is None else asyncio.get_running_loop().call_later(timeout, expire)

        def work() -> Result:
            started, at = time.monotonic(), time.time()
            try:
                with interruptible(handle):
                    result = self.lakehouse.sql(sql, dialect="postgres")
                    then(result)
                    return result
            except MatrixOSError as e:
                if audit_as is not None:
                    text, sid = audit_as
                    seconds = time.monotonic() - started
                    self.audit(text, e, None, seconds, statement_id=sid, started=at)
                raise

        try:
            return cast("Result", await self.in_thread(work, sql))
        except PgError as e:
            if timed_out and e.sqlstate == "57014":
                raise PgError("57014", "canceling statement due to statement timeout") from None
            raise
        finally:
            ended.set()
            if timer is not None:
                timer.cancel()
            server.release(who, handle)

    async def in_thread(self, fn: Any, sql: str | None = None) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except StatementCanceled as e:
            raise PgError(e.sqlstate, e.message) from None
        except MatrixOSError as e:
            raise pg_error(e, sql) from None
        except Exception:
            log.exception("pg statement failed")
            raise PgError("XX000", "internal error running the statement") from None

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
    ) -> None:
        """Record a statement in the server's audit trail and query history (if it keeps
        them)."""
        if self.server.audit is not None:
            self.server.audit.statement(
                self.lakehouse.principal.name,
                sql,
                "postgres",
                protocol="pg",
                client_address=self.client,
                error=error,
                rows=rows,
                seconds=s,
                outcome="canceled" if isinstance(error, StatementCanceled) else None,
                statement_id=statement_id,
                started=started,
                nbytes=nbytes,
            )

    def interrupt(self) -> None:
        """Stop the running statement (a CancelRequest)."""
        if self._interrupt is not None:
            interrupt_until(*self._interrupt)


# -- middleware: answered here, never by the engine -----------------------------------------
async def catalog(ctx: MiddlewareContext) -> Statement | None:
    """``pg_catalog``/``information_schema`` queries, from the catalog the principal sees."""
    tree = ctx.expression
    if not is_catalog_query(tree):
        return None
    session: MxSession = ctx.connection.session
    lh = session.lakehouse
    view = CatalogView(lh.service, lh.principal, session.catalog)
    if tree.find(exp.Parameter) is not None:  # answered once its parameters are bound
        return BoundCatalogQuery(ctx.connection, tree, ctx.param_oids, view)
    return await asyncio.to_thread(catalog_statement, ctx.connection, tree, view)


# -- the connection and the server ------------------------------------------------------------
class MxConnection(Connection):
    """pg-mimic's connection with the engine's command tags, and Bind before Describe in
    the simple protocol (the statement runs once, its columns come from its result)."""

    async def _execute_one_simple_statement(self, sql: str) -> None:
        if self.tx_status == b"E" and not is_transaction_end(sql):
            raise PgError("25P02", "current transaction is aborted, commands ignored")
        if not sql.strip():
            self.stream.write(messages.make_empty_query_response())
            return
        statement = await self.session.prepare(sql, [])
        portal = statement.bind([])
        columns = await statement.describe()
        if columns is not None:
            self.stream.write(messages.make_row_description(_fields(columns)))
        if isinstance(portal, MxPortal):
            data, count, _ = await portal.data_rows(0)
            self.stream.write(data)
        else:
            fetched, _ = await portal.execute(0)
            count = len(fetched)
            for row in fetched if columns is not None else ():
                self.stream.write(messages.make_data_row(encode_row(row, columns)))
        self.stream.write(messages.make_command_complete(_tag(portal, sql, count)))

    async def _handle_execute(self, parsed: Any) -> None:
        entry = self._get_portal(parsed.portal_name)
        if self.tx_status == b"E" and not is_transaction_end(entry.sql):
            raise PgError("25P02", "current transaction is aborted, commands ignored")
        if isinstance(entry.portal, MxPortal) and text_only(entry.result_format_codes):
            data, count, suspended = await entry.portal.data_rows(parsed.max_rows)
            entry.rows_returned += count
            self.stream.write(data)
            fetched = []
        else:
            fetched, suspended = await entry.portal.execute(parsed.max_rows)
            entry.rows_returned += len(fetched)
        if entry.columns is not None:
            for row in fetched:
                try:
                    values = encode_row(row, entry.columns, entry.result_format_codes)
                except ValueError as e:
                    if isinstance(entry.portal, MxPortal):
                        entry.portal.failed(SQLError(str(e), sqlstate="0A000"))
                    raise PgError("0A000", str(e)) from None
                self.stream.write(messages.make_data_row(values))
        if suspended:
            self.stream.write(messages.make_portal_suspended())
        else:
            tag = _tag(entry.portal, entry.sql, entry.rows_returned)
            self.stream.write(messages.make_command_complete(tag))


def _fields(columns: list[ResultColumn]) -> list[messages.FieldSpec]:
    return [messages.FieldSpec(name=c.name, oid=c.oid, format_code=0) for c in columns]


def _tag(portal: Portal, sql: str, rows_returned: int) -> str:
    tag = getattr(portal, "command_tag", None)  # ours say it; pg-mimic's guess from the text
    return str(tag(rows_returned)) if callable(tag) else command_tag(sql, rows_returned)


class MatrixOSPgServer(PgServer):
    """The wire server for one lakehouse: authentication, TLS, cancel requests."""

    def __init__(
        self,
        lakehouse: Lakehouse,
        *,
        accounts: Accounts | None = None,
        auth: AuthMethod = "scram-sha-256",
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits | None = None,
        audit: AuditWriter | None = None,
        slots: Slots | None = None,
    ) -> None:
        self.lakehouse = lakehouse
        self.limits = limits or Limits()
        self.slots = slots or Slots(self.limits)  # shared with HTTP under matrixos serve
        self.audit = audit
        self.draining = False
        self._running: dict[str, list[Interrupt]] = defaultdict(list)  # by principal
        self._admission = threading.Condition()
        if accounts is None:
            accounts = Accounts(lakehouse.catalog, throttle=LoginThrottle())
        self.accounts = accounts
        self.auth = auth
        self.ssl_context = ssl_context
        self.sessions: dict[int, tuple[int, MxSession]] = {}
        super().__init__(
            session_factory=lambda: MxSession(self),
            auth_plugin_factory=self._auth_plugin,
            server_version=SERVER_VERSION,
        )

    def _auth_plugin(self, username: str) -> AuthPlugin:
        if self.auth == "trust":
            return TrustAuthPlugin()
        if self.auth == "password":
            return PasswordAuth(self.accounts, self.audit)
        return ScramAuth(self.accounts, self.audit)

    def principal_for(self, username: str) -> Principal:
        """The principal a logged-in user acts as (trust: the session's own)."""
        if self.auth == "trust":
            return self.lakehouse.principal
        return self.accounts.principal(username)

    # -- statements: admission, drain --------------------------------------------------------
    def admit(self, principal: str, handle: Interrupt) -> None:
        """Count a statement in; ``ServerUnavailable`` while draining, ``TooManyStatements``
        when ``principal`` runs ``limits.max_active_per_principal`` already."""
        with self._admission:
            self.slots.take(principal, self.draining)
            self._running[principal].append(handle)

    def active(self) -> int:
        """How many statements run now."""
        with self._admission:
            return sum(len(h) for h in self._running.values())

    def release(self, principal: str, handle: Interrupt) -> None:
        with self._admission:
            self.slots.give(principal)
            self._running[principal].remove(handle)
            if not self._running[principal]:
                del self._running[principal]
            self._admission.notify_all()

    def drain(self, grace_s: float) -> bool:
        """Refuse new statements (57P03), let running ones finish for up to ``grace_s``
        seconds, then interrupt the rest. True when every statement finished on its own."""
        with self._admission:
            self.draining = True
            clean = self._admission.wait_for(lambda: not self._running, timeout=grace_s)
            left = [h for handles in self._running.values() for h in handles]
        for handle in left:
            handle.interrupt()
        return clean

    def cancel(self, pid: int, secret: int) -> None:
        entry = self.sessions.get(pid)
        if entry is not None and entry[0] == secret:
            entry[1].interrupt()
        super().cancel(pid, secret)

    async def _negotiate_startup(self, stream: PgStream) -> dict[str, str] | None:
        code, payload = await _startup_packet(stream)
        tls = False
        # libpq may ask for GSS encryption, then for TLS, before it starts up.
        for _ in range(2):
            if code == messages.SSL_REQUEST_CODE and self.ssl_context is not None and not tls:
                stream.write(b"S")
                await stream.drain()
                await stream.writer.start_tls(self.ssl_context)
                tls = True
            elif code in (messages.SSL_REQUEST_CODE, messages.GSSENC_REQUEST_CODE):
                stream.write(b"N")
                await stream.drain()
            else:
                break
            code, payload = await _startup_packet(stream)
        if code == messages.CANCEL_REQUEST_CODE:
            pid, secret = messages.parse_cancel_request(payload)
            self.cancel(pid, secret)
            await stream.close()
            return None
        return messages.parse_startup_message(payload)

    async def _handle_client(self, reader: Any, writer: Any) -> None:
        stream = PgStream(reader, writer)
        try:
            startup = await asyncio.wait_for(self._negotiate_startup(stream), STARTUP_TIMEOUT_S)
        except (ConnectionClosed, ConnectionError, OSError, TimeoutError):
            return
        if startup is None:
            return
        session = self.session_factory()
        if inspect.isawaitable(session):
            session = await session
        pid = self._allocate_pid()
        secret = struct.unpack("!i", os.urandom(4))[0]
        connection = MxConnection(stream, session, self, pid, secret, startup)
        self._connections[pid] = connection
        try:
            await connection.run()
        finally:
            self._connections.pop(pid, None)


async def _startup_packet(stream: PgStream) -> tuple[int, bytes]:
    """The untagged first message (startup, SSLRequest, CancelRequest), its length checked
    before anything is read: as PostgreSQL, a client may not make the server buffer more
    than ``MAX_STARTUP_BYTES`` before it has logged in."""
    try:
        header = await stream.reader.readexactly(8)
        length = int.from_bytes(header[:4], "big")
        if not 8 <= length <= MAX_STARTUP_BYTES:
            log.info("pg: refused a startup packet of %d bytes", length)
            raise ConnectionClosed
        payload = await stream.reader.readexactly(length - 8)
    except asyncio.IncompleteReadError as e:
        raise ConnectionClosed from e
    return int.from_bytes(header[4:], "big"), payload


@dataclass
class PgServerHandle:
    """A running wire server (its own event loop thread). ``stop()`` closes it."""

    host: str
    port: int
    server: MatrixOSPgServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread = field(repr=False)

    def drain(self, grace_s: float) -> bool:
        """Refuse new statements, give running ones ``grace_s`` seconds, interrupt the rest
        (a canceled write commits nothing); True when all finished. ``stop()`` follows."""
        return self.server.drain(grace_s)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, drop the connections and end the loop's thread."""
        if not self.thread.is_alive():
            return

        async def close() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


def start_pg_server(
    lakehouse: Lakehouse,
    host: str = "127.0.0.1",
    port: int = 5433,
    *,
    accounts: Accounts | None = None,
    auth: AuthMethod = "scram-sha-256",
    ssl_context: ssl.SSLContext | None = None,
    limits: Limits | None = None,
    audit: AuditWriter | None = None,
    workers: int = 32,
    slots: Slots | None = None,
) -> PgServerHandle:
    """Serve ``lakehouse`` over the PostgreSQL wire on ``host:port`` (``port=0``: any free
    port, see ``handle.port``) from a background thread; returns once it listens.

    Args:
        lakehouse: The session whose warehouse and catalog are served; each client acts as
            its logged-in account's principal (``auth="trust"``: as ``lakehouse.principal``).
        accounts: Where users, verifiers and tokens live (default
            ``Accounts(lakehouse.catalog, throttle=LoginThrottle())``: 5 failed logins of a
            user from one address lock that pair out for a minute).
        auth: ``scram-sha-256`` (default), ``password`` (cleartext password or API token:
            use TLS) or ``trust``.
        ssl_context: Serve TLS to clients that ask for it (``sslmode=require``).
        limits: ``statement_timeout_s`` (57014) and ``max_active_per_principal`` (53000), as
            for the HTTP API (``server/statements.py``); ``slots``: the count per principal
            when shared with the HTTP API (``matrixos serve``'s).
        audit: Where logins and statements are recorded (``system.access.audit``, protocol
            ``pg``; statement text with its literals redacted).
        workers: Statements (and result encodings) that run at once across all connections;
            more wait for a thread (asyncio's default, cpus + 4, made a long query hold up
            every short one on a small machine).

    Raises:
        ConfigError: the address cannot be bound.
    """
    server = MatrixOSPgServer(
        lakehouse,
        accounts=accounts,
        auth=auth,
        ssl_context=ssl_context,
        limits=limits,
        audit=audit,
        slots=slots,
    )
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.set_default_executor(ThreadPoolExecutor(workers, thread_name_prefix="mx-pg"))
        try:
            srv = loop.run_until_complete(server.start_server(host=host, port=port))
            ready["port"] = srv.sockets[0].getsockname()[1]
        except OSError as e:
            ready["error"] = e
            started.set()
            loop.close()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    thread = threading.Thread(target=main, name=f"matrixos-pg-{port}", daemon=True)
    thread.start()
    started.wait()
    if "error" in ready:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {ready['error']}",
            hint="pick another --pg-port, or stop what listens there",
        )
    log.info("PostgreSQL wire listening on %s:%s", host, ready["port"])
    return PgServerHandle(host, ready["port"], server, loop, thread)
