"""Accounts, groups, grants, API tokens and passwords: who may connect, and as whom.

``Accounts(catalog)`` keeps them in the warehouse's catalog (either backend), so every server
and CLI that reaches the catalog sees the same accounts. Authentication turns a token or a
password into a ``Principal`` carrying the account's grants and its groups' grants; the
``TableService`` checks that principal on every table it resolves.

Secrets are never stored: a token is shown once, when created, and kept as a salted scrypt hash;
a password is kept as a SCRAM-SHA-256 verifier (``scram_verifier`` gives it to a PostgreSQL-wire
server). Tokens look like ``mxt_<id>_<secret>``; the id finds the record.

Changes take ``by=``: the principal asking. Only an admin may create, drop or alter accounts;
an admin, an object's owner or a holder of ``MANAGE`` on it may grant on it. ``by=None`` is a
caller with the catalog's own credentials (the ``matrixos accounts`` CLI), which is trusted.

Example:
    >>> from matrixos.catalog import open_catalog
    >>> accounts = Accounts(open_catalog("sqlite://"))
    >>> accounts.create("bob")
    >>> accounts.grant("USE CATALOG", "main", "bob")
    True
    >>> token = accounts.create_token("bob")
    >>> accounts.authenticate_token(token).name
    'bob'
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from matrixos._lru import LRU
from matrixos.catalog._secrets import (
    ScramVerifier,
    check_secret,
    hash_secret,
    new_token,
    split_token,
)
from matrixos.catalog.access import (
    GRANTABLE_ON,
    Grant,
    Principal,
    normalize_privilege,
    securable_kind,
)
from matrixos.catalog.base import (
    ACCOUNT_KINDS,
    AccountInfo,
    Catalog,
    GrantInfo,
    PrincipalRecords,
    TokenInfo,
    group_closure,
    now,
)
from matrixos.catalog.names import TableIdent
from matrixos.catalog.throttle import LoginThrottle
from matrixos.errors import (
    AccessDenied,
    AccountNotFound,
    ConfigError,
    SchemaNotFound,
    TableNotFound,
    VolumeNotFound,
)

__all__ = ["Accounts", "ScramVerifier", "parse_duration"]

_ANY_TOKEN = "<token>"  # the throttle's name for token logins (no account is named so)
# A token's last use is written at most this often: a busy client would otherwise make every
# request a catalog write (a commit, on the object-store catalog).
LAST_USED_EVERY = timedelta(minutes=1)
# "system" owns the system tables (system.access.audit); no account may act as it.
# "system" owns the platform's tables; "embedded" is the engine's default principal (and
# embedded sessions own as "embedded:<OS user>", a name ':' keeps out of reach).
RESERVED_NAMES = frozenset({"system", "embedded"})
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str | float | timedelta) -> timedelta:
    """``"30d"``, ``"12h"``, ``"15m"``, ``"90s"``, ``"2w"``, seconds, or a ``timedelta``.

    Example:
        >>> parse_duration("30d"), parse_duration(90)
        (datetime.timedelta(days=30), datetime.timedelta(seconds=90))
    """
    try:
        if isinstance(value, timedelta):
            out = value
        elif isinstance(value, int | float):
            out = timedelta(seconds=value)
        else:
            m = _DURATION.fullmatch(value)
            if m is None:
                raise ConfigError(
                    f"{value!r} is not a duration", hint="write e.g. 90s, 15m, 12h, 30d or 2w"
                )
            out = timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])
    except (OverflowError, ValueError):  # NaN, ±inf, or more than timedelta holds
        raise ConfigError(
            f"{value!r} is not a duration timedelta can hold",
            hint="a finite duration of at most 999,999,999 days",
        ) from None
    if out <= timedelta(0):
        raise ConfigError(f"a duration must be positive, not {value!r}")
    return out


def _bad_login(what: str) -> AccessDenied:
    # One message for every failure: an unknown name, a wrong secret, an expired or revoked
    # token look alike to a client (no probing for names), and no secret is ever repeated.
    return AccessDenied(f"{what} authentication failed", sqlstate="28P01")


class Accounts:
    """Users, groups and service principals of one catalog, their grants, tokens and passwords.

    Thread-safe; a server keeps one (it remembers recently checked tokens).
    """

    def __init__(self, catalog: Catalog, *, throttle: LoginThrottle | None = None) -> None:
        """``throttle``: refuse logins of an account (of any token) from an address that has
        failed too often (``catalog/throttle.py``); None: no limit."""
        self.catalog = catalog
        self.throttle = throttle
        # token id → (its stored hash, sha256 of the token): a token checked once is not run
        # through scrypt again while its record is unchanged (revocation and expiry are read
        # from the catalog on every call all the same).
        self._checked: LRU[str, tuple[str, bytes]] = LRU(4096)

    # -- accounts ---------------------------------------------------------------------------
    def create(
        self,
        name: str,
        kind: str = "user",
        admin: bool = False,
        password: str | None = None,
        *,
        by: Principal | None = None,
    ) -> None:
        """Create a user, a group or a service principal (``kind``); ``AccountExists``."""
        _admin_only(by, f"create account {name}")
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{name!r} is not a valid account name",
                hint="use letters, digits and _ . @ + - (at most 128), not starting with . @ + -",
            )
        if name.lower() in RESERVED_NAMES:
            raise ConfigError(f"{name!r} is reserved", hint="choose another account name")
        if kind not in ACCOUNT_KINDS:
            raise ConfigError(f"unknown account kind {kind!r}", hint="user, group or service")
        if password is not None and kind == "group":
            raise ConfigError(f"group {name} cannot have a password: its members sign in")
        if password == "":
            raise ConfigError("a password cannot be empty")
        self.catalog.create_account(AccountInfo(name=name, kind=kind, admin=admin))
        if password is not None:
            self.set_password(name, password)

    def get(self, name: str) -> AccountInfo:
        """The account ``name``; ``AccountNotFound``."""
        return self.catalog.get_account(name)

    def exists(self, name: str) -> bool:
        """Whether account ``name`` exists."""
        try:
            self.catalog.get_account(name)
        except AccountNotFound:
            return False
        return True

    def list(self) -> list[AccountInfo]:
        """Every account, by name."""
        return self.catalog.list_accounts()

    def drop(self, name: str, *, by: Principal | None = None) -> None:
        """Drop an account with its memberships, grants, tokens and password."""
        _admin_only(by, f"drop account {name}")
        self.catalog.drop_account(name)
        self._checked.clear()

    def set_admin(self, name: str, admin: bool, *, by: Principal | None = None) -> None:
        """Give or take the admin role (every privilege, account management)."""
        _admin_only(by, f"alter account {name}")
        self.catalog.update_account(replace(self.catalog.get_account(name), admin=admin))

    def add_member(self, group: str, member: str, *, by: Principal | None = None) -> None:
        """Put account ``member`` in ``group``: it gets the group's grants (and admin role)."""
        _admin_only(by, f"alter group {group}")
        if self.catalog.get_account(group).kind != "group":
            raise ConfigError(f"{group} is not a group", hint=f"CREATE GROUP {group}")
        inside = group_closure(member, self.catalog.list_members(), reverse=True)
        if member == group or group in inside:
            raise ConfigError(f"adding {member} to {group} would make a group contain itself")
        self.catalog.add_member(group, member)

    def remove_member(self, group: str, member: str, *, by: Principal | None = None) -> bool:
        """Take ``member`` out of ``group``; whether it was in."""
        _admin_only(by, f"alter group {group}")
        return self.catalog.remove_member(group, member)

    def members(self, group: str) -> builtins.list[str]:
        """The direct members of ``group``."""
        return [m for g, m in self.catalog.list_members() if g == group]

    # -- grants -----------------------------------------------------------------------------
    def grant(
        self,
        privilege: str,
        securable: str,
        to: str,
        *,
        kind: str | None = None,
        by: Principal | None = None,
    ) -> bool:
        """Give ``privilege`` on ``securable`` (``main``, ``main.sales``, ``main.sales.t``; a
        three-part name is looked up as a table, then a volume, unless ``kind`` says) to
        account ``to``; False if it already had it. ``by`` must be an admin, the object's owner
        or hold ``MANAGE`` on it."""
        info = self._grant_info(privilege, securable, to, kind, by)
        return self.catalog.add_grant(info)

    def revoke(
        self,
        privilege: str,
        securable: str,
        to: str,
        *,
        kind: str | None = None,
        by: Principal | None = None,
    ) -> bool:
        """Take back a grant (of a table or a volume of that name, unless ``kind`` says);
        False if there was none. The object need not exist any more."""
        privilege = normalize_privilege(privilege)
        found, name = securable_kind(securable, kind)
        if by is not None and not by.is_admin:
            found, owner = self._securable(found, name, explicit=kind is not None)
            _may_grant(by, name, owner, found)
        removed = False
        for g in self.catalog.list_grants(grantee=to, securable=name):
            if g.privilege == privilege and (kind is None or g.kind == found):
                removed = self.catalog.remove_grant(g) or removed
        return removed

    def grants(
        self, name: str | None = None, securable: str | None = None
    ) -> builtins.list[GrantInfo]:
        """Grants given to account ``name`` (not its groups') and/or on ``securable``."""
        on = securable_kind(securable)[1] if securable else None
        return self.catalog.list_grants(grantee=name, securable=on)

    def _grant_info(
        self, privilege: str, securable: str, to: str, kind: str | None, by: Principal | None
    ) -> GrantInfo:
        privilege = normalize_privilege(privilege)
        found, name = securable_kind(securable, kind)
        found, owner = self._securable(found, name, explicit=kind is not None)
        if found not in GRANTABLE_ON[privilege]:
            raise ConfigError(
                f"{privilege} cannot be granted on a {found}",
                hint="on a volume grant READ VOLUME or WRITE VOLUME; on a table SELECT or MODIFY",
            )
        self.catalog.get_account(to)
        if by is not None:
            _may_grant(by, name, owner, found)
        return GrantInfo(privilege, found, name, to, granted_by=by.name if by else None)

    def may_manage(self, principal: Principal, securable: str, kind: str | None = None) -> bool:
        """Whether ``principal`` may grant on (and see every grant of) an existing securable:
        as an admin, its owner or a holder of ``MANAGE`` on it."""
        found, name = securable_kind(securable, kind)
        try:
            found, owner = self._securable(found, name, explicit=kind is not None)
        except LookupError:
            return principal.is_admin
        return principal.may("MANAGE", name, owner=owner, kind=found)

    def _securable(self, kind: str, name: str, explicit: bool) -> tuple[str, str | None]:
        """``(kind, owner)`` of an existing securable; ``TableNotFound`` if there is none."""
        if kind == "catalog":
            if not self.catalog.list_schemas(name):
                raise SchemaNotFound(f"catalog {name} does not exist")
            return kind, None
        if kind == "schema":
            c, s = name.split(".")
            if not self.catalog.schema_exists(c, s):
                raise SchemaNotFound(f"schema {name} does not exist")
            return kind, None
        ident = TableIdent.parse(name)
        if kind == "table" or not explicit:
            table = self.catalog.find_table(ident)
            if table is not None:
                return "table", table.owner
            if explicit:
                raise TableNotFound(f"table {name} does not exist")
        volume = self.catalog.find_volume(ident)
        if volume is None:
            raise (VolumeNotFound if explicit else TableNotFound)(
                f"{'volume' if explicit else 'table or volume'} {name} does not exist"
            )
        return "volume", volume.owner

    # -- principals -------------------------------------------------------------------------
    def principal(self, name: str) -> Principal:
        """The principal of account ``name``: its grants and its groups' (and admin if it or a
        group of it is); ``AccountNotFound``."""
        return _principal_of(self.catalog.principal_records(name))

    # -- tokens -----------------------------------------------------------------------------
    def create_token(
        self,
        name: str,
        expires_in: str | float | timedelta | None = None,
        *,
        by: Principal | None = None,
    ) -> str:
        """A new API token for account ``name``, valid for ``expires_in`` (``"30d"``, seconds;
        None: until revoked). Returned once, never stored: keep it."""
        if by is not None and not by.is_admin and by.name != name:
            raise AccessDenied(f"{by.name} may not create tokens for {name}")
        if self.catalog.get_account(name).kind == "group":
            raise ConfigError(f"{name} is a group: tokens are for users and service principals")
        token, token_id, secret = new_token()
        created = now()
        expires = None if expires_in is None else created + parse_duration(expires_in)
        info = TokenInfo(token_id, name, hash_secret(secret), created, expires_at=expires)
        self.catalog.create_token(info)
        return token

    def tokens(self, name: str | None = None) -> builtins.list[TokenInfo]:
        """The tokens of account ``name`` (every account's when None), revoked ones too."""
        return self.catalog.list_tokens(name)

    def revoke_token(self, token_id: str, *, by: Principal | None = None) -> None:
        """Revoke a token now (its holder's next call is refused); ``AccountNotFound``."""
        info = self.catalog.find_token(token_id)
        if info is None or (by is not None and not by.is_admin and by.name != info.account):
            raise AccountNotFound(f"token {token_id!r} does not exist")
        if info.revoked_at is None:
            self.catalog.update_token(replace(info, revoked_at=now()))
        self._checked.pop(token_id)

    def authenticate_token(self, token: str, *, client: str | None = None) -> Principal:
        """The principal a token stands for; ``AccessDenied`` if it is unknown, wrong,
        expired or revoked, or its account is gone (or, with a throttle, while ``client``'s
        address has failed too often). Records the token's last use."""
        # Tokens are throttled per address alone: a guesser makes up a new id every time.
        return self._throttled(_ANY_TOKEN, client, lambda: self._token_principal(token, client))

    def _token_principal(self, token: str, client: str | None = None) -> Principal:
        parts = split_token(token)
        found = self.catalog.token_records(parts[0]) if parts else None
        if parts is None or found is None or found[1] is None:
            raise _bad_login("token")  # no such token, or its account is gone
        info, records = found[0], found[1]
        stamp = now()
        if info.revoked_at is not None or (info.expires_at and info.expires_at <= stamp):
            raise _bad_login("token")
        digest = hashlib.sha256(token.strip().encode()).digest()
        known = self._checked.get(info.id)
        if known is None or known[0] != info.hash or not hmac.compare_digest(known[1], digest):
            if not check_secret(parts[1], info.hash):
                raise _bad_login("token")
            self._checked.put(info.id, (info.hash, digest))
        principal = _principal_of(records)
        moved = client is not None and client != info.last_used_from
        if moved or info.last_used_at is None or stamp - info.last_used_at >= LAST_USED_EVERY:
            try:
                used = replace(info, last_used_at=stamp, last_used_from=client)
                self.catalog.update_token(used)
            except AccountNotFound:
                raise _bad_login("token") from None  # dropped meanwhile
        return principal

    # -- passwords --------------------------------------------------------------------------
    def set_password(self, name: str, password: str | None, *, by: Principal | None = None) -> None:
        """Set (None: remove) an account's password, kept as a SCRAM-SHA-256 verifier."""
        if by is not None and not by.is_admin and by.name != name:
            raise AccessDenied(f"{by.name} may not set the password of {name}")
        if password is not None and not password:
            raise ConfigError("a password cannot be empty")
        if password is not None and self.catalog.get_account(name).kind == "group":
            raise ConfigError(f"group {name} cannot have a password: its members sign in")
        verifier = None if password is None else str(ScramVerifier.make(password))
        self.catalog.set_password(name, verifier)

    def scram_verifier(self, name: str) -> ScramVerifier | None:
        """The SCRAM-SHA-256 verifier of ``name``'s password (None: no such account or no
        password), for a server running SCRAM with a client."""
        try:
            stored = self.catalog.get_password(name)
        except AccountNotFound:
            return None
        return None if stored is None else ScramVerifier.parse(stored)

    def authenticate_password(
        self, name: str, password: str, *, client: str | None = None
    ) -> Principal:
        """The principal of ``name`` if ``password`` is its password; else ``AccessDenied``
        (also, with a throttle, while ``name`` has failed too often from ``client``)."""
        return self._throttled(name, client, lambda: self._password_principal(name, password))

    def _password_principal(self, name: str, password: str) -> Principal:
        verifier = self.scram_verifier(name)
        if verifier is None or not verifier.verify_password(password):
            raise _bad_login("password")
        try:
            return self.principal(name)
        except AccountNotFound:
            raise _bad_login("password") from None

    def _throttled(self, who: str, client: str | None, login: Callable[[], Principal]) -> Principal:
        if self.throttle is None:
            return login()
        self.throttle.check(who, client)
        try:
            principal = login()
        except AccessDenied:
            self.throttle.failed(who, client)
            raise
        self.throttle.succeeded(who, client)
        return principal


def _principal_of(records: PrincipalRecords) -> Principal:
    grants = {str(Grant(g.privilege, g.kind, g.securable)) for g in records.grants}
    if records.account.admin or any(g.admin for g in records.groups):
        grants.add("*")
    groups = frozenset(g.name for g in records.groups)
    return Principal(records.account.name, frozenset(grants), groups=groups)


def _may_grant(by: Principal, name: str, owner: str | None, kind: str) -> None:
    if not by.may("MANAGE", name, owner=owner, kind=kind):
        raise AccessDenied(
            f"{by.name} may not grant on {name}",
            hint="only an admin, the owner or a holder of MANAGE on it may grant",
        )


def _admin_only(by: Principal | None, what: str) -> None:
    if by is not None and not by.is_admin:
        raise AccessDenied(f"{by.name} may not {what}", hint="only an admin may manage accounts")
