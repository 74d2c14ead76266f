"""Row filters and column masks over HTTP: the remote SDK's ``t.set_row_filter``,
``t.drop_row_filter``, ``t.set_mask``, ``t.drop_mask`` and ``t.policies()``, the same calls as
the embedded ``Table``'s, run as the token's principal (only the table's owner, an admin or a
holder of MANAGE may change them; each change is audited like the embedded call's).

Routes:
    GET    /api/2.0/matrixos/tables/{name}/policies                     t.policies()
    PUT    /api/2.0/matrixos/tables/{name}/row-filters/{account}        t.set_row_filter()
    DELETE /api/2.0/matrixos/tables/{name}/row-filters/{account}        t.drop_row_filter()
    PUT    /api/2.0/matrixos/tables/{name}/masks/{column}/{account}     t.set_mask()
    DELETE /api/2.0/matrixos/tables/{name}/masks/{column}/{account}     t.drop_mask()
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (the
# ``User`` dependency comes from ``create_app``) when they are defined.
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from matrixos.catalog.policies import Policy

if TYPE_CHECKING:
    from matrixos.session import Lakehouse

TABLES = "/api/2.0/matrixos/tables"


class RowFilterIn(BaseModel):
    predicate: str = Field(min_length=1, max_length=65_536, description="a SQL predicate")


class MaskIn(BaseModel):
    expression: str = Field(
        min_length=1, max_length=65_536, description="a SQL expression shown instead"
    )


def policy_json(p: Policy) -> dict[str, Any]:
    """A policy as the routes answer it (``created_at`` as ISO text)."""
    return {
        "table": p.table, "kind": p.kind, "column": p.column, "account": p.account,
        "expression": p.expression, "cast_to": p.cast_to, "created_by": p.created_by,
        "created_at": p.created_at.isoformat(),
    }  # fmt: skip


def policies_router(lakehouse: "Lakehouse", User: Any) -> APIRouter:
    """The routes over ``lakehouse``, each acting as the ``User`` dependency's principal."""
    router = APIRouter(tags=["policies"])

    @router.get(TABLES + "/{name}/policies")
    def policies(name: str, user: User) -> dict[str, Any]:
        """The table's row filters and masks (all of them to who may manage the table, else
        those that apply to the caller)."""
        table = lakehouse.with_principal(user).table(name)
        return {"policies": [policy_json(p) for p in table.policies()]}

    @router.put(TABLES + "/{name}/row-filters/{account}")
    def set_row_filter(name: str, account: str, body: RowFilterIn, user: User) -> dict[str, Any]:
        """Show ``account`` only the rows where ``predicate`` holds."""
        lakehouse.with_principal(user).table(name).set_row_filter(body.predicate, account=account)
        return {}

    @router.delete(TABLES + "/{name}/row-filters/{account}")
    def drop_row_filter(name: str, account: str, user: User) -> dict[str, Any]:
        """Remove ``account``'s row filter (``dropped``: whether there was one)."""
        table = lakehouse.with_principal(user).table(name)
        return {"dropped": table.drop_row_filter(account=account)}

    @router.put(TABLES + "/{name}/masks/{column}/{account}")
    def set_mask(name: str, column: str, account: str, body: MaskIn, user: User) -> dict[str, Any]:
        """Show ``account`` ``expression`` instead of ``column``'s value."""
        table = lakehouse.with_principal(user).table(name)
        table.set_mask(column, body.expression, account=account)
        return {}

    @router.delete(TABLES + "/{name}/masks/{column}/{account}")
    def drop_mask(name: str, column: str, account: str, user: User) -> dict[str, Any]:
        """Remove ``account``'s mask of ``column`` (``dropped``: whether there was one)."""
        table = lakehouse.with_principal(user).table(name)
        return {"dropped": table.drop_mask(column, account=account)}

    return router
