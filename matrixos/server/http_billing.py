"""Metering and prepaid-credit routes of ``matrixos serve`` (see ``matrixos.metering`` and
``matrixos.catalog.billing``).

```
GET  /api/2.0/billing/usage?account=&by=hour|day|job&since=&until=   usage, in degrees
GET  /api/2.0/billing/accounts                          the credit of the accounts one sees
GET  /api/2.0/billing/accounts/{name}                   credited, consumed, balance, alerts
GET  /api/2.0/billing/accounts/{name}/ledger?limit=N    credits and charges
POST /api/2.0/billing/accounts/{name}/credit  {"degrees": "100", "note": "…"}   (admins)
```

A non-admin sees the accounts it is or belongs to (its own, its groups'); anything else is
``403``. Degrees are decimal strings (exact, nine places); times ISO 8601.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (the
# principal dependency is a local of billing_router).
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from matrixos.catalog.billing import Alert, Billing, CreditSummary, LedgerEntry
from matrixos.server.http_tables import ARROW_STREAM, ipc_stream

if TYPE_CHECKING:
    from matrixos.session import Lakehouse


class CreditRequest(BaseModel):
    """``POST …/credit``: degrees to add (a number or a decimal string) and a note."""

    degrees: Decimal = Field(gt=0, description="degrees (1 = 312 TFLOPS x 1 hour)")
    note: str | None = None


def billing_router(lakehouse: "Lakehouse", user: Any) -> APIRouter:
    """The metering and credit routes over ``lakehouse`` (``user``: create_app's
    authenticated-principal dependency)."""
    router = APIRouter(tags=["billing"])

    def billing() -> Billing:
        return Billing(lakehouse.catalog)

    @router.get("/api/2.0/billing/usage")
    def usage(
        principal: user,  # type: ignore[valid-type]
        account: str | None = Query(None),
        by: Literal["hour", "day", "job"] = Query("day"),
        since: str | None = Query(None, description="ISO 8601 time or date"),
        until: str | None = Query(None, description="ISO 8601 time or date"),
        format: Literal["JSON", "ARROW_STREAM"] = Query("JSON"),
    ) -> Any:
        """Metered use summed per hour, day or job, of the accounts the caller may see
        (``format=ARROW_STREAM``: an Arrow IPC stream, as the remote SDK reads it)."""
        rows = lakehouse.with_principal(principal).usage(account, by=by, since=since, until=until)
        if format == "ARROW_STREAM":
            data = b"".join(ipc_stream(rows.schema, [rows]))
            return Response(content=data, media_type=ARROW_STREAM)
        return {"by": by, "rows": _jsonable(rows)}

    @router.get("/api/2.0/billing/accounts")
    def accounts(principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        """Every account with credit or charges that the caller may see."""
        return {"accounts": [_summary(s) for s in billing().summaries(by=principal)]}

    @router.get("/api/2.0/billing/accounts/{name}")
    def account(name: str, principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        """``name``'s credited, consumed and balance, with its alerts."""
        b = billing()
        lakehouse.catalog.get_account(name)  # 404 for an unknown name
        out = _summary(b.summary(name, by=principal))
        out["alerts"] = [_alert(a) for a in b.alerts(name, by=principal)]
        return out

    @router.get("/api/2.0/billing/accounts/{name}/ledger")
    def ledger(
        name: str,
        principal: user,  # type: ignore[valid-type]
        limit: int | None = Query(None, ge=1),
    ) -> dict[str, Any]:
        """``name``'s credits and charges, oldest first, each with the balance after it."""
        entries = billing().ledger(name, by=principal, limit=limit)
        return {"account": name, "entries": [_entry(e) for e in entries]}

    @router.post("/api/2.0/billing/accounts/{name}/credit")
    def credit(
        name: str,
        body: CreditRequest,
        principal: user,  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        """Add a prepaid package (admins only); the balance after."""
        balance = billing().credit(name, body.degrees, by=principal, note=body.note)
        return {"account": name, "balance": _dec(balance)}

    return router


def _dec(d: Decimal) -> str:
    return format(d, "f")  # 0.000000001, never 1E-9


def _summary(s: CreditSummary) -> dict[str, Any]:
    return {
        "account": s.account,
        "credited": _dec(s.credited),
        "consumed": _dec(s.consumed),
        "balance": _dec(s.balance),
        "used_fraction": round(s.used_fraction, 6),
    }


def _alert(a: Alert) -> dict[str, Any]:
    return {
        "threshold": a.threshold,
        "credited": _dec(a.credited),
        "consumed": _dec(a.consumed),
        "at": a.at.isoformat(),
    }


def _entry(e: LedgerEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "kind": e.kind,
        "degrees": _dec(e.degrees),
        "balance": _dec(e.balance),
        "ref": e.ref,
        "by": e.by,
        "at": e.at.isoformat(),
        "note": e.note,
    }


def _jsonable(rows: pa.Table) -> list[dict[str, Any]]:
    def value(v: Any) -> Any:
        if isinstance(v, Decimal):
            return _dec(v)
        return v.isoformat() if hasattr(v, "isoformat") else v

    return [{k: value(v) for k, v in row.items()} for row in rows.to_pylist()]
