"""Who is asking, and what they may do: the principal every table call carries.

A principal holds grants, each ``"PRIVILEGE ON securable"``: ``SELECT ON main.sales.orders``,
``MODIFY ON main.sales.*`` (every table of a schema), ``CREATE ON main.sales`` (new tables in a
schema), ``ALL ON main.*``; ``"*"`` is everything (the embedded user's, and an admin's).
A table's owner may do anything with it. ``TableService.authorize`` is the one place that
checks: SQL, the SDK, search, time travel, EXPLAIN and DESCRIBE HISTORY all resolve tables
through it.

Privileges:
    ``SELECT``  read rows, any version, search, EXPLAIN, DESCRIBE, history.
    ``MODIFY``  INSERT, MERGE, UPDATE, DELETE, OPTIMIZE, VACUUM, ALTER of properties.
    ``CREATE``  create (or register) a table or volume in a schema.
    ``MANAGE``  drop a table or volume.

Example:
    >>> alice = Principal("alice", frozenset({"SELECT ON main.sales.*"}))
    >>> alice.may("SELECT", "main.sales.orders"), alice.may("MODIFY", "main.sales.orders")
    (True, False)
    >>> EMBEDDED_USER.may("MANAGE", "main.any.table")
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from matrixos.errors import AccessDenied

PRIVILEGES = ("SELECT", "MODIFY", "CREATE", "MANAGE")


@dataclass(frozen=True)
class Principal:
    """Who is asking. The embedded user (the default) owns everything.

    Attributes:
        name: The account name (a table's ``owner`` matches it).
        grants: ``"*"`` or ``"PRIVILEGE ON securable"`` strings (see the module's docs).
    """

    name: str
    grants: frozenset[str] = frozenset({"*"})

    @property
    def is_admin(self) -> bool:
        return "*" in self.grants

    def may(self, privilege: str, securable: str, *, owner: str | None = None) -> bool:
        """Whether this principal holds ``privilege`` on ``securable`` (``catalog.schema`` or
        ``catalog.schema.table``), directly, through a wildcard, or as its ``owner``."""
        if self.is_admin or (owner is not None and owner == self.name):
            return True
        parts = securable.split(".")
        candidates = {securable, "*"} | {".".join(parts[:i]) + ".*" for i in range(1, len(parts))}
        for grant in self.grants:
            what, _, on = grant.partition(" ON ")
            if what.strip().upper() in (privilege, "ALL") and on.strip() in candidates:
                return True
        return False

    def check(self, privilege: str, securable: str, *, owner: str | None = None) -> None:
        """Raise ``AccessDenied`` unless ``may(privilege, securable)``."""
        if not self.may(privilege, securable, owner=owner):
            raise AccessDenied(
                f"{self.name} has no {privilege} privilege on {securable}",
                hint=f"an owner or admin can run: GRANT {privilege} ON {securable} TO {self.name}",
            )


EMBEDDED_USER = Principal("embedded")
