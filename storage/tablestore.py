"""``TableStore``: what every table format implements, and the registry that finds one by name.

A format is one module with a ``TableStore`` subclass and one line in ``FORMATS`` (or a call to
``register_format``). The table service (``matrixos.catalog.service``) asks the registry for the
catalog entry's format and never branches on a format's name; the SQL engine reads any store
through ``dataset()`` (a source DuckDB scans) and takes Delta's faster file-list path only
because ``DeltaStore`` also offers ``snapshot`` files (a capability, not a name).

A read-only format (Iceberg, plain Parquet folders…) implements the reading half; every write
raises ``NotSupported`` naming the format.

Example:
    >>> store_class("delta").__name__
    'DeltaStore'
    >>> sorted(formats())
    ['delta', 'lance']
"""

from __future__ import annotations

import importlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from matrixos.errors import ConfigError, NotSupported

if TYPE_CHECKING:
    import fsspec

    from matrixos.config import Settings
    from matrixos.storage.warehouse import Warehouse

# Auto-compaction threshold of one table, overriding ``Settings.auto_compact_min_files``.
MIN_FILES_PROPERTY = "matrixos.autoCompact.minFiles"
TARGET_FILE_PROPERTY = "matrixos.targetFileBytes"
# Columns compaction sorts a table's rewritten files by (a JSON list, or names separated by
# commas), e.g. a series table's tags then ``time``: a query for one series then reads few
# row groups, and each file's min/max statistics are tight.
SORT_BY_PROPERTY = "matrixos.sort_by"


@dataclass(frozen=True)
class WriteResult:
    """What a write did."""

    version: int
    metrics: dict[str, Any]


class TableStore(ABC):
    """Operations on the table at one location, in one format.

    Subclasses set ``format`` (the registry name) and implement the reading methods; writable
    formats override the writing ones.
    """

    format: ClassVar[str]
    writable: ClassVar[bool] = True
    partitioned: ClassVar[bool] = False  # whether ``create(partition_by=…)`` is supported
    # Whether ``open()`` returns a Delta log snapshot whose file lists the SQL engine reads
    # itself (``engine.scan``); other formats are scanned through ``dataset()``.
    file_lists: ClassVar[bool] = False
    # Whether the engine's vector/text search (``engine.search``: Lance indexes) reads it.
    searchable: ClassVar[bool] = False

    location: str
    label: str  # "table main.s.t", for messages

    @classmethod
    @abstractmethod
    def configured(
        cls,
        location: str,
        warehouse: Warehouse,
        settings: Settings,
        *,
        name: str,
        properties: Mapping[str, str],
    ) -> TableStore:
        """The store for a catalog table, with the session's settings and credentials."""

    @classmethod
    @abstractmethod
    def detect(cls, location: str, fs: fsspec.AbstractFileSystem | None) -> bool:
        """Whether a table of this format is at ``location`` (for ``register_table``)."""

    # -- reading ----------------------------------------------------------------------------
    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def open(self, version: int | None = None, timestamp: datetime | str | None = None) -> Any:
        """The format's snapshot handle at the latest version, or as of ``version`` /
        ``timestamp``; raises ``TableNotFound`` / ``VersionNotFound``."""

    # ``snapshot``: a handle ``open()`` returned (the service's cached latest one), read
    # instead of opening the table again.
    def version(self, snapshot: Any = None) -> int:
        """The latest committed version."""
        return int(self.describe()["version"])

    def is_latest(self, snapshot: Any) -> bool:
        """Whether ``snapshot`` (a handle ``open()`` returned) is still the latest version,
        when that can be told without reading the table (a stat or two); False when unsure:
        the caller then refreshes it."""
        return False

    @abstractmethod
    def schema(self, snapshot: Any = None) -> pa.Schema: ...

    def partition_by(self, snapshot: Any = None) -> list[str]:
        return []

    @abstractmethod
    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits, newest first: version, timestamp, operation, parameters, metrics."""

    @abstractmethod
    def dataset(self, version: int | None = None, timestamp: datetime | str | None = None) -> Any:
        """The rows as a source DuckDB scans (a ``pyarrow.dataset``, a Lance dataset, …)."""

    def scan(
        self,
        version: int | None = None,
        timestamp: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """All rows (a projection of ``columns`` when given)."""
        return self.dataset(version, timestamp).to_table(  # type: ignore[no-any-return]
            columns=list(columns) if columns else None
        )

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Facts of the latest version: ``version``, ``num_files``, ``size_bytes``, …"""

    # -- writing (read-only formats keep these) ---------------------------------------------
    def _read_only(self, op: str) -> NotSupported:
        return NotSupported(
            f"{op} on {self.label}: {self.format} tables are read-only in MatrixOS",
            hint="copy it into a Delta or Lance table: CREATE TABLE … AS SELECT * FROM …",
        )

    def create(
        self,
        data: Any = None,
        *,
        schema: pa.Schema | None = None,
        partition_by: Sequence[str] | None = None,
        properties: Mapping[str, str] | None = None,
        name: str | None = None,
        description: str | None = None,
    ) -> WriteResult:
        raise self._read_only("CREATE")

    def append(
        self, data: Any, *, evolve: bool = False, commit_metadata: Mapping[str, str] | None = None
    ) -> WriteResult:
        raise self._read_only("INSERT")

    def overwrite(
        self,
        data: Any,
        *,
        evolve: bool = False,
        predicate: str | None = None,
        commit_metadata: Mapping[str, str] | None = None,
    ) -> WriteResult:
        raise self._read_only("INSERT OVERWRITE")

    def merge(self, data: Any, on: Sequence[str], **kwargs: Any) -> WriteResult:
        raise self._read_only("MERGE")

    def delete(self, predicate: str | None = None) -> WriteResult:
        raise self._read_only("DELETE")

    def update(self, updates: Mapping[str, str], where: str | None = None) -> WriteResult:
        raise self._read_only("UPDATE")

    def optimize(self, zorder: Sequence[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        raise self._read_only("OPTIMIZE")

    def vacuum(
        self, retention_hours: int | None = None, *, dry_run: bool = False, enforce: bool = True
    ) -> list[str]:
        raise self._read_only("VACUUM")


# -- the registry ---------------------------------------------------------------------------
# name → "module:Class" (imported on first use: ``import matrixos`` stays light) or the class.
FORMATS: dict[str, str | type[TableStore]] = {
    "delta": "matrixos.storage.delta:DeltaStore",
    "lance": "matrixos.storage.lance:LanceStore",
}


def register_format(name: str, store: str | type[TableStore]) -> None:
    """Add a table format: ``store`` is a ``TableStore`` subclass or ``"module:Class"``.

    Example:
        >>> register_format("delta", "matrixos.storage.delta:DeltaStore")
    """
    FORMATS[name] = store


def formats() -> list[str]:
    """The registered format names."""
    return list(FORMATS)


def store_class(name: str) -> type[TableStore]:
    """The ``TableStore`` class of format ``name``; ``NotSupported`` for an unknown one."""
    entry = FORMATS.get(name)
    if entry is None:
        raise NotSupported(
            f"table format {name!r} is not supported",
            hint="one of: " + ", ".join(sorted(FORMATS)),
        )
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = FORMATS[name] = getattr(importlib.import_module(module), attr)
    return entry


def detect_format(location: str, fs: fsspec.AbstractFileSystem | None = None) -> str:
    """The format of the table at ``location``: the first registered one that recognizes it
    (Lance's ``_versions/`` is checked before Delta's ``_delta_log/``), else ``delta``."""
    found = [n for n in FORMATS if n != "delta" and store_class(n).detect(location, fs)]
    return found[0] if found else "delta"


def has_folder(location: str, name: str, fs: fsspec.AbstractFileSystem | None) -> bool:
    """Whether ``location/name`` exists (on ``fs``, or the local disk when None): how formats
    recognize their tables (``_delta_log``, ``_versions``)."""
    path = location.rstrip("/") + "/" + name
    if fs is None:
        return os.path.isdir(path)
    return bool(fs.exists(path))


def writer_settings(settings: Settings, properties: Mapping[str, str], name: str) -> dict[str, Any]:
    """The keyword arguments every writable store takes from the session's settings and the
    table's properties: ``commit_retries``, ``auto_compact_min_files``, ``name``."""
    return {
        "commit_retries": settings.commit_retries,
        "auto_compact_min_files": auto_compact_min_files(
            properties, settings.auto_compact_min_files, name
        ),
        "name": name,
    }


def auto_compact_min_files(properties: Mapping[str, str], default: int, name: str) -> int:
    """The table's ``matrixos.autoCompact.minFiles`` property (0 turns auto-compaction off)."""
    return _int_property(properties, MIN_FILES_PROPERTY, default, name, minimum=0)


def target_file_bytes(properties: Mapping[str, str], default: int, name: str) -> int:
    """The table's ``matrixos.targetFileBytes`` property: the size its writes cut files at
    (a continuous aggregate keeps small files, so a refresh rewrites little)."""
    return _int_property(properties, TARGET_FILE_PROPERTY, default, name, minimum=1)


def sort_columns(properties: Mapping[str, str], name: str) -> list[str]:
    """The table's ``matrixos.sort_by`` property: the columns compaction sorts rows by.

    Example:
        >>> sort_columns({"matrixos.sort_by": '["host", "time"]'}, "t"), sort_columns({}, "t")
        (['host', 'time'], [])
    """
    raw = properties.get(SORT_BY_PROPERTY)
    if raw is None or not raw.strip():
        return []
    text = raw.strip()
    try:
        cols = json.loads(text) if text.startswith("[") else text.split(",")
    except ValueError:
        cols = None
    if not isinstance(cols, list) or not all(isinstance(c, str) and c.strip() for c in cols):
        raise ConfigError(
            f"table {name}: property {SORT_BY_PROPERTY}={raw!r} is not a list of column names",
            hint='write a JSON list (\'["host", "time"]\') or names separated by commas',
        )
    return [c.strip() for c in cols]


def _int_property(
    properties: Mapping[str, str], key: str, default: int, name: str, *, minimum: int
) -> int:
    raw = properties.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"table {name}: property {key}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"table {name}: property {key} must be >= {minimum}")
    return value
