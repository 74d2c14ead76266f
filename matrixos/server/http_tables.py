"""The remote SDK's table and search calls over HTTP: ``lh.tables()``, ``lh.table(n)``'s
``describe()``/``history()``/``to_arrow()`` and ``lh.search()``.

Table reads and searches return rows, so they run as statements of the server's
``StatementManager``: the same limits as SQL (statement timeout, max result rows/bytes —
past which a read FAILS with SQLSTATE 54000 instead of arriving cut — and statements per
principal: 429 with ``Retry-After``), canceled on drain, audited and recorded in
``system.query.history`` (protocol ``sdk``; the text says what was read, e.g.
``READ TABLE main.s.t VERSION 3``).

Routes:
    GET    /api/2.0/matrixos/tables[?schema=]            lh.tables()
    GET    /api/2.0/matrixos/tables/{name}               lh.table(name).describe()
    GET    /api/2.0/matrixos/tables/{name}/history       lh.table(name).history()
    GET    /api/2.0/matrixos/tables/{name}/arrow         lh.table(name).to_arrow() (Arrow IPC)
    POST   /api/2.0/matrixos/search                      lh.search() (Arrow IPC)
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (the
# ``User`` dependency is local to ``tables_router``) when they are defined.
import asyncio
import io
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import pyarrow as pa
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from matrixos.catalog.access import Principal
from matrixos.catalog.names import TableIdent
from matrixos.engine.result import Result
from matrixos.errors import MatrixOSError, ServerUnavailable, StatementCanceled
from matrixos.server.http_models import SearchIn, TablesOut
from matrixos.server.statements import (
    State,
    Statement,
    StatementManager,
    StatementRequest,
    ended,
)
from matrixos.server.statements_results import MEDIA_TYPES, Format, ResultSet

if TYPE_CHECKING:
    from matrixos.session import Lakehouse

ARROW_STREAM = MEDIA_TYPES[Format.ARROW_STREAM]


def tables_router(
    lakehouse: "Lakehouse", manager: StatementManager, principal: Callable[..., Principal]
) -> APIRouter:
    """The routes over ``lakehouse``, each acting as the principal the ``principal``
    dependency authenticates; rows are read as statements of ``manager``."""
    router = APIRouter()
    User = Annotated[Principal, Depends(principal)]

    def session(p: Principal) -> "Lakehouse":
        return lakehouse.with_principal(p)

    @router.get("/api/2.0/matrixos/tables", tags=["tables"], response_model=TablesOut)
    def tables(user: User, schema: Annotated[str | None, Query(max_length=300)] = None) -> Any:
        """The tables the caller may read (in ``schema`` when given)."""
        return {"tables": session(user).tables(schema)}

    @router.get("/api/2.0/matrixos/tables/{name}", tags=["tables"])
    def describe(name: str, user: User) -> JSONResponse:
        """The table's catalog facts, version and schema."""
        return _json(session(user).table(name).describe())

    @router.get("/api/2.0/matrixos/tables/{name}/history", tags=["tables"])
    def history(
        name: str, user: User, limit: Annotated[int | None, Query(ge=1)] = None
    ) -> JSONResponse:
        """The table's commits, newest first."""
        return _json({"history": session(user).table(name).history(limit)})

    @router.get(
        "/api/2.0/matrixos/tables/{name}/arrow",
        tags=["tables"],
        response_class=StreamingResponse,
        responses={200: {"content": {ARROW_STREAM: {}}}},
    )
    async def table_rows(
        name: str,
        user: User,
        request: Request,
        version: Annotated[int | None, Query(ge=0)] = None,
        timestamp: Annotated[str | None, Query(max_length=64)] = None,
        columns: Annotated[list[str] | None, Query()] = None,
    ) -> Response:
        """The table's rows (at ``version`` or ``timestamp``) as an Arrow IPC stream. A
        statement like any other: the statement limits apply (429 past the principal's running
        statements; a result over the row or byte limit fails rather than arrive cut)."""

        def read(p: Principal) -> Result:
            t = session(p).table(name)
            return Result.from_table(
                t.to_arrow(version=version, timestamp=timestamp, columns=columns)
            )

        text = f"READ TABLE {_name_text(name)}" + (
            f" VERSION {version}" if version is not None else ""
        )
        text += " TIMESTAMP ?" if timestamp is not None else ""
        text += f" COLUMNS ({len(columns)})" if columns is not None else ""
        return await as_statement(manager, user, request, text, read)

    @router.post(
        "/api/2.0/matrixos/search",
        tags=["search"],
        response_class=StreamingResponse,
        responses={200: {"content": {ARROW_STREAM: {}}}},
    )
    async def search(body: SearchIn, user: User, request: Request) -> Response:
        """``lh.search``: the top ``k`` rows plus ``_score``, as an Arrow IPC stream (under
        the statement limits, as a table read)."""

        def find(p: Principal) -> Result:
            hits = session(p).search(
                body.table, body.query, k=body.k, mode=body.mode, filter=body.filter,
                columns=body.columns,
            )  # fmt: skip
            return Result.from_table(hits.to_arrow())

        text = f"SEARCH {_name_text(body.table)} MODE {body.mode} K {body.k}"
        return await as_statement(
            manager, user, request, text + (" FILTER ?" if body.filter else ""), find
        )

    return router


async def as_statement(
    manager: StatementManager,
    user: Principal,
    request: Request,
    text: str,
    call: Callable[[Principal], Result],
) -> Response:
    """Run ``call`` as a statement of ``manager`` (limits, cancel on drain, audit and history
    as ``text`` over protocol ``sdk``) and stream its rows from its first (``result_stream``)."""
    what = StatementRequest(text, format=Format.ARROW_STREAM, call=call, whole=True)
    client = request.client.host if request.client else None
    stmt = manager.submit(user, what, client=client, protocol="sdk")
    await ended(stmt, None, rows=True)
    if not streams(stmt):
        if stmt.state is State.CANCELED:
            raise StatementCanceled("the read was canceled (the server is shutting down)")
        if stmt.error is not None:
            raise stmt.error
    return await result_stream(manager, user, stmt)


def streams(stmt: Statement) -> bool:
    """Whether ``stmt``'s answer is its rows streamed: it succeeded, or kept rows (then
    failed or not); one that failed before any row is answered with its error."""
    rows = stmt.rows
    return rows is not None and (bool(rows.batches) or stmt.state is State.SUCCEEDED)


IPC_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # an Arrow IPC stream's end-of-stream marker

#: Ends a streamed Arrow IPC body whose statement failed after its first rows went out: an
#: IPC message header announcing more bytes than follow, so that no reader takes the rows
#: before it for the whole result (a whole one ends with the IPC end-of-stream marker). The
#: client then asks ``GET /api/2.0/sql/statements/{id}`` why.
BROKEN_TAIL = b"\xff\xff\xff\xff\xff\xff\xff\x7f"


async def result_stream(manager: StatementManager, user: Principal, stmt: Statement) -> Response:
    """``stmt``'s rows as one Arrow IPC stream, its id in the header
    ``X-MatrixOS-Statement-Id``. Called once its first rows were kept, it waits up to
    ``manager.stream_after_s`` for the rest: a result whole by then goes as one body of known
    length (``whole_body``), one still running streams (``streamed_body``). One read whole is
    CLOSED at the end."""
    if stmt.rows is None:  # released already: the server needed the memory
        raise ServerUnavailable("the result was released before it was sent", hint="retry")
    if manager.stream_after_s is None or manager.stream_after_s > 0:
        await ended(stmt, manager.stream_after_s)
    rows = stmt.rows
    if rows is None:
        raise ServerUnavailable("the result was released before it was sent", hint="retry")
    if stmt.state is State.SUCCEEDED:
        return await whole_body(manager, user, stmt, rows)
    return streamed_body(manager, user, stmt, rows)


#: A whole result at least this large (Arrow, in memory) is serialized off the event loop.
_SERIALIZE_ON_LOOP_BYTES = 1024 * 1024


async def whole_body(
    manager: StatementManager, user: Principal, stmt: Statement, rows: ResultSet
) -> StreamingResponse:
    """The rows of a statement that SUCCEEDED as one Arrow IPC stream with a
    ``Content-Length``: each record batch serialized once and sent as it is (no chunked
    transfer coding: uvicorn joins each chunk with its framing, a copy of every byte, and a
    client reads a sized body in one buffered read). The statement is CLOSED once sent."""

    def pieces() -> list[memoryview]:
        return [*ipc_messages(rows.schema, iter(rows.batches)), memoryview(IPC_END)]

    if rows.nbytes < _SERIALIZE_ON_LOOP_BYTES:
        body = pieces()
    else:
        body = await anyio.to_thread.run_sync(pieces)

    async def send() -> AsyncIterator[memoryview]:
        sent = False
        try:
            for piece in body:
                yield piece
            sent = True
        finally:
            stmt.rows = None
            if sent:
                manager.close(user, stmt.id)

    headers = {
        "X-MatrixOS-Statement-Id": stmt.id,
        "Content-Length": str(sum(p.nbytes for p in body)),
    }
    return StreamingResponse(send(), media_type=ARROW_STREAM, headers=headers)


def streamed_body(
    manager: StatementManager, user: Principal, stmt: Statement, rows: ResultSet
) -> StreamingResponse:
    """The rows of a statement still running, each record batch sent as the statement keeps
    it (the query still runs while the first rows travel). A statement that fails midway ends
    the body with ``BROKEN_TAIL`` and stays to be asked why; one read whole is CLOSED at the
    end (one whose client went away is canceled)."""

    async def stream() -> AsyncIterator[bytes | memoryview]:
        whole = False
        pieces = _Pieces(ipc_messages(rows.schema, rows.follow()))
        try:
            while (piece := await pieces.next()) is not None:
                yield piece
            await ended(stmt, None)
            whole = stmt.state is State.SUCCEEDED
            yield IPC_END if whole else BROKEN_TAIL
        finally:
            pieces.stop()
            stmt.rows = None  # a failed statement's rows were kept for this stream only
            if whole:
                manager.close(user, stmt.id)
            elif not stmt.done.is_set():  # the client went away: stop the query
                manager.cancel(user, stmt.id)

    headers = {"X-MatrixOS-Statement-Id": stmt.id}
    return StreamingResponse(stream(), media_type=ARROW_STREAM, headers=headers)


def _name_text(name: str) -> str:
    """A table name as the history shows it (the name checked, as the route will)."""
    try:
        return str(TableIdent.parse(name))
    except MatrixOSError:
        return "?"


def _json(value: Any) -> JSONResponse:
    # Catalog facts and history hold datetimes and such: their text form.
    return JSONResponse(json.loads(json.dumps(value, default=str)))


def ipc_stream(schema: pa.Schema, tables: list[pa.Table]) -> Iterator[bytes]:
    """``tables`` (of ``schema``) as one Arrow IPC stream, a record batch at a time."""
    sink = Pieces()
    writer = pa.ipc.new_stream(sink, schema)
    for table in tables:
        for batch in table.to_batches(max_chunksize=65_536):
            writer.write_batch(batch)
            yield sink.take()
    writer.close()
    yield sink.take()


def ipc_messages(schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> Iterator[memoryview]:
    """``schema`` then each of ``batches`` as Arrow IPC stream messages (no end-of-stream
    marker): each serialized once into its own buffer, handed over without another copy (a
    schema with dictionaries goes through a stream writer, which also sends the dictionaries)."""
    if any(pa.types.is_dictionary(f.type) for f in schema):
        sink = Pieces()
        writer = pa.ipc.new_stream(sink, schema)
        yield memoryview(sink.take())
        for batch in batches:
            writer.write_batch(batch)
            yield memoryview(sink.take())
        return
    yield memoryview(schema.serialize())
    for batch in batches:
        yield memoryview(batch.serialize())


class _Pieces:
    """What ``source`` yields, made by a thread of its own up to ``ahead`` pieces ahead of the
    event loop that sends them (a piece is serialized while the one before travels)."""

    def __init__(self, source: Iterator[memoryview], ahead: int = 4) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[memoryview | BaseException | None] = asyncio.Queue()
        self._room = threading.Semaphore(ahead)
        self._stopped = threading.Event()
        threading.Thread(target=self._make, args=(source,), daemon=True).start()

    def _make(self, source: Iterator[memoryview]) -> None:
        put = self._queue.put_nowait
        try:
            for piece in source:
                while not self._room.acquire(timeout=1.0):
                    if self._stopped.is_set():
                        return
                if self._stopped.is_set():
                    return
                self._loop.call_soon_threadsafe(put, piece)
            self._loop.call_soon_threadsafe(put, None)
        except BaseException as e:  # handed to the loop, raised there
            self._loop.call_soon_threadsafe(put, e)

    async def next(self) -> memoryview | None:
        """The next piece; None at the end."""
        piece = await self._queue.get()
        self._room.release()
        if isinstance(piece, BaseException):
            raise piece
        return piece

    def stop(self) -> None:
        self._stopped.set()


class Pieces(io.RawIOBase):
    """A write-only file that hands over what was written since the last ``take``."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out
