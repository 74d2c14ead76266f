"""The lineage route of ``matrixos serve`` (see ``matrixos.catalog.lineage``).

```
GET /api/2.0/lineage?table=s.t&direction=up|down|both&depth=N   a table's lineage edges
```

The answer is ``{"table", "edges": [{"direction", "depth", "source", "target", "job",
"run_id", "principal", "event_time"}]}``, each dataset ``{"namespace", "name", "version"}``;
tables the caller may not read are named ``<hidden>``. A table the caller may not read itself
is ``403``, an unknown one ``404``.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (the
# principal dependency is a local of lineage_router).
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Query

if TYPE_CHECKING:
    from matrixos.session import Lakehouse


def lineage_router(lakehouse: "Lakehouse", user: Any) -> APIRouter:
    """The lineage route over ``lakehouse`` (``user``: create_app's authenticated-principal
    dependency)."""
    router = APIRouter(tags=["lineage"])

    @router.get("/api/2.0/lineage")
    def lineage(
        principal: user,  # type: ignore[valid-type]
        table: str = Query(..., description="schema.table or catalog.schema.table"),
        direction: Literal["up", "down", "both"] = Query("both"),
        depth: int = Query(5, ge=1, le=50),
    ) -> dict[str, Any]:
        """``table``'s upstream and downstream as the caller may see them."""
        graph = lakehouse.with_principal(principal).lineage(table, direction=direction, depth=depth)
        return graph.to_dict()

    return router
