"""Statements a server runs for its clients: ids, states, a worker pool, cancel and drain.

A statement is submitted for a principal, waits ``PENDING`` for a worker, runs ``RUNNING``
(its DuckDB cursors tracked by an ``Interrupt`` so that ``cancel`` stops it) and ends
``SUCCEEDED`` (its rows kept as a ``ResultSet``), ``FAILED`` (a ``MatrixOSError``) or
``CANCELED``; ``CLOSED`` once its rows are released (closed by its owner, or after
``retention_s``). Only the principal that submitted a statement sees it.

Example:
    >>> import pyarrow as pa
    >>> from matrixos.catalog.access import Principal
    >>> from matrixos.engine.result import Result
    >>> run = lambda who, sql, dialect: Result.from_table(pa.table({"who": [who.name]}))
    >>> manager = StatementManager(run, workers=1)
    >>> s = manager.submit(Principal("ann"), StatementRequest("SELECT current_user"))
    >>> s.wait(5), s.state, s.result.chunks[0].to_pylist()
    (True, <State.SUCCEEDED: 'SUCCEEDED'>, [{'who': 'ann'}])
    >>> manager.drain(1.0)
    True
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum

from matrixos.catalog.access import Principal
from matrixos.engine.interrupt import Interrupt, interruptible
from matrixos.engine.result import Result
from matrixos.errors import (
    MatrixOSError,
    ServerUnavailable,
    SQLError,
    StatementCanceled,
    StatementNotFound,
    TooManyStatements,
)
from matrixos.server.statements_params import Parameter, bind
from matrixos.server.statements_results import Format, ResultSet

log = logging.getLogger(__name__)

JSON_CHUNK_ROWS = 65_536
#: ``StatementManager.stream_after_s``'s default.
STREAM_AFTER_S = 0.05
# Ended statements kept for GET and chunk fetches at most (the oldest are forgotten first).
MAX_ENDED = 10_000
BINARY_CHUNK_ROWS = 1_048_576
_DEFAULT_CHUNK_ROWS = {
    Format.JSON_ARRAY: JSON_CHUNK_ROWS,
    Format.ARROW_STREAM: BINARY_CHUNK_ROWS,
    Format.CSV: BINARY_CHUNK_ROWS,
}

#: Runs ``sql`` in ``dialect`` as a principal (a ``Lakehouse.with_principal(p).sql``).
Runner = Callable[[Principal, str, str], Result]


class State(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    CLOSED = "CLOSED"


FINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELED, State.CLOSED})


@dataclass(frozen=True)
class StatementRequest:
    """What a client asked to run (the fields of ``POST /api/2.0/sql/statements``)."""

    statement: str
    parameters: Sequence[Parameter] = ()
    catalog: str | None = None
    schema: str | None = None
    format: Format = Format.JSON_ARRAY
    row_limit: int | None = None
    byte_limit: int | None = None
    dialect: str = "duckdb"
    #: Runs instead of ``statement`` (which then only describes the call for the audit and
    #: history): the remote SDK's table reads and searches, under the same limits.
    call: Callable[[Principal], Result] | None = field(default=None, compare=False)
    #: The whole result or an error: past the result limits it FAILS (SQLSTATE 54000)
    #: instead of being truncated (a table read must not look complete when it is not).
    whole: bool = False


class Statement:
    """One submitted statement. ``state``, ``error`` and ``result`` change under the
    manager's lock; ``wait`` blocks until it ends."""

    def __init__(self, owner: Principal, request: StatementRequest) -> None:
        self.id = uuid.uuid4().hex
        self.owner = owner
        self.request = request
        self.state = State.PENDING
        self.error: MatrixOSError | None = None
        self.result: ResultSet | None = None
        #: The result as it is read (set as it begins, before the statement ends): a response
        #: ``follow``s it to send rows while the query still produces them.
        self.rows: ResultSet | None = None
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.interrupt = Interrupt()
        self.done = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._ready_callbacks: list[Callable[[], None]] = []
        self.ready = threading.Event()  # its first rows were kept, or it ended
        self.timed_out = False
        self.interrupting = False  # a thread repeats the interrupt until it ends
        self.timer: threading.Timer | None = None
        self.client: str | None = None  # the client's address, for the audit
        self.protocol = "http"  # how it came: http, or sdk (a table read or search)
        self._callback_lock = threading.Lock()

    def wait(self, timeout: float | None) -> bool:
        """Whether the statement ended within ``timeout`` seconds."""
        return self.done.wait(timeout)

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` when the statement ends (at once if it has): an event loop's wake-up.
        ``fn`` runs on the thread that ends the statement and must not block."""
        with self._callback_lock:
            if not self.done.is_set():
                self._callbacks.append(fn)
                return
        fn()

    def add_ready_callback(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` once the statement kept its first rows or ended (at once if so)."""
        with self._callback_lock:
            if not self.ready.is_set():
                self._ready_callbacks.append(fn)
                return
        fn()

    def rows_began(self) -> None:
        """Its first rows were kept: wake the ``add_ready_callback`` callers (once)."""
        if self.ready.is_set():
            return
        with self._callback_lock:
            self.ready.set()
            callbacks, self._ready_callbacks = self._ready_callbacks, []
        _call_all(callbacks)

    def _ended(self) -> None:
        with self._callback_lock:
            self.done.set()
            self.ready.set()
            callbacks, self._callbacks = self._callbacks, []
            callbacks += self._ready_callbacks
            self._ready_callbacks = []
        _call_all(callbacks)

    @property
    def duration(self) -> float | None:
        if self.finished_at is None:
            return None
        return self.finished_at - (self.started_at or self.submitted_at)


def _call_all(callbacks: list[Callable[[], None]]) -> None:
    for fn in callbacks:
        try:
            fn()
        except Exception:
            log.exception("a statement's callback failed")


@dataclass(frozen=True)
class Limits:
    """What one statement, and one principal, may use on a server (None: no limit).

    Attributes:
        statement_timeout_s: a statement still running after this long is stopped (FAILED,
            SQLSTATE 57014; a write commits nothing).
        max_active_per_principal: statements one principal may have pending or running;
            one more is ``TooManyStatements`` (HTTP 429).
        max_result_rows, max_result_bytes: the most a result keeps (it says ``truncated``).
    """

    statement_timeout_s: float | None = None
    max_active_per_principal: int | None = None
    max_result_rows: int | None = None
    max_result_bytes: int | None = None

    def admit(self, principal: str, active: int, draining: bool) -> None:
        """Whether a server may start one more statement for ``principal`` (which runs
        ``active``): ``ServerUnavailable`` while ``draining``, ``TooManyStatements`` past
        ``max_active_per_principal``. The HTTP API and the PostgreSQL wire both ask here."""
        if draining:
            raise ServerUnavailable(
                "the server is shutting down and takes no new statements",
                hint="retry once it is back (or on another server)",
            )
        most = self.max_active_per_principal
        if most is not None and active >= most:
            raise TooManyStatements(
                f"{principal} has {most} statements running, the most allowed",
                hint="wait for one to end (or cancel one), then retry",
            )


class Slots:
    """The statements each principal has pending or running, counted across every protocol
    of a server (the HTTP API, its SDK reads, the PostgreSQL wire share one): ``take`` admits
    one more under ``limits`` (``Limits.admit``), ``give`` hands it back. Thread-safe.

    Example:
        >>> slots = Slots(Limits(max_active_per_principal=1))
        >>> slots.take("ann", draining=False)
        >>> slots.take("ann", draining=False)
        Traceback (most recent call last):
        matrixos.errors.TooManyStatements: ann has 1 statements running, the most allowed ...
        >>> slots.give("ann"); slots.take("ann", draining=False)
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._active: Counter[str] = Counter()

    def take(self, principal: str, draining: bool) -> None:
        with self._lock:
            self.limits.admit(principal, self._active[principal], draining)
            self._active[principal] += 1

    def give(self, principal: str) -> None:
        with self._lock:
            self._active[principal] -= 1
            if self._active[principal] <= 0:
                del self._active[principal]


class StatementManager:
    """Runs statements on a pool of ``workers`` threads and keeps them for their owners.

    Args:
        runner: runs one SQL text for a principal (see ``Runner``).
        workers: statements run at once; later ones wait ``PENDING``.
        chunk_rows: rows per result chunk; default ``JSON_CHUNK_ROWS`` for JSON_ARRAY (JSON
            is rendered a chunk at a time) and ``BINARY_CHUNK_ROWS`` for ARROW_STREAM and CSV.
        chunk_bytes: about the most bytes (Arrow, in memory) a chunk holds.
        retention_s: how long a finished statement's rows stay readable.
        retained_bytes: the most result bytes (Arrow) kept for all statements together; past
            it, the oldest finished results are released (their statements ``CLOSED``).
        limits: per-statement and per-principal limits.
        slots: the per-principal statement count, when shared with the wire (default: its
            own, under ``limits``).
        stream_after_s: how long an ARROW_STREAM result streamed to its client
            (``http_tables.result_stream``) waits, once its first rows came, for the rest: one
            whole by then goes as one body of known length (cheaper to send and to read),
            one still running streams from its first rows (0: always streams; None: waits
            for the end).
    """

    def __init__(
        self,
        runner: Runner,
        *,
        workers: int = 8,
        chunk_rows: int | None = None,
        chunk_bytes: int = 16 * 1024 * 1024,
        retention_s: float = 3600.0,
        retained_bytes: int = 4 * 1024**3,
        limits: Limits = Limits(),
        slots: Slots | None = None,
        stream_after_s: float | None = STREAM_AFTER_S,
    ) -> None:
        self._runner = runner
        self.stream_after_s = stream_after_s
        self.limits = limits
        self._slots = slots or Slots(limits)  # pending or running statements by principal
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mx-statement")
        self._lock = threading.Lock()
        self._statements: dict[str, Statement] = {}
        # Ended statements in the order they ended (when, id): expired from the left, so a
        # request costs what expired since the last one, not a walk over all retained.
        self._ended: deque[tuple[float, str]] = deque()
        self._draining = False
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes
        self.retention_s = retention_s
        self.retained_bytes = retained_bytes
        self._held = 0  # result bytes kept now
        self._listeners: list[Callable[[Statement], None]] = []

    def on_finish(self, listener: Callable[[Statement], None]) -> None:
        """Call ``listener(statement)`` as each statement ends (metrics, audit)."""
        self._listeners.append(listener)

    @property
    def draining(self) -> bool:
        return self._draining

    def counts(self) -> dict[State, int]:
        """How many statements are in each state now."""
        out = dict.fromkeys(State, 0)
        with self._lock:
            for s in self._statements.values():
                out[s.state] += 1
        return out

    # -- the API's verbs --------------------------------------------------------------------
    def submit(
        self,
        principal: Principal,
        request: StatementRequest,
        *,
        client: str | None = None,
        protocol: str = "http",
    ) -> Statement:
        """Queue ``request`` for ``principal`` (connected from ``client``, an address, over
        ``protocol``); ``ServerUnavailable`` while draining, ``TooManyStatements`` past the
        limit."""
        stmt = Statement(principal, request)
        stmt.client = client
        stmt.protocol = protocol
        with self._lock:
            self._slots.take(principal.name, self._draining)
            self._expire(time.time())
            self._statements[stmt.id] = stmt
        self._pool.submit(self._run, stmt)
        return stmt

    def get(self, principal: Principal, statement_id: str) -> Statement:
        """The principal's statement ``statement_id``; ``StatementNotFound`` otherwise (another
        user's statement is not found either: ids are not a way to read others' rows)."""
        with self._lock:
            stmt = self._statements.get(statement_id)
        if stmt is None or stmt.owner.name != principal.name:
            raise StatementNotFound(
                f"no statement {statement_id!r}",
                hint="statement ids come from POST /api/2.0/sql/statements; "
                "results expire after a while",
            )
        return stmt

    def cancel(self, principal: Principal, statement_id: str) -> Statement:
        """Stop the statement (a no-op when it has ended)."""
        stmt = self.get(principal, statement_id)
        self._cancel(stmt)
        return stmt

    def close(self, principal: Principal, statement_id: str) -> Statement:
        """Cancel the statement if it runs and release its rows: it is ``CLOSED``."""
        stmt = self.get(principal, statement_id)
        self._cancel(stmt)
        stmt.wait(None)
        with self._lock:
            self._release(stmt)
        return stmt

    def drain(self, grace_s: float) -> bool:
        """Refuse new statements, let running ones finish for up to ``grace_s`` seconds, then
        cancel the rest. True when every statement finished on its own."""
        with self._lock:
            self._draining = True
            active = [s for s in self._statements.values() if s.state not in FINAL]
        deadline = time.monotonic() + grace_s
        clean = True
        for stmt in active:
            if not stmt.wait(max(0.0, deadline - time.monotonic())):
                clean = False
                self._cancel(stmt)
        self._pool.shutdown(wait=True, cancel_futures=False)
        return clean

    # -- running ----------------------------------------------------------------------------
    def _cancel(self, stmt: Statement) -> None:
        _interrupt_until_done(stmt)
        with self._lock:
            if stmt.state is State.PENDING:
                self._finish(stmt, State.CANCELED, None)

    def _run(self, stmt: Statement) -> None:
        with self._lock:
            if stmt.state is not State.PENDING:
                return  # canceled while it waited
            stmt.state = State.RUNNING
            stmt.started_at = time.time()
        req = stmt.request
        lim = self.limits
        timer = None
        if lim.statement_timeout_s:
            timer = threading.Timer(lim.statement_timeout_s, self._time_out, (stmt,))
            timer.daemon = True
            stmt.timer = timer
            timer.start()

        def check_cancel() -> None:
            if stmt.interrupt.requested:
                raise StatementCanceled("canceling statement due to user request")

        try:
            with interruptible(stmt.interrupt):
                check_cancel()
                if req.call is not None:
                    result = req.call(stmt.owner)
                else:
                    sql = bind(
                        req.statement, req.dialect, req.parameters, catalog=req.catalog,
                        schema=req.schema,
                    )  # fmt: skip
                    result = self._runner(stmt.owner, sql, req.dialect)
                rows = ResultSet.collect(
                    result.to_arrow_reader(keep=False),
                    row_limit=_least(req.row_limit, lim.max_result_rows),
                    byte_limit=_least(req.byte_limit, lim.max_result_bytes),
                    chunk_rows=self.chunk_rows or _DEFAULT_CHUNK_ROWS[req.format],
                    chunk_bytes=self.chunk_bytes,
                    on_batch=check_cancel,
                    on_start=lambda rs: setattr(stmt, "rows", rs),
                    on_rows=stmt.rows_began,
                )
                if rows.truncated and req.whole:
                    raise _too_large(lim)
        except MatrixOSError as e:
            error: MatrixOSError | None = e
            state = State.FAILED
            if stmt.timed_out:
                error = StatementCanceled(
                    f"canceling statement due to statement timeout ({lim.statement_timeout_s:g} s)",
                    hint="make the query cheaper, or ask for a longer --statement-timeout",
                )
            elif stmt.interrupt.requested:
                state, error = State.CANCELED, None
            with self._lock:
                self._drop_partial(stmt)
                self._finish(stmt, state, error)
            return
        except Exception as e:  # an engine bug: the client gets a generic error, the log the rest
            log.exception("statement %s failed unexpectedly", stmt.id)
            err = MatrixOSError(
                f"internal error: {type(e).__name__}",
                hint="this is a MatrixOS bug; the server log has the details",
            )
            with self._lock:
                self._drop_partial(stmt)
                self._finish(stmt, State.FAILED, err)
            return
        with self._lock:
            stmt.result = rows
            self._held += rows.nbytes
            if self._held > self.retained_bytes:
                self._evict(keep=stmt)
            self._finish(stmt, State.SUCCEEDED, None)

    @staticmethod
    def _drop_partial(stmt: Statement) -> None:
        """A failed statement's rows kept so far go, unless an Arrow stream may follow them
        (``http_tables.result_stream`` lets them go at its end; expiry at the latest)."""
        if stmt.request.format is not Format.ARROW_STREAM:
            stmt.rows = None

    def _time_out(self, stmt: Statement) -> None:
        if not stmt.done.is_set():
            stmt.timed_out = True
            _interrupt_until_done(stmt)

    def _finish(self, stmt: Statement, state: State, error: MatrixOSError | None) -> None:
        """End ``stmt`` (called with the lock held)."""
        if stmt.timer is not None:
            stmt.timer.cancel()
        if stmt.state in (State.PENDING, State.RUNNING):
            self._slots.give(stmt.owner.name)
        stmt.state = state
        stmt.error = error
        stmt.finished_at = time.time()
        self._ended.append((stmt.finished_at, stmt.id))
        # Recorded (history, audit, metrics) before anyone waiting sees it end: a client that
        # has read its streamed rows finds its history row.
        for listener in self._listeners:
            try:
                listener(stmt)
            except Exception:
                log.exception("a statement's on_finish listener failed")
        stmt._ended()

    def _expire(self, now: float) -> None:
        """Forget statements that ended more than ``retention_s`` ago, and the oldest ended
        ones past ``MAX_ENDED`` (lock held)."""
        ended = self._ended
        while ended and (now - ended[0][0] > self.retention_s or len(ended) > MAX_ENDED):
            _, sid = ended.popleft()
            stmt = self._statements.pop(sid, None)
            if stmt is not None:
                self._release(stmt)

    def _release(self, stmt: Statement) -> None:
        """``stmt`` is CLOSED, its rows let go (lock held)."""
        if stmt.result is not None:
            self._held -= stmt.result.nbytes
        stmt.state = State.CLOSED
        stmt.result = stmt.rows = None

    def _evict(self, keep: Statement) -> None:
        """Release the oldest finished results until the rest fit ``retained_bytes``."""
        for other in list(self._statements.values()):
            if self._held <= self.retained_bytes:
                return
            if other is not keep and other.result is not None:
                log.info("statement %s: result released early (server memory)", other.id)
                self._release(other)


def interrupt_until(handle: Interrupt, ended: threading.Event, every_s: float = 0.2) -> None:
    """Interrupt ``handle`` now, and again every ``every_s`` seconds until ``ended`` is set:
    DuckDB drops an interrupt that reaches a cursor before its query starts (the cursor is
    open, the query not yet running), so one interrupt alone can be lost and the statement
    run on. The HTTP API's statements and the wire's both stop this way."""
    handle.interrupt()
    if ended.is_set():
        return

    def keep() -> None:
        while not ended.wait(every_s):
            handle.interrupt()

    threading.Thread(target=keep, name="mx-cancel", daemon=True).start()


def _interrupt_until_done(stmt: Statement) -> None:
    if stmt.interrupting:  # one thread keeps at it, however many cancels come
        stmt.interrupt.interrupt()
        return
    stmt.interrupting = True
    interrupt_until(stmt.interrupt, stmt.done)


def _too_large(limits: Limits) -> SQLError:
    bound = [
        f"{n:,} {what}"
        for n, what in ((limits.max_result_rows, "rows"), (limits.max_result_bytes, "bytes"))
        if n
    ]
    return SQLError(
        f"the result is larger than this server lets one result be ({' or '.join(bound)})",
        hint="read fewer columns, or query a part with SQL (WHERE, LIMIT)",
        sqlstate="54000",  # program_limit_exceeded
    )


def _least(a: int | None, b: int | None) -> int | None:
    """The smaller limit (None is no limit)."""
    return b if a is None else a if b is None else min(a, b)


async def ended(stmt: Statement, timeout: float | None, *, rows: bool = False) -> bool:
    """Whether ``stmt`` ended within ``timeout`` seconds (None: waits for its end), awaited on
    the event loop without holding a thread. ``rows``: or kept its first rows (``ready``)."""
    event = stmt.ready if rows else stmt.done
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    def wake_soon() -> None:
        loop.call_soon_threadsafe(wake)

    (stmt.add_ready_callback if rows else stmt.add_done_callback)(wake_soon)
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        return event.is_set()
    return True
