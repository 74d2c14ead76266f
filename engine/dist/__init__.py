"""The distributed engine: SQL over Delta tables as Ray tasks.

The modules, in the order a query meets them:

- ``routing``: local or Ray (``route``), and the two consumers of a plan: EXPLAIN and running.
- ``planner``: the pure planner, a query in and a ``plan.DistributedPlan`` out, built by
  ``fragments`` (a SELECT over one table: per-fragment SQL and a merge) or by ``stages`` with
  ``partitioning`` over the blocks that ``blocks`` rewrites the query into (joins,
  subqueries, set operations, windows).
- ``explain``: the one renderer of a plan.
- ``execute``: running a plan on the pool; ``merge``: the coordinator's merge of fragments.
- ``runtime``: Ray tasks, the retry policy, the worker's DuckDB connection (shared with
  ``matrixos.batch``'s ``map_batches``).
"""

from __future__ import annotations

from matrixos.engine.dist.plan import DistributedPlan as DistributedPlan
from matrixos.engine.dist.routing import Routing as Routing
from matrixos.engine.dist.routing import route as route

__all__ = ["DistributedPlan", "Routing", "route"]
