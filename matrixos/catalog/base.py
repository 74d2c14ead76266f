"""The catalog interface: what every backend (SQL database, object-store log) offers.

A backend records names (catalogs, schemas, tables, volumes) and what each table is (format,
location, properties). It never touches table data: the session creates and deletes files, and
uses the catalog entry as the lock on a name (of several creators exactly one records it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime

from matrixos.catalog.names import TableIdent
from matrixos.errors import SchemaNotFound, TableExists, TableNotFound, VolumeNotFound


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TableInfo:
    """What the catalog knows of one table."""

    ident: TableIdent
    format: str
    location: str
    external: bool = False
    comment: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    owner: str | None = None
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)

    @property
    def name(self) -> str:
        return str(self.ident)


@dataclass(frozen=True)
class VolumeInfo:
    """What the catalog knows of one volume."""

    ident: TableIdent
    location: str
    external: bool = False
    comment: str | None = None
    owner: str | None = None
    created_at: datetime = field(default_factory=now)

    @property
    def name(self) -> str:
        return str(self.ident)


class Catalog(ABC):
    """Catalogs, schemas, tables and volumes; backends are picked by URL (``open_catalog``).

    Every method is one atomic change or one consistent read, safe to call from many threads
    and processes at once. Names are unique: a second ``create_*`` of a name raises
    ``TableExists``.

    Example:
        >>> from matrixos.catalog import open_catalog
        >>> cat = open_catalog("sqlite://")
        >>> cat.create_schema("main", "sales")
        >>> [s for _, s in cat.list_schemas()]
        ['default', 'sales']
    """

    url: str

    @abstractmethod
    def close(self) -> None: ...

    # -- catalogs and schemas ---------------------------------------------------------------
    @abstractmethod
    def create_catalog(
        self, name: str, *, comment: str | None = None, if_not_exists: bool = False
    ) -> None: ...

    @abstractmethod
    def create_schema(
        self,
        catalog: str,
        schema: str,
        *,
        comment: str | None = None,
        owner: str | None = None,
        if_not_exists: bool = False,
    ) -> None:
        """Create a schema (and its catalog); raises ``TableExists`` unless ``if_not_exists``."""

    @abstractmethod
    def schema_exists(self, catalog: str, schema: str) -> bool: ...

    @abstractmethod
    def list_schemas(self, catalog: str | None = None) -> list[tuple[str, str]]:
        """``(catalog, schema)`` pairs, sorted."""

    @abstractmethod
    def drop_schema(self, catalog: str, schema: str, *, if_exists: bool = False) -> None:
        """Drop an empty schema; raises ``TableExists`` while it holds tables or volumes."""

    # -- tables -----------------------------------------------------------------------------
    @abstractmethod
    def create_table(self, info: TableInfo) -> None:
        """Record a table; raises ``TableExists`` if the name is taken."""

    @abstractmethod
    def get_table(self, ident: TableIdent) -> TableInfo:
        """The table's entry; raises ``TableNotFound``."""

    def find_table(self, ident: TableIdent) -> TableInfo | None:
        try:
            return self.get_table(ident)
        except TableNotFound:
            return None

    @abstractmethod
    def list_tables(self, catalog: str | None = None, schema: str | None = None) -> list[TableInfo]:
        """Tables sorted by name, optionally of one catalog and schema."""

    @abstractmethod
    def update_table(self, info: TableInfo) -> TableInfo:
        """Replace a table's entry (comment, properties…); returns it with a new ``updated_at``."""

    @abstractmethod
    def touch(self, ident: TableIdent) -> None:
        """Note that the table's data changed (its ``updated_at``)."""

    @abstractmethod
    def drop_table(self, ident: TableIdent, *, location: str | None = None) -> TableInfo:
        """Remove a table's entry and return what it was.

        With ``location``, only an entry at that location is removed (``TableNotFound``
        otherwise): replacing a stale entry never removes a newer table of the same name.
        """

    # -- volumes ----------------------------------------------------------------------------
    @abstractmethod
    def create_volume(self, info: VolumeInfo) -> None:
        """Record a volume; raises ``TableExists`` if the name is taken."""

    @abstractmethod
    def get_volume(self, ident: TableIdent) -> VolumeInfo:
        """The volume's entry; raises ``VolumeNotFound``."""

    def find_volume(self, ident: TableIdent) -> VolumeInfo | None:
        try:
            return self.get_volume(ident)
        except VolumeNotFound:
            return None

    @abstractmethod
    def list_volumes(
        self, catalog: str | None = None, schema: str | None = None
    ) -> list[VolumeInfo]: ...

    @abstractmethod
    def drop_volume(self, ident: TableIdent) -> VolumeInfo:
        """Remove a volume's entry and return what it was."""


# The errors every backend raises, worded once.
def no_schema(catalog: str, schema: str) -> SchemaNotFound:
    return SchemaNotFound(
        f"schema {catalog}.{schema} does not exist", hint=f"CREATE SCHEMA {catalog}.{schema}"
    )


def schema_not_empty(catalog: str, schema: str, count: int, what: str) -> TableExists:
    return TableExists(
        f"schema {catalog}.{schema} still holds {count} {what}(s)", hint=f"drop its {what}s first"
    )


def no_table(ident: TableIdent, location: str | None = None) -> TableNotFound:
    if location is not None:
        return TableNotFound(f"table {ident} is no longer at {location}")
    return TableNotFound(f"table {ident} does not exist")
