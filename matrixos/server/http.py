"""The HTTP API (FastAPI): SQL statements shaped like Databricks' Statement Execution API, the
remote SDK's table and search calls, ``/healthz`` and ``/metrics``.

Every call but ``/healthz``, ``/metrics`` and the OpenAPI document carries
``Authorization: Bearer <token>``; the token's principal runs the call (its grants checked by
the ``TableService`` as for any session). A missing or bad token is 401 and is never logged.

Routes (``/openapi.json`` lists them with their bodies):

    POST   /api/2.0/sql/statements                       submit; waits up to wait_timeout
    GET    /api/2.0/sql/statements/{id}                  state, manifest, first chunk
    GET    /api/2.0/sql/statements/{id}/result/chunks/{n}        chunk n (JSON, or its link)
    GET    /api/2.0/sql/statements/{id}/result/chunks/{n}/data   chunk n as Arrow IPC / CSV bytes
    POST   /api/2.0/sql/statements/{id}/cancel
    DELETE /api/2.0/sql/statements/{id}                  close: release the rows
    GET    /api/2.0/matrixos/tables[?schema=]            lh.tables()
    GET    /api/2.0/matrixos/tables/{name}               lh.table(name).describe()
    GET    /api/2.0/matrixos/tables/{name}/history       lh.table(name).history()
    GET    /api/2.0/matrixos/tables/{name}/arrow         lh.table(name).to_arrow() (Arrow IPC)
    POST   /api/2.0/matrixos/search                      lh.search() (Arrow IPC)
    GET|PUT|DELETE /api/2.0/matrixos/tables/{name}/policies|row-filters/…|masks/…   t.policies()…

(the table and search routes are ``http_tables.py``'s, run as statements under the limits; the
policy routes ``http_policies.py``'s; bearer tokens and their cache ``http_auth.py``'s).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (the
# ``User`` dependency is local to ``create_app``) when they are defined.
import json
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from matrixos.catalog.access import Principal
from matrixos.catalog.throttle import LoginThrottle
from matrixos.errors import MatrixOSError, ServerUnavailable, SQLError
from matrixos.server.audit import AuditWriter
from matrixos.server.console import mount_console
from matrixos.server.http_auth import (
    Authenticate,
    LoginsThrottled,
    TokenCache,
    Unauthenticated,
    principal_dependency,
)
from matrixos.server.http_billing import billing_router
from matrixos.server.http_errors import error_body, http_status
from matrixos.server.http_iot import iot_router
from matrixos.server.http_jobs import jobs_router
from matrixos.server.http_lineage import lineage_router
from matrixos.server.http_metrics import CONTENT_TYPE, ServerMetrics
from matrixos.server.http_models import StatementIn, StatementOut
from matrixos.server.http_policies import policies_router
from matrixos.server.http_tables import result_stream, streams, tables_router
from matrixos.server.statements import (
    State,
    Statement,
    StatementManager,
    StatementRequest,
    ended,
)
from matrixos.server.statements_params import Parameter
from matrixos.server.statements_results import (
    MEDIA_TYPES,
    Format,
    ResultSet,
    arrow_bytes,
    columns,
    csv_bytes,
    json_rows,
)

if TYPE_CHECKING:
    from matrixos.session import Lakehouse

log = logging.getLogger(__name__)

STATEMENTS = "/api/2.0/sql/statements"
ARROW_STREAM = MEDIA_TYPES[Format.ARROW_STREAM]
#: Threads serving blocking calls (statement waits, table reads) at once.
HTTP_THREADS = 256
_CANCEL_SETTLE_S = 10.0  # on_wait_timeout=CANCEL: how long to wait for the cancel to land
_INLINE_RENDER_ROWS = 2_000  # a first chunk larger than this is turned into JSON off the loop
_READS = frozenset({"GET", "HEAD", "OPTIONS"})  # requests that change no token or grant
#: How long a request for a chunk of a running statement waits for it to be final.
CHUNK_WAIT_S = 10.0


def create_app(
    lakehouse: "Lakehouse",
    manager: StatementManager,
    authenticate: Authenticate,
    *,
    default_dialect: str = "duckdb",
    throttle: LoginThrottle | None = None,
    audit: AuditWriter | None = None,
    tokens: TokenCache | None = None,
) -> FastAPI:
    """The API over ``lakehouse`` (each call acting as the token's principal), running
    statements on ``manager``; ``authenticate(token)`` gives the principal or raises.
    ``throttle`` counts failed logins (default: 10 a minute per address and token id, then 30 s
    of 429s). ``audit`` records every statement and each token's first login from an address
    (and every failed one). ``tokens``: the tokens checked recently, reused for a moment
    (``http_auth.TokenCache``; ``authenticate`` is then not called)."""
    logins = throttle or LoginThrottle(limit=10, window=60.0, lockout=30.0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        anyio.to_thread.current_default_thread_limiter().total_tokens = HTTP_THREADS
        yield

    app = FastAPI(
        title="MatrixOS",
        summary="SQL statements, tables and search over HTTP",
        version="2.0",
        lifespan=lifespan,
    )
    metrics = ServerMetrics(lambda: {str(k): v for k, v in manager.counts().items()})
    app.state.metrics = metrics
    manager.on_finish(lambda s: metrics.finished(s.state.value, s.duration))
    if audit is not None:
        manager.on_finish(lambda s: _audit_statement(audit, s))
    app.state.manager = manager
    principal = principal_dependency(authenticate, cache=tokens, throttle=logins, audit=audit)
    User = Annotated[Principal, Depends(principal)]
    app.include_router(lineage_router(lakehouse, User))
    app.include_router(billing_router(lakehouse, User))
    app.include_router(iot_router(lakehouse, User))
    app.include_router(jobs_router(lakehouse, User))
    app.include_router(policies_router(lakehouse, User))
    mount_console(app, lakehouse, User)  # the web console at / (its session cookie → bearer)

    # -- errors -----------------------------------------------------------------------------
    @app.exception_handler(Unauthenticated)
    async def _unauthenticated(request: Request, e: Unauthenticated) -> JSONResponse:
        return JSONResponse(
            {"error_code": "UNAUTHENTICATED", "message": str(e),
             "hint": "send the header Authorization: Bearer <token> (matrixos tokens create)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip

    @app.exception_handler(LoginsThrottled)
    async def _throttled(request: Request, e: LoginsThrottled) -> JSONResponse:
        return JSONResponse(
            {"error_code": "RESOURCE_EXHAUSTED", "sqlstate": "53000",
             "message": "too many failed logins from this address with this token",
             "hint": f"wait {e.retry_after:.0f} s, and check the token"},
            status_code=429,
            headers={"Retry-After": str(max(1, round(e.retry_after)))},
        )  # fmt: skip

    @app.exception_handler(MatrixOSError)
    async def _matrixos_error(request: Request, e: MatrixOSError) -> JSONResponse:
        status = http_status(e)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return JSONResponse(error_body(e), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
            for err in e.errors()[:5]
        )
        return JSONResponse(
            {"error_code": "INVALID_PARAMETER_VALUE", "message": problems, "sqlstate": "22023"},
            status_code=400,
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error serving %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error_code": "INTERNAL_ERROR", "message": f"internal error: {type(e).__name__}"},
            status_code=500,
        )

    app.add_middleware(_CountRequests, metrics=metrics, tokens=tokens)

    # -- health -----------------------------------------------------------------------------
    @app.get("/healthz", tags=["server"])
    async def healthz() -> JSONResponse:
        """``ok``, or 503 ``draining`` while the server shuts down."""
        if manager.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", tags=["server"], response_class=Response)
    def prometheus() -> Response:
        """Prometheus text format: statements by state, latency, HTTP requests."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # -- statements -------------------------------------------------------------------------
    @app.post(
        STATEMENTS,
        tags=["statements"],
        response_model=StatementOut,
        responses={200: {"content": {ARROW_STREAM: {}}}},
    )
    async def execute(body: StatementIn, user: User, request: Request) -> Response:
        """Run a statement; answer when it ends or after ``wait_timeout``.

        A client that sends ``Accept: application/vnd.apache.arrow.stream`` with format
        ARROW_STREAM gets a statement whose first rows came within the wait as one Arrow IPC
        stream of all its rows, sent while the query still produces them (its id in the
        header ``X-MatrixOS-Statement-Id``; ``http_tables.result_stream``); anything else
        as JSON.
        """
        wait = int(body.wait_timeout[:-1])
        if wait != 0 and not 5 <= wait <= 50:
            raise SQLError(
                f"wait_timeout {body.wait_timeout} is out of range",
                hint="use 0s (answer at once, then poll) or 5s to 50s",
                sqlstate="22023",
            )
        if body.disposition == "INLINE" and body.format != "JSON_ARRAY":
            raise SQLError(
                f"format {body.format} needs disposition EXTERNAL_LINKS",
                hint="omit disposition, or use format JSON_ARRAY for inline rows",
                sqlstate="22023",
            )
        what = StatementRequest(
            statement=body.statement,
            parameters=[Parameter(p.name, p.value, p.type) for p in body.parameters],
            catalog=body.catalog,
            schema=body.schema_name,
            format=Format(body.format),
            row_limit=body.row_limit,
            byte_limit=body.byte_limit,
            dialect=body.dialect or default_dialect,
        )
        client = request.client.host if request.client else None
        sdk = request.headers.get("x-matrixos-client") == "sdk"  # the remote SDK's lh.sql
        stmt = manager.submit(user, what, client=client, protocol="sdk" if sdk else "http")
        arrow = what.format is Format.ARROW_STREAM and ARROW_STREAM in request.headers.get(
            "accept", ""
        )
        # Waited for on the event loop (no thread held while the statement runs).
        if wait and not await ended(stmt, wait, rows=arrow) and body.on_wait_timeout == "CANCEL":
            manager.cancel(user, stmt.id)
            await ended(stmt, _CANCEL_SETTLE_S)
        status = http_status(stmt.error) if stmt.state is State.FAILED and stmt.error else 200
        if arrow and streams(stmt):
            return await result_stream(manager, user, stmt)
        rows = stmt.result.total_row_count if stmt.result is not None else 0
        if rows > _INLINE_RENDER_ROWS and stmt.request.format is Format.JSON_ARRAY:
            out = await anyio.to_thread.run_sync(
                lambda: statement_body(stmt, with_error=status != 200)
            )
        else:
            out = statement_body(stmt, with_error=status != 200)
        return JSONResponse(out, status_code=status)

    @app.get(STATEMENTS + "/{statement_id}", tags=["statements"], response_model=StatementOut)
    def get_statement(statement_id: str, user: User) -> JSONResponse:
        """A statement's state and, once it succeeded, its manifest and first chunk."""
        return JSONResponse(statement_body(manager.get(user, statement_id)))

    @app.get(STATEMENTS + "/{statement_id}/result/chunks/{chunk_index}", tags=["statements"])
    def get_chunk(statement_id: str, chunk_index: int, user: User) -> JSONResponse:
        """One chunk: its rows (JSON_ARRAY) or its link, and the next chunk's (also while
        the statement runs: a chunk is answered once final)."""
        stmt = manager.get(user, statement_id)
        return JSONResponse(chunk_body(stmt, chunk_rows(stmt, chunk_index), chunk_index))

    @app.get(
        STATEMENTS + "/{statement_id}/result/chunks/{chunk_index}/data",
        tags=["statements"],
        response_class=Response,
        responses={200: {"content": {ARROW_STREAM: {}, "text/csv": {}}}},
    )
    def get_chunk_data(statement_id: str, chunk_index: int, user: User) -> Response:
        """One chunk's bytes: an Arrow IPC stream (ARROW_STREAM) or CSV text (CSV)."""
        stmt = manager.get(user, statement_id)
        chunk = chunk_rows(stmt, chunk_index).chunks[chunk_index]
        fmt = stmt.request.format
        if fmt is Format.JSON_ARRAY:
            data = json.dumps(json_rows(chunk)).encode()
        elif fmt is Format.ARROW_STREAM:
            data = arrow_bytes(chunk)
        else:
            data = csv_bytes(chunk, header=chunk_index == 0)
        return Response(data, media_type=MEDIA_TYPES[fmt])

    @app.post(STATEMENTS + "/{statement_id}/cancel", tags=["statements"])
    def cancel(statement_id: str, user: User) -> JSONResponse:
        """Ask the statement to stop (it ends CANCELED unless it ended already)."""
        manager.cancel(user, statement_id)
        return JSONResponse({})

    @app.delete(STATEMENTS + "/{statement_id}", tags=["statements"])
    def close(statement_id: str, user: User) -> JSONResponse:
        """Cancel the statement if it runs and release its rows (it is CLOSED)."""
        manager.close(user, statement_id)
        return JSONResponse({})

    app.include_router(tables_router(lakehouse, manager, principal))

    return app


class _CountRequests:
    """ASGI middleware counting requests by method, route and status (cheaper than
    Starlette's ``BaseHTTPMiddleware``, which wraps every response in a stream)."""

    def __init__(self, app: Any, metrics: ServerMetrics, tokens: TokenCache | None) -> None:
        self.app = app
        self.metrics = metrics
        self.tokens = tokens

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.request(scope["method"], route, status)
            if self.tokens is not None and scope["method"] not in _READS and route != STATEMENTS:
                self.tokens.clear()  # a console or API call may have changed tokens or grants


def _audit_statement(audit: AuditWriter, stmt: Statement) -> None:
    """The statement's audit event and ``system.query.history`` row."""
    canceled = stmt.state is State.CANCELED
    audit.statement(
        stmt.owner.name,
        stmt.request.statement,
        stmt.request.dialect,
        protocol=stmt.protocol,
        client_address=stmt.client,
        error=stmt.error,
        rows=stmt.result.total_row_count if stmt.result is not None else None,
        seconds=stmt.duration,
        outcome="canceled" if canceled else None,
        statement_id=stmt.id,
        started=stmt.started_at or stmt.submitted_at,
        nbytes=stmt.result.nbytes if stmt.result is not None else None,
    )


# -- bodies ---------------------------------------------------------------------------------
def statement_body(stmt: Statement, *, with_error: bool = False) -> dict[str, Any]:
    """The JSON of ``GET …/statements/{id}``; ``with_error`` repeats a failure's error at the
    top level (what an HTTP client reads from a 4xx answer). A RUNNING statement whose first
    chunk is ready has a manifest of the chunks so far (``total_chunk_count`` and
    ``total_row_count`` come once it SUCCEEDED): its chunks can be fetched while it runs."""
    body: dict[str, Any] = {"statement_id": stmt.id, "status": {"state": stmt.state.value}}
    if stmt.error is not None:
        err = error_body(stmt.error)
        body["status"]["error"] = err
        if with_error:
            body.update(err)
    rs = stmt.result if stmt.state is State.SUCCEEDED else None
    if rs is not None:
        body["manifest"] = {
            "format": stmt.request.format.value,
            "schema": {"column_count": len(rs.schema), "columns": columns(rs.schema)},
            "total_chunk_count": len(rs.chunks),
            "chunks": [_chunk_info(rs, i) for i in range(len(rs.chunks))],
            "total_row_count": rs.total_row_count,
            "truncated": rs.truncated,
        }
        body["result"] = chunk_body(stmt, rs, 0)
    elif stmt.state is State.RUNNING and (rs := stmt.rows) is not None and rs.chunk_ready(0):
        ready = [i for i in range(len(rs.chunks)) if rs.chunk_ready(i)]
        body["manifest"] = {
            "format": stmt.request.format.value,
            "schema": {"column_count": len(rs.schema), "columns": columns(rs.schema)},
            "chunks": [_chunk_info(rs, i) for i in ready],
        }
    return body


def _chunk_info(rs: ResultSet, index: int) -> dict[str, Any]:
    chunk = rs.chunks[index]
    return {
        "chunk_index": index,
        "row_offset": rs.row_offset(index),
        "row_count": chunk.num_rows,
        "byte_count": chunk.nbytes,
    }


def _chunk_link(stmt: Statement, index: int) -> str:
    return f"{STATEMENTS}/{stmt.id}/result/chunks/{index}"


def chunk_body(stmt: Statement, rs: ResultSet, index: int) -> dict[str, Any]:
    """Chunk ``index`` of ``rs`` (``stmt``'s rows; ``chunk_ready``): rows inline for
    JSON_ARRAY, else a link to its bytes; and the next chunk's index and link, unless it is
    the last."""
    body = _chunk_info(rs, index)
    del body["byte_count"]
    nxt: dict[str, Any] = {}
    if rs.has_next(index):
        nxt = {
            "next_chunk_index": index + 1,
            "next_chunk_internal_link": _chunk_link(stmt, index + 1),
        }
    if stmt.request.format is Format.JSON_ARRAY:
        body["data_array"] = json_rows(rs.chunks[index])
    else:
        link = {**_chunk_info(rs, index), "external_link": _chunk_link(stmt, index) + "/data"}
        body["external_links"] = [{**link, **nxt}]
    return {**body, **nxt}


def chunk_rows(stmt: Statement, index: int) -> ResultSet:
    """The rows holding chunk ``index`` of ``stmt`` once that chunk can be read: at once when
    the statement SUCCEEDED; while it runs, once the chunk is final and whether another
    follows is known (waiting up to ``CHUNK_WAIT_S``; still not: ``ServerUnavailable``, 503,
    to retry). A statement that failed, was canceled or closed has no chunks (24000)."""
    rows = stmt.rows
    if index >= 0 and stmt.state is State.RUNNING and rows is not None:
        ready = rows.wait_chunk(index, CHUNK_WAIT_S)
        if ready and stmt.state is State.RUNNING:
            return rows
        if not ready and not rows.complete:
            raise ServerUnavailable(
                f"chunk {index} of statement {stmt.id} is not ready yet",
                hint="retry in a moment: the statement is still producing rows",
            )
        stmt.wait(CHUNK_WAIT_S)  # its rows are all kept: it is ending
    rs = stmt.result
    if stmt.state is not State.SUCCEEDED or rs is None:
        raise SQLError(
            f"statement {stmt.id} has no result to read: it is {stmt.state.value}",
            hint="poll GET /api/2.0/sql/statements/{id} until it is RUNNING with a manifest "
            "or SUCCEEDED",
            sqlstate="24000",
        )
    if not 0 <= index < len(rs.chunks):
        raise SQLError(
            f"no chunk {index}: the result has {len(rs.chunks)}",
            hint="chunk indexes run from 0 to manifest.total_chunk_count - 1",
            sqlstate="22023",
        )
    return rs
