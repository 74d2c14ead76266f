"""Three-level names: ``catalog.schema.table`` with ``main`` / ``default`` defaults."""

from __future__ import annotations

import re
from typing import NamedTuple

from matrixos.errors import SQLError

DEFAULT_CATALOG = "main"
DEFAULT_SCHEMA = "default"
_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_part(part: str, what: str = "name") -> str:
    """A valid identifier, lower-cased; raises ``SQLError`` for anything path-like."""
    if not _PART.match(part):
        raise SQLError(
            f"invalid {what} {part!r}: use letters, digits and underscores "
            "(no paths, dots, quotes or '..')"
        )
    return part.lower()


class TableIdent(NamedTuple):
    """A fully qualified table name."""

    catalog: str
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.catalog}.{self.schema}.{self.name}"

    @classmethod
    def parse(
        cls, name: str | TableIdent, *, catalog: str = DEFAULT_CATALOG, schema: str = DEFAULT_SCHEMA
    ) -> TableIdent:
        """``t`` → ``main.default.t``; ``s.t`` → ``main.s.t``; ``c.s.t`` as given.

        Example:
            >>> str(TableIdent.parse("sales.orders"))
            'main.sales.orders'
        """
        if isinstance(name, TableIdent):
            return name
        parts = name.split(".")
        if len(parts) == 1:
            parts = [catalog, schema, *parts]
        elif len(parts) == 2:
            parts = [catalog, *parts]
        elif len(parts) != 3:
            raise SQLError(f"invalid table name {name!r}: use [catalog.][schema.]table")
        try:
            c, s, t = (
                check_part(p, w) for p, w in zip(parts, ("catalog", "schema", "table"), strict=True)
            )
        except SQLError as e:  # name what the user wrote, not just the part that failed
            raise SQLError(f"invalid table name {name!r}: {e.message}") from None
        return cls(c, s, t)

    @classmethod
    def from_parts(cls, catalog: str | None, schema: str | None, name: str) -> TableIdent:
        return cls(
            check_part(catalog or DEFAULT_CATALOG, "catalog"),
            check_part(schema or DEFAULT_SCHEMA, "schema"),
            check_part(name, "table"),
        )


def parse_schema(name: str, *, catalog: str = DEFAULT_CATALOG) -> tuple[str, str]:
    """``s`` → ``(main, s)``; ``c.s`` as given."""
    parts = name.split(".")
    if len(parts) == 1:
        parts = [catalog, *parts]
    if len(parts) != 2:
        raise SQLError(f"invalid schema name {name!r}: use [catalog.]schema")
    try:
        return check_part(parts[0], "catalog"), check_part(parts[1], "schema")
    except SQLError as e:
        raise SQLError(f"invalid schema name {name!r}: {e.message}") from None
