"""Plans of repeated queries: a statement's DuckDB SQL kept per text, principal and table
versions, so running it again costs a few checks instead of parsing, rewriting and binding.

A dashboard, a notebook cell run again and a benchmark send the same text many times; its plan
(the DuckDB SQL with each table replaced by its pruned file list) depends only on

- the text, its dialect and the engine asked (``auto``/``local``),
- the principal (its grants decide what it may read; policies wrap what it reads),
- the catalog (entries, grants, policies: one change counter, ``TableService.cache``),
- the version of each table read at its latest version (time travel names its own),

and on nothing else when the query folded no constant through DuckDB (``now()``,
``current_date``: decided when it runs), reads no search function, no real-time view and no
Arrow source (deletion vectors) but a table's rows still in a write-ahead log (an IoT table
under continuous ingest always has some: its plan records where it scans them,
``PendingSlot``) and the datasets of a Delta table's files on an object store (immutable: the
plan keeps them, ``Plan.sources``). Only such plans are kept (a search statement sent again with
another vector has its own cache: ``engine.sql.search_plans``). Using one checks the counter
(one read), each table's latest version (a stat on a local disk, one LIST of the Delta log
from that version on S3: ``DeltaStore.is_latest``) and its pending rows (none
then and now, or rows of the same shape, registered under the plan's name); any difference
plans again.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> _ = lh.create_table("s.t", [{"id": 1}])
    >>> q = "SELECT count(*) FROM s.t"
    >>> lh.sql(q).scalar(), lh.sql(q).scalar()  # the second from the plan cache
    (1, 1)
    >>> lh.sql(q).stats["plan"]
    'cached'
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from matrixos._lru import LRU
from matrixos.catalog import TableInfo

# Plans kept per engine; statements longer than this are not kept (their text is the key).
MAX_PLANS = 256
MAX_TEXT = 64 * 1024


@dataclass(frozen=True)
class PendingSlot:
    """Where a plan reads a table's rows still in a write-ahead log: the Arrow source name its
    SQL scans, and the shape those rows had (``PendingRows.shape``). A later run registers the
    rows pending then under that name, when they have the same shape."""

    name: str
    shape: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class TableRead:
    """One table a plan reads: its catalog entry and the version read; ``latest``: read at
    its latest version (checked again before the plan is used); ``pending``: its rows still
    in a write-ahead log, when the plan read any."""

    info: TableInfo
    version: int
    latest: bool
    pending: PendingSlot | None = None

    @property
    def location(self) -> str:
        return self.info.location


@dataclass(frozen=True)
class Plan:
    """A query's DuckDB SQL and what it depends on; ``sources``: the Arrow sources its SQL
    scans by name that stay valid while its tables stay at their versions (the pyarrow
    datasets of a Delta table's files on an object store), registered again at each run."""

    sql: str
    counter: int
    reads: tuple[TableRead, ...]
    locations: tuple[str, ...]  # what the cursor's allowed directories must cover
    notes: tuple[str, ...] = ()
    sources: tuple[tuple[str, Any], ...] = ()


class PlanCache:
    """Plans by key (text, dialect, engine, principal); thread-safe. ``volatile()`` marks the
    statement planning on this thread as one whose plan must not be kept."""

    def __init__(self, maxsize: int = MAX_PLANS) -> None:
        self._plans: LRU[Hashable, Plan] = LRU(maxsize)
        self._local = threading.local()

    def get(self, key: Hashable) -> Plan | None:
        return self._plans.get(key)

    def put(self, key: Hashable, plan: Plan) -> None:
        self._plans.put(key, plan)

    def drop(self, key: Hashable) -> None:
        self._plans.pop(key)

    def clear(self) -> None:
        self._plans.clear()

    # -- what planning on this thread did ---------------------------------------------------
    def begin(self) -> None:
        """A statement starts planning on this thread."""
        self._local.volatile = False

    def volatile(self) -> None:
        """The statement planning on this thread evaluated something at plan time whose value
        may change (a constant folded by DuckDB, a time-travel offset from now)."""
        self._local.volatile = True

    def is_volatile(self) -> bool:
        return bool(getattr(self._local, "volatile", True))
