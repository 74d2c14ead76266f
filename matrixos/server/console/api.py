"""The JSON routes the web console needs beyond the public API (everything else it does goes
through the statements, tables and billing routes, and SQL such as ``SHOW USERS`` or
``GRANT``):

```
GET    /console/api/me                         who is logged in (name, admin, groups)
GET    /console/api/tree                       catalogs → schemas → tables and volumes one may see
GET    /console/api/nodes                      the compute pool's nodes (lh.compute.status())
GET    /console/api/tokens                     API tokens (one's own; an admin: everyone's)
POST   /console/api/tokens   {"account", "expires_in"}   a new token, shown once
DELETE /console/api/tokens/{id}                revoke a token
GET    /console/api/statements/{id}/download?format=csv|parquet   a result, streamed
```

Each route authenticates as any API route does (bearer token, or the console's session cookie
turned into one by ``ConsoleAuth``).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (the
# principal dependency is a parameter of console_api).
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from matrixos.catalog.access import Principal
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.base import TokenInfo
from matrixos.errors import SQLError
from matrixos.server.http_tables import Pieces
from matrixos.server.statements import State, StatementManager

if TYPE_CHECKING:
    from matrixos.session import Lakehouse

_DOWNLOAD_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


class TokenIn(BaseModel):
    """``POST /console/api/tokens``: for whom (default: oneself) and for how long."""

    account: str | None = Field(None, max_length=128)
    expires_in: str | None = Field(None, max_length=32, description='"30d", "12h"; none: never')


def console_api(lakehouse: "Lakehouse", manager: StatementManager, user: Any) -> APIRouter:
    """The console's JSON routes over ``lakehouse`` (``user``: create_app's principal
    dependency; ``manager``: the statements whose results ``download`` streams)."""
    router = APIRouter(prefix="/console/api", tags=["console"])
    accounts = Accounts(lakehouse.catalog)

    @router.get("/me")
    def me(principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        """The logged-in principal."""
        p: Principal = principal
        return {"name": p.name, "is_admin": p.is_admin, "groups": sorted(p.groups)}

    @router.get("/tree")
    def tree(principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        """Catalogs → schemas → tables (with their format) and volumes the caller may read.
        Schemas without one readable object are left out, except for admins."""
        p: Principal = principal
        service = lakehouse.service
        found: dict[str, dict[str, dict[str, list[Any]]]] = {}

        def slot(catalog: str, schema: str) -> dict[str, list[Any]]:
            schemas = found.setdefault(catalog, {})
            return schemas.setdefault(schema, {"tables": [], "volumes": []})

        if p.is_admin:
            for full in service.schemas():
                c, s = full.split(".", 1)
                slot(c, s)
        for info in service.tables(p):
            slot(info.ident.catalog, info.ident.schema)["tables"].append(
                {"name": info.ident.name, "full_name": info.name, "format": info.format}
            )
        for name in service.volumes(p):
            c, s, v = name.split(".", 2)
            slot(c, s)["volumes"].append({"name": v, "full_name": name})
        return {
            "catalogs": [
                {"name": c, "schemas": [{"name": s, **objs} for s, objs in sorted(ss.items())]}
                for c, ss in sorted(found.items())
            ]
        }

    @router.get("/nodes")
    def nodes(principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        """The compute pool and its nodes (CPUs and GPUs free, accelerator, zone)."""
        return lakehouse.compute.status()

    @router.get("/tokens")
    def tokens(principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        """The caller's tokens (an admin's: every account's), without their secrets."""
        p: Principal = principal
        rows = accounts.tokens(None if p.is_admin else p.name)
        return {"tokens": [_token(t) for t in rows]}

    @router.post("/tokens")
    def create_token(body: TokenIn, principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        """A new token: its text is in this answer only."""
        p: Principal = principal
        name = body.account or p.name
        token = accounts.create_token(name, body.expires_in, by=p)
        return {"account": name, "token_id": token_id(token), "token": token}

    @router.delete("/tokens/{token_id}")
    def revoke_token(token_id: str, principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        """Revoke a token (one's own; an admin: anyone's)."""
        accounts.revoke_token(token_id, by=principal)
        return {"revoked": token_id}

    @router.get("/statements/{statement_id}/download")
    def download(
        statement_id: str,
        principal: user,  # type: ignore[valid-type]
        format: Literal["csv", "parquet"] = Query("csv"),
    ) -> StreamingResponse:
        """A succeeded statement's whole result as CSV or Parquet, streamed chunk by chunk
        (the browser never holds it)."""
        stmt = manager.get(principal, statement_id)
        result = stmt.result
        if stmt.state is not State.SUCCEEDED or result is None:
            raise SQLError(
                f"statement {statement_id} has no result to download: it is {stmt.state.value}",
                hint="run the statement again and download once it SUCCEEDED",
                sqlstate="24000",
            )
        pieces = (
            _csv(result.schema, result.chunks)
            if format == "csv"
            else _parquet(result.schema, result.chunks)
        )
        name = f"result-{statement_id[:12]}.{format}"
        return StreamingResponse(
            pieces,
            media_type=_DOWNLOAD_TYPES[format],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return router


def token_id(token: str) -> str:
    """The id part of an ``mxt_<id>_<secret>`` token."""
    parts = token.split("_")
    return parts[1] if len(parts) >= 3 else "?"


def _token(t: TokenInfo) -> dict[str, Any]:
    def iso(v: Any) -> str | None:
        return v.isoformat() if v is not None else None

    return {
        "id": t.id, "account": t.account, "created_at": iso(t.created_at),
        "expires_at": iso(t.expires_at), "revoked_at": iso(t.revoked_at),
        "last_used_at": iso(t.last_used_at), "last_used_from": t.last_used_from,
    }  # fmt: skip


def _plain(table: pa.Table) -> pa.Table:
    """Nested and binary columns as text (CSV has no other form for them)."""
    cols = []
    for col in table.columns:
        if (
            pa.types.is_nested(col.type)
            or pa.types.is_binary(col.type)
            or pa.types.is_large_binary(col.type)
        ):
            col = pa.array([_cell_text(v) for v in col.to_pylist()], pa.string())
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def _cell_text(v: Any) -> str | None:
    if v is None:
        return None
    return v.hex() if isinstance(v, bytes) else json.dumps(v, default=str)


def _csv(schema: pa.Schema, chunks: list[pa.Table]) -> Iterator[bytes]:
    sink = Pieces()
    writer: pacsv.CSVWriter | None = None
    for chunk in chunks:
        plain = _plain(chunk)
        if writer is None:
            writer = pacsv.CSVWriter(sink, plain.schema)
        writer.write_table(plain)
        yield sink.take()
    if writer is None:  # no chunk: the header alone
        empty = _plain(schema.empty_table())
        writer = pacsv.CSVWriter(sink, empty.schema)
    writer.close()
    yield sink.take()


def _parquet(schema: pa.Schema, chunks: list[pa.Table]) -> Iterator[bytes]:
    sink = Pieces()
    with pq.ParquetWriter(sink, schema) as writer:
        for chunk in chunks:
            writer.write_table(chunk)
            yield sink.take()
    yield sink.take()
