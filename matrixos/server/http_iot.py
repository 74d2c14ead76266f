"""IoT write routes of ``matrixos serve``: InfluxDB line protocol (v2 and v3 paths) and JSON
points, into the ingest service's write-ahead log (``matrixos.iot``).

```
POST /api/v2/write?bucket=<schema.table | schema>&precision=ns|us|ms|s     (InfluxDB v2)
POST /api/v3/write_lp?db=<schema.table | schema>&precision=…&accept_partial=true|false
POST /api/2.0/iot/points?table=<schema.table>&precision=…                  (JSON points)
```

``204 No Content`` only once the points are fsynced in the log (durable, visible to queries).
A malformed line or a type conflict is ``400`` naming the line, column and field: on the v2
path nothing of the body is written (a client retries the corrected body whole); the v3 path
keeps the good lines unless ``accept_partial=false`` (as InfluxDB 3 does) and lists the refused
ones. ``Content-Encoding: gzip`` bodies are accepted. Writing needs ``MODIFY`` on the table
(``CREATE`` on the schema for a new one). Past the ingest service's capacity the answer is
``429`` with ``Retry-After``; a log that cannot be written (disk full, read-only) is ``503``
and nothing is acknowledged.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (the
# principal dependency is a local of iot_router).
import json
import zlib
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from matrixos.errors import IngestBusy, MatrixOSError, PointsRejected
from matrixos.iot.ingest import IotIngest, WriteAck, ingest_for
from matrixos.server.http_errors import error_body, http_status

if TYPE_CHECKING:
    from matrixos.catalog.access import Principal
    from matrixos.session import Lakehouse

MAX_BODY = 256 << 20  # bytes of a (decompressed) write body
_V3_PRECISIONS = {"auto": "ns", "nanosecond": "ns", "microsecond": "us", "millisecond": "ms"}


def iot_router(lakehouse: "Lakehouse", user: Any) -> APIRouter:
    """The IoT write routes over ``lakehouse``'s ingest service (``user``: create_app's
    authenticated-principal dependency)."""
    router = APIRouter(tags=["iot"])

    def service() -> IotIngest:
        return ingest_for(lakehouse)

    @router.post("/api/v2/write", status_code=204)
    async def write_v2(
        request: Request,
        principal: user,  # type: ignore[valid-type]
        bucket: str = Query(..., description="schema.table, or a schema (a table per measurement)"),
        precision: str = Query("ns", description="ns, us, ms or s"),
        org: str | None = Query(None, description="ignored (InfluxDB v2 compatibility)"),
    ) -> Response:
        """Write InfluxDB line protocol; the whole body is refused when a line is bad."""
        return await _write(service(), principal, bucket, request, precision, partial=False)

    @router.post("/api/v3/write_lp", status_code=204)
    async def write_v3(
        request: Request,
        principal: user,  # type: ignore[valid-type]
        db: str = Query(..., description="schema.table, or a schema (a table per measurement)"),
        precision: str = Query("auto"),
        accept_partial: bool = Query(True),
    ) -> Response:
        """Write line protocol (InfluxDB 3's path): good lines are kept unless
        ``accept_partial=false``; refused lines are listed in a 400."""
        unit = _V3_PRECISIONS.get(precision, precision)
        return await _write(service(), principal, db, request, unit, partial=accept_partial)

    @router.post("/api/2.0/iot/points", status_code=204)
    async def write_points(
        request: Request,
        principal: user,  # type: ignore[valid-type]
        table: str = Query(..., description="schema.table"),
        precision: str = Query("ns"),
    ) -> Response:
        """Write JSON points (``matrixos.iot.jsonpoints``)."""
        try:
            body = await _body(request)
            payload = json.loads(body)
        except MatrixOSError as e:
            return _error(e)
        except ValueError as e:
            return _error(
                PointsRejected(
                    f"the body is not JSON: {e}",
                    path="JSON points",
                    rejected=[{"line": None, "column": None, "field": None, "message": str(e)}],
                )
            )
        ing = service()
        try:
            await run_in_threadpool(ing.write_json, principal, table, payload, precision)
        except MatrixOSError as e:
            return _error(e)
        return Response(status_code=204)

    return router


async def _body(request: Request) -> bytes:
    raw = await request.body()
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("", "identity"):
        if len(raw) > MAX_BODY:
            raise _TooLarge()
        return raw
    if encoding != "gzip":
        raise PointsRejected(
            f"Content-Encoding {encoding!r} is not supported",
            path="request",
            rejected=[],
            hint="send gzip or an uncompressed body",
        )
    return await run_in_threadpool(_gunzip, raw)


def _gunzip(raw: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(raw, MAX_BODY + 1)
    except zlib.error as e:
        raise PointsRejected(f"the gzip body is corrupt: {e}", path="request", rejected=[]) from e
    if len(out) > MAX_BODY:
        raise _TooLarge()
    return out


class _TooLarge(PointsRejected):  # 413
    def __init__(self) -> None:
        super().__init__(
            f"the body is larger than {MAX_BODY >> 20} MiB",
            path="request",
            rejected=[],
            hint="send smaller batches",
        )


async def _write(
    ingest: IotIngest,
    principal: "Principal",
    target: str,
    request: Request,
    precision: str,
    *,
    partial: bool,
) -> Response:
    try:
        body = await _body(request)
        ack: WriteAck = await run_in_threadpool(
            ingest.write_lines,
            principal,
            target,
            body,
            precision,
            partial=partial,
            source="request body",
        )
    except MatrixOSError as e:
        return _error(e)
    if ack.rejected:
        return JSONResponse(
            {
                "code": "invalid",
                "error_code": "INVALID_PARAMETER_VALUE",
                "message": f"partial write: {ack.points} point(s) written, "
                f"{len(ack.rejected)} line(s) refused",
                "line": ack.rejected[0]["line"],
                "rejected": ack.rejected,
                "points_written": ack.points,
            },
            status_code=400,
        )
    return Response(status_code=204)


def _error(e: MatrixOSError) -> JSONResponse:
    """InfluxDB's error shape (``code``, ``message``, ``line``) with MatrixOS's fields."""
    body = error_body(e)
    headers = None
    if isinstance(e, IngestBusy):
        status = 503 if e.storage_failure else 429
        headers = {"Retry-After": str(max(1, round(e.retry_after)))}
        body["error_code"] = "TEMPORARILY_UNAVAILABLE" if status == 503 else "RESOURCE_EXHAUSTED"
    elif isinstance(e, _TooLarge):
        status = 413
    else:
        status = http_status(e)
    body["code"] = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not found"}.get(
        status, "unavailable" if status >= 429 else "invalid"
    )
    if isinstance(e, PointsRejected):
        body["rejected"] = e.rejected
        if e.rejected:
            body["line"] = e.rejected[0]["line"]
            body["field"] = e.rejected[0]["field"]
    return JSONResponse(body, status_code=status, headers=headers)


__all__ = ["MAX_BODY", "iot_router"]
