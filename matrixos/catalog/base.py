"""The catalog interface: what every backend (SQL database, object-store log) offers.

A backend records names (catalogs, schemas, tables, volumes) and what each table is (format,
location, properties). It never touches table data: the session creates and deletes files, and
uses the catalog entry as the lock on a name (of several creators exactly one records it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from matrixos.catalog.names import TableIdent
from matrixos.errors import (
    AccountExists,
    AccountNotFound,
    SchemaNotFound,
    TableExists,
    TableNotFound,
    VolumeNotFound,
)


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


ACCOUNT_KINDS = ("user", "group", "service")


@dataclass(frozen=True)
class AccountInfo:
    """One account: a user, a group (of accounts) or a service principal (a program's)."""

    name: str
    kind: str = "user"
    admin: bool = False
    created_at: datetime = field(default_factory=now)


@dataclass(frozen=True)
class GrantInfo:
    """One privilege (``SELECT``, ``USE SCHEMA``…) on one securable, given to one account."""

    privilege: str
    kind: str  # catalog, schema, table or volume
    securable: str  # main, main.sales, main.sales.orders
    grantee: str
    granted_by: str | None = field(default=None, compare=False)
    created_at: datetime = field(default_factory=now, compare=False)


@dataclass(frozen=True)
class TokenInfo:
    """An API token as the catalog keeps it: a KDF hash of its secret, never the secret."""

    id: str
    account: str
    hash: str = field(repr=False)
    created_at: datetime = field(default_factory=now)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    last_used_from: str | None = None  # the client address of that use


@dataclass(frozen=True)
class PrincipalRecords:
    """What makes one account's principal: the account, every group it is in (directly or
    through other groups) and the grants of both."""

    account: AccountInfo
    groups: list[AccountInfo]
    grants: list[GrantInfo]


def group_closure(name: str, members: Iterable[tuple[str, str]], reverse: bool = False) -> set[str]:
    """The groups ``name`` is in, directly or not, given ``(group, member)`` pairs
    (``reverse``: the accounts in group ``name``, directly or not)."""
    edges: dict[str, set[str]] = {}
    for group, member in members:
        a, b = (group, member) if reverse else (member, group)
        edges.setdefault(a, set()).add(b)
    seen: set[str] = set()
    todo = [name]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    seen.discard(name)
    return seen


def resolve_principal(
    name: str,
    get_account: Callable[[str], AccountInfo],
    members: Iterable[tuple[str, str]],
    grants_of: Callable[[str], list[GrantInfo]],
) -> PrincipalRecords:
    """``PrincipalRecords`` of ``name`` from a backend's lookups."""
    account = get_account(name)
    groups = sorted(group_closure(name, members))
    grants = [g for who in (name, *groups) for g in grants_of(who)]
    return PrincipalRecords(account, [get_account(g) for g in groups], grants)


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

    def changes(self) -> int | None:
        """A number that moves whenever a name, a table entry (not its ``updated_at``), a
        policy, a grant or an account changes, in any process; ``None`` when the backend has
        none (callers then read the catalog every time). Cheap: ``catalog.cache`` reads it
        once per lookup and re-reads rows only when it moved."""
        return None

    @property
    def changes_are_local(self) -> bool:
        """Whether ``changes()`` is a read of a local file that never waits for a writer, fit
        for an event loop (a SQLite catalog in WAL mode); False: it may wait on the network."""
        return False

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

    # -- accounts, groups, grants, tokens, passwords ------------------------------------------
    # ``Accounts`` (catalog/accounts.py) is their API; these are its records.
    @abstractmethod
    def create_account(self, info: AccountInfo) -> None:
        """Record an account; raises ``AccountExists`` if the name is taken."""

    @abstractmethod
    def get_account(self, name: str) -> AccountInfo:
        """The account's entry; raises ``AccountNotFound``."""

    @abstractmethod
    def list_accounts(self) -> list[AccountInfo]:
        """Every account, sorted by name."""

    @abstractmethod
    def update_account(self, info: AccountInfo) -> None:
        """Replace an account's entry (its admin flag); raises ``AccountNotFound``."""

    @abstractmethod
    def drop_account(self, name: str) -> AccountInfo:
        """Remove an account with its memberships (both ways), grants, tokens and password;
        raises ``AccountNotFound``."""

    @abstractmethod
    def add_member(self, group: str, member: str) -> None:
        """Put ``member`` in ``group`` (both must exist; nothing if it already is)."""

    @abstractmethod
    def remove_member(self, group: str, member: str) -> bool:
        """Take ``member`` out of ``group``; whether it was in."""

    @abstractmethod
    def list_members(self) -> list[tuple[str, str]]:
        """Every ``(group, member)`` pair, sorted."""

    @abstractmethod
    def add_grant(self, grant: GrantInfo) -> bool:
        """Record a grant (its grantee must exist); False if it was there already."""

    @abstractmethod
    def remove_grant(self, grant: GrantInfo) -> bool:
        """Remove a grant; whether it was there."""

    def principal_records(self, name: str) -> PrincipalRecords:
        """Account ``name`` with its groups and all their grants (``AccountNotFound``): what a
        login reads, in as few reads as the backend allows."""
        return resolve_principal(
            name, self.get_account, self.list_members(), lambda who: self.list_grants(who)
        )

    def token_records(self, token_id: str) -> tuple[TokenInfo, PrincipalRecords | None] | None:
        """A token and its account's ``principal_records`` (None: no such account any more);
        None when there is no such token. What a token login reads."""
        token = self.find_token(token_id)
        if token is None:
            return None
        try:
            return token, self.principal_records(token.account)
        except AccountNotFound:
            return token, None

    @abstractmethod
    def list_grants(
        self, grantee: str | None = None, securable: str | None = None
    ) -> list[GrantInfo]:
        """Grants, of one grantee and/or on one securable, sorted."""

    @abstractmethod
    def create_token(self, info: TokenInfo) -> None:
        """Record a token (its account must exist)."""

    @abstractmethod
    def find_token(self, token_id: str) -> TokenInfo | None: ...

    @abstractmethod
    def list_tokens(self, account: str | None = None) -> list[TokenInfo]:
        """Tokens (revoked and expired ones too), sorted by creation."""

    @abstractmethod
    def update_token(self, info: TokenInfo) -> None:
        """Record a token's revocation or last use; raises ``AccountNotFound`` if it is gone."""

    @abstractmethod
    def set_password(self, account: str, verifier: str | None) -> None:
        """Keep an account's password verifier (None: remove it); ``AccountNotFound``."""

    @abstractmethod
    def get_password(self, account: str) -> str | None:
        """The account's password verifier, if it has one."""


# The errors every backend raises, worded once.
def no_schema(catalog: str, schema: str) -> SchemaNotFound:
    return SchemaNotFound(
        f"schema {catalog}.{schema} does not exist", hint=f"CREATE SCHEMA {catalog}.{schema}"
    )


def schema_not_empty(catalog: str, schema: str, count: int, what: str) -> TableExists:
    return TableExists(
        f"schema {catalog}.{schema} still holds {count} {what}(s)", hint=f"drop its {what}s first"
    )


def no_account(name: str) -> AccountNotFound:
    return AccountNotFound(
        f"account {name!r} does not exist", hint=f"matrixos accounts create {name}"
    )


def account_exists(name: str) -> AccountExists:
    return AccountExists(f"account {name!r} already exists")


def no_token(token_id: str) -> AccountNotFound:
    return AccountNotFound(f"token {token_id!r} does not exist")


def no_table(ident: TableIdent, location: str | None = None) -> TableNotFound:
    if location is not None:
        return TableNotFound(f"table {ident} is no longer at {location}")
    return TableNotFound(f"table {ident} does not exist")
