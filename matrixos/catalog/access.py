"""Who is asking, and what they may do: the principal every table call carries.

The model is Unity Catalog's. Securables nest: a catalog (``main``) holds schemas
(``main.sales``), a schema holds tables and volumes (``main.sales.orders``). A grant is a
privilege on one securable and is inherited downward (``SELECT`` on a schema covers its tables);
what is not granted is denied. Grants are written ``"PRIVILEGE ON [KIND] securable"``::

    USE CATALOG ON CATALOG main        USE SCHEMA ON SCHEMA main.sales
    SELECT ON TABLE main.sales.orders  MODIFY ON SCHEMA main.sales    ALL PRIVILEGES ON CATALOG main

Without a kind, the depth of the name says it (``main`` a catalog, ``main.sales`` a schema,
``main.sales.orders`` a table or volume), and ``main.sales.*`` / ``main.*`` name a schema / a
catalog. ``"*"`` alone is every privilege everywhere: the embedded user's and an admin's.

Privileges:
    ``USE CATALOG`` / ``USE SCHEMA``  needed, besides the privilege itself, for anything inside
                 the catalog / schema (as in Unity Catalog: SELECT on a table is not enough).
    ``SELECT``   read rows, any version, search, EXPLAIN, DESCRIBE, history.
    ``MODIFY``   INSERT, MERGE, UPDATE, DELETE, OPTIMIZE, VACUUM, ALTER of properties.
    ``CREATE``   create (or register) a table or volume in a schema, a schema in a catalog.
    ``READ VOLUME`` / ``WRITE VOLUME``  read / change a volume's files (on a volume, ``SELECT``
                 and ``MODIFY`` are their synonyms).
    ``MANAGE``   drop a table, volume or schema; grant on it.
    ``ALL PRIVILEGES`` (``ALL``)  every privilege above, ``MANAGE`` included.

An object's owner (its creator) may do anything with it, USE privileges or not.
``TableService`` is the one place that checks: SQL, the SDK, search, time travel, EXPLAIN and
DESCRIBE HISTORY all resolve tables through it.

Example:
    >>> alice = Principal("alice", frozenset({
    ...     "USE CATALOG ON main", "USE SCHEMA ON main.sales", "SELECT ON main.sales.*"}))
    >>> alice.may("SELECT", "main.sales.orders"), alice.may("MODIFY", "main.sales.orders")
    (True, False)
    >>> Principal("bob", frozenset({"SELECT ON main.sales.*"})).may("SELECT", "main.sales.t")
    False
    >>> EMBEDDED_USER.may("MANAGE", "main.any.table")
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

from matrixos.errors import AccessDenied, ConfigError

PRIVILEGES = (
    "USE CATALOG",
    "USE SCHEMA",
    "SELECT",
    "MODIFY",
    "CREATE",
    "READ VOLUME",
    "WRITE VOLUME",
    "MANAGE",
    "ALL PRIVILEGES",
)
SECURABLE_KINDS = ("catalog", "schema", "table", "volume")
# Where each privilege may be granted (a grant on a container covers what it holds).
GRANTABLE_ON: dict[str, frozenset[str]] = {
    "USE CATALOG": frozenset({"catalog"}),
    "USE SCHEMA": frozenset({"catalog", "schema"}),
    "SELECT": frozenset({"catalog", "schema", "table"}),
    "MODIFY": frozenset({"catalog", "schema", "table"}),
    "CREATE": frozenset({"catalog", "schema"}),
    "READ VOLUME": frozenset({"catalog", "schema", "volume"}),
    "WRITE VOLUME": frozenset({"catalog", "schema", "volume"}),
    "MANAGE": frozenset(SECURABLE_KINDS),
    "ALL PRIVILEGES": frozenset(SECURABLE_KINDS),
}
_DEPTH_KIND = {1: "catalog", 2: "schema", 3: "table"}
# On a volume, SELECT reads its files and MODIFY changes them: Unity Catalog's names for that.
_VOLUME_SYNONYMS = {"SELECT": "READ VOLUME", "MODIFY": "WRITE VOLUME"}


def normalize_privilege(privilege: str) -> str:
    """``"select"`` → ``"SELECT"``, ``"ALL"`` → ``"ALL PRIVILEGES"``; ``ConfigError`` if unknown."""
    p = " ".join(privilege.upper().split())
    p = "ALL PRIVILEGES" if p == "ALL" else p
    if p not in PRIVILEGES:
        raise ConfigError(
            f"unknown privilege {privilege!r}", hint="one of: " + ", ".join(PRIVILEGES)
        )
    return p


def securable_kind(securable: str, kind: str | None = None) -> tuple[str, str]:
    """``(kind, name)`` of a securable: ``"main.sales.*"`` → ``("schema", "main.sales")``."""
    name = securable.strip()
    if name.endswith(".*"):
        name = name[:-2]
        kind = kind or _DEPTH_KIND.get(name.count(".") + 1, "")
    depth = name.count(".") + 1
    kind = (kind or _DEPTH_KIND.get(depth, "")).lower()
    want = {"catalog": 1, "schema": 2, "table": 3, "volume": 3}.get(kind)
    if want is None or want != depth or not all(name.split(".")):
        raise ConfigError(
            f"{securable!r} does not name a {kind or 'catalog, schema, table or volume'}",
            hint="catalogs are named main, schemas main.sales, tables and volumes main.sales.t",
        )
    return kind, name


@dataclass(frozen=True)
class Grant:
    """One privilege on one securable. ``kind`` None: a three-part name given without a kind
    (it covers the table or volume of that name)."""

    privilege: str
    kind: str | None
    securable: str

    @classmethod
    def parse(cls, text: str) -> Grant:
        """``"SELECT ON TABLE main.sales.orders"``, ``"ALL ON main.*"``, ``"MODIFY ON *"``."""
        what, sep, on = text.partition(" ON ")
        if not sep or not on.strip():
            raise ConfigError(f"grant {text!r} is not 'PRIVILEGE ON securable'")
        privilege = normalize_privilege(what)
        words = on.split()
        if words == ["*"]:
            return cls(privilege, None, "*")
        kind = words[0].lower() if len(words) == 2 else None
        if kind is not None and kind not in SECURABLE_KINDS:
            raise ConfigError(f"grant {text!r}: {words[0]} is not CATALOG, SCHEMA, TABLE or VOLUME")
        found, name = securable_kind(words[-1], kind)
        # a bare three-part name is a table's or a volume's: which one is not said
        return cls(privilege, None if kind is None and found == "table" else found, name)

    def __str__(self) -> str:
        if self.securable == "*":
            return f"{self.privilege} ON *"
        kind = f"{self.kind.upper()} " if self.kind else ""
        return f"{self.privilege} ON {kind}{self.securable}"

    def covers(self, privilege: str, kind: str, securable: str) -> bool:
        """Whether this grant gives ``privilege`` on ``securable`` (of ``kind``)."""
        mine = self.privilege
        if kind == "volume":
            mine = _VOLUME_SYNONYMS.get(mine, mine)
            privilege = _VOLUME_SYNONYMS.get(privilege, privilege)
        if mine not in (privilege, "ALL PRIVILEGES"):
            return False
        if self.securable == "*":
            return True
        if securable == self.securable:
            return self.kind is None or self.kind == kind
        return securable.startswith(self.securable + ".") and self.kind in (
            "catalog",
            "schema",
            None,
        )


@dataclass(frozen=True)
class Principal:
    """Who is asking. The embedded user (the default) owns everything.

    Attributes:
        name: The account name (a table's ``owner`` matches it).
        grants: ``"*"`` or ``"PRIVILEGE ON [KIND] securable"`` strings (see the module's docs):
            the account's own and those of its groups.
        groups: The groups it belongs to (directly or through other groups).
    """

    name: str
    grants: frozenset[str] = frozenset({"*"})
    groups: frozenset[str] = frozenset()
    parsed: tuple[Grant, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parsed = tuple(Grant.parse(g) for g in sorted(self.grants) if g != "*")
        object.__setattr__(self, "parsed", parsed)

    @property
    def is_admin(self) -> bool:
        return "*" in self.grants

    def holds(self, privilege: str, securable: str, kind: str | None = None) -> bool:
        """Whether a grant gives ``privilege`` on ``securable`` itself (no USE, no owner)."""
        if self.is_admin:
            return True
        kind, name = securable_kind(securable, kind)
        privilege = normalize_privilege(privilege)
        return any(g.covers(privilege, kind, name) for g in self.parsed)

    def missing(
        self, privilege: str, securable: str, *, owner: str | None = None, kind: str | None = None
    ) -> tuple[str, str, str] | None:
        """What stops ``privilege`` on ``securable``: ``(privilege, kind, name)`` of the first
        missing grant (the privilege itself, then USE CATALOG, then USE SCHEMA), or None."""
        if self.is_admin or (owner is not None and owner == self.name):
            return None
        kind, name = securable_kind(securable, kind)
        privilege = normalize_privilege(privilege)
        if not any(g.covers(privilege, kind, name) for g in self.parsed):
            return privilege, kind, name
        parts = name.split(".")
        if privilege != "USE CATALOG" and not self.holds("USE CATALOG", parts[0], "catalog"):
            return "USE CATALOG", "catalog", parts[0]
        if kind != "catalog" and privilege not in ("USE CATALOG", "USE SCHEMA"):
            schema = ".".join(parts[:2])
            if not self.holds("USE SCHEMA", schema, "schema"):
                return "USE SCHEMA", "schema", schema
        return None

    def may(
        self, privilege: str, securable: str, *, owner: str | None = None, kind: str | None = None
    ) -> bool:
        """Whether this principal may use ``privilege`` on ``securable`` (``catalog``,
        ``catalog.schema`` or ``catalog.schema.table``; ``kind="volume"`` for a volume):
        through a grant on it or a container of it plus USE CATALOG and USE SCHEMA, as its
        ``owner``, or as an admin."""
        return self.missing(privilege, securable, owner=owner, kind=kind) is None

    def check(
        self, privilege: str, securable: str, *, owner: str | None = None, kind: str | None = None
    ) -> None:
        """Raise ``AccessDenied`` unless ``may(privilege, securable)``; the message names the
        grant that is missing."""
        gap = self.missing(privilege, securable, owner=owner, kind=kind)
        if gap is not None:
            what, on_kind, on = gap
            raise AccessDenied(
                f"{self.name} has no {what} privilege on {on}",
                hint=f"an owner or admin can run: GRANT {what} ON {on_kind.upper()} {on} "
                f"TO {self.name}",
            )


EMBEDDED_USER = Principal("embedded")
#: How the embedded session names its owner: ``embedded:<OS user>``. An account name cannot
#: hold ``:`` (``Accounts.create``), so no server account — not one named like the OS user —
#: owns what an embedded session created.
EMBEDDED_PREFIX = "embedded:"


def embedded_principal(user: str | None, os_user: str) -> Principal:
    """The principal of an embedded ``mx.connect()``: every grant, owning what it creates as
    ``user`` when one is configured (``MATRIXOS_USER``, ``connect(user=…)``: the operator
    names the account that is to own the tables, by design), else as ``embedded:<os_user>``.

    Example:
        >>> embedded_principal(None, "root").name, embedded_principal("alice", "root").name
        ('embedded:root', 'alice')
    """
    return Principal(user or f"{EMBEDDED_PREFIX}{os_user}")
