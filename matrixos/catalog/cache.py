"""What a process remembers of the catalog: entries re-read only when the catalog changed.

Every statement resolves its tables (a catalog row each) and looks up their row filters and
column masks; read from the database each time, that was ~1 ms per table. ``CatalogCache`` keeps
what was read under the catalog's change counter (``Catalog.changes``: a one-row counter the
database's triggers move on every change of names, table entries, policies, grants and
accounts, from any process; the object-store catalog's newest commit). Each lookup reads the
counter (~30 us on SQLite, one round trip on PostgreSQL, one LIST on an object store) and
serves from memory while it has not moved; when it moved, everything cached is dropped and read
again on demand. So a change committed by another process is seen by the next lookup, never
later, and a catalog without a counter (``changes()`` is None) is read every time.

The counter is read before the rows it guards: a row read after a concurrent change may be
newer than the counter it is filed under, never older, and the next lookup sees the counter
moved and reads it again.

How to use it (the table service holds one: ``TableService.cache``)::

    info = service.cache.get_table(ident)           # TableInfo, or TableNotFound
    info = service.cache.find_table(ident)          # TableInfo | None
    value = service.cache.get(("my-part", key), load)  # any value derived from catalog rows
    with service.cache.pinned():                    # several lookups, one counter read
        ...                                         # (read-only work: a query's planning)

Keys of ``get`` are tuples whose first item names the user of the cache (``"table"`` and
``"policies"`` are taken). Cached values are shared between threads: never mutate them. What a
value caches must be decided by catalog rows the counter covers (not a table's ``updated_at``,
not tokens); table *data* versions are not catalog changes (``TableService.snapshot``).

Example:
    >>> from matrixos.catalog import TableIdent, TableInfo, open_catalog
    >>> cat = open_catalog("sqlite://")
    >>> cache = CatalogCache(cat)
    >>> cache.find_table(TableIdent.parse("s.t")) is None
    True
    >>> cat.create_schema("main", "s")
    >>> cat.create_table(TableInfo(TableIdent.parse("s.t"), "delta", "file:///tmp/t"))
    >>> cache.get_table(TableIdent.parse("s.t")).location
    'file:///tmp/t'
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from matrixos.catalog.base import Catalog, TableInfo
from matrixos.catalog.names import TableIdent

T = TypeVar("T")
# Entries kept at most; past this the cache starts afresh (a process that touched this many
# names in one catalog version reads them again, nothing worse).
MAX_ENTRIES = 100_000
_MISSING: Any = object()


class CatalogCache:
    """Values read from ``catalog``, valid while its change counter stays where it was when
    they were read. Thread-safe."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._lock = threading.Lock()
        self._counter: int | None = None
        self._entries: dict[Hashable, Any] = {}
        self._local = threading.local()  # pinned(): depth and the counter read
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Forget everything (the next lookups read the catalog)."""
        with self._lock:
            self._entries.clear()
            self._counter = None

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s value: this process changed what it holds in a way that does not move
        the counter (a table's ``updated_at``)."""
        with self._lock:
            self._entries.pop(key, None)

    def counter(self) -> int | None:
        """The catalog's change counter now (None: it has none); inside ``pinned()``, as
        first read there."""
        local = self._local
        if getattr(local, "depth", 0):
            if local.value is _MISSING:
                local.value = self.catalog.changes()
            return local.value  # type: ignore[no-any-return]
        return self.catalog.changes()

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Within it, this thread reads the counter once (at its first lookup): for a
        sequence of lookups that writes nothing, such as planning one query, which then sees
        one state of the catalog. Never around a write: what it changed would not be seen."""
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth == 0:
            local.value = _MISSING
        local.depth = depth + 1
        try:
            yield
        finally:
            local.depth = depth

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The value cached under ``key`` for the catalog as it is now, else ``load()``'s
        (cached when the counter did not move meanwhile)."""
        found = self.get_many([key], lambda missing: {k: load() for k in missing})
        return found[key]  # type: ignore[no-any-return]

    def get_many(
        self, keys: Iterable[Hashable], load: Callable[[Sequence[Hashable]], dict[Hashable, Any]]
    ) -> dict[Hashable, Any]:
        """The values of ``keys``: the cached ones, and ``load(missing)`` for the others (one
        call for all of them; it must return a value for each)."""
        keys = list(dict.fromkeys(keys))
        n = self.counter()
        if n is None:
            return load(keys)
        out: dict[Hashable, Any] = {}
        with self._lock:
            if n != self._counter:
                self._entries.clear()
                self._counter = n
            for k in keys:
                v = self._entries.get(k, _MISSING)
                if v is not _MISSING:
                    out[k] = v
        missing = [k for k in keys if k not in out]
        self.hits += len(out)
        if not missing:
            return out
        self.misses += len(missing)
        loaded = load(missing)
        with self._lock:
            if self._counter == n:
                if len(self._entries) + len(loaded) > MAX_ENTRIES:
                    self._entries.clear()
                self._entries.update(loaded)
        out.update(loaded)
        return out

    # -- table entries ----------------------------------------------------------------------
    def find_table(self, ident: TableIdent) -> TableInfo | None:
        """The catalog entry of ``ident`` (None when there is none)."""
        return self.get(("table", ident), lambda: self.catalog.find_table(ident))

    def get_table(self, ident: TableIdent) -> TableInfo:
        """The catalog entry of ``ident``; ``TableNotFound`` as ``Catalog.get_table`` says it."""
        info = self.find_table(ident)
        if info is None:
            return self.catalog.get_table(ident)  # raises with the catalog's own message
        return info
