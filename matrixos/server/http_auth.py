"""Who an HTTP request acts as: its bearer token checked, failures throttled and audited, and
tokens recently checked remembered.

Checking a token reads the catalog (the token, its account, groups and grants) and records its
last use: about 0.7 ms on SQLite, a round trip or more on PostgreSQL, on every request.
``TokenCache`` keeps the principal of a token that checked out, keyed by the SHA-256 of the
token and the client's address (never the token itself), under the catalog's change counter
(``Catalog.changes``: the database's triggers move it when an account, a membership, a grant
or a token's revocation, expiry or owner changes, in any process; revision 0005). Each request
reads the counter (~8 us on SQLite, one round trip on PostgreSQL) and reuses the principal
while it has not moved, so a revoked token, a dropped account or a changed grant counts at the
next request, whichever process made the change. An entry also lasts at most ``ttl_s``
seconds (1 s; the token's last use is recorded that often) and never past the token's expiry;
a catalog without a counter (``changes()`` None) relies on ``ttl_s`` alone. ``clear()`` drops
every entry (after each statement of this server that is not a plain read, and every other
request that is not a read).

Example:
    >>> import tempfile, matrixos as mx
    >>> from matrixos.catalog.accounts import Accounts
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> accounts = Accounts(lh.catalog)
    >>> accounts.create("ann")
    >>> token = accounts.create_token("ann")
    >>> cache = TokenCache(accounts)
    >>> cache.cached(token, "127.0.0.1") is None
    True
    >>> cache.authenticate_token(token, client="127.0.0.1").name
    'ann'
    >>> cache.cached(token, "127.0.0.1").name
    'ann'
    >>> Accounts(lh.catalog).revoke_token(token.split("_")[1])  # any process
    >>> cache.cached(token, "127.0.0.1") is None
    True
"""

# No ``from __future__ import annotations``: FastAPI reads the dependency's annotations (its
# ``bearer`` is local to ``principal_dependency``) when it is defined.
import hashlib
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import anyio.to_thread
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from matrixos.catalog.access import Principal
from matrixos.catalog.audit import AuditEvent, outcome_of
from matrixos.catalog.throttle import LoginThrottle
from matrixos.errors import MatrixOSError
from matrixos.server.audit import AuditWriter, statement_action

if TYPE_CHECKING:
    from matrixos.catalog.accounts import Accounts

#: How long a checked token's principal is reused (seconds).
TOKEN_TTL_S = 1.0
_MAX_CACHED = 10_000


class Authenticate(Protocol):
    """``accounts.authenticate_token``: the token's principal (``client``: the caller's
    address, recorded as the token's last use and used to throttle failures), or raises."""

    def __call__(self, token: str, *, client: str | None = None) -> Principal: ...


class Unauthenticated(Exception):
    """No valid bearer token: answered 401 (not a MatrixOSError: nothing ran)."""


class LoginsThrottled(Exception):
    """Too many failed logins for an address and token id: answered 429."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.0f} s")
        self.retry_after = retry_after


def token_id(token: str) -> str:
    """The id part of an ``mxt_<id>_<secret>`` token ("?" for anything else)."""
    parts = token.split("_")
    return parts[1][:64] if len(parts) >= 3 and parts[0] == "mxt" else "?"


class TokenCache:
    """``accounts.authenticate_token`` whose successes are remembered while the catalog's
    change counter stays put, for at most ``ttl_s`` seconds (see the module's docs).
    Thread-safe; ``cached`` reads the counter (blocking I/O: call it off the event loop)."""

    def __init__(self, accounts: "Accounts", *, ttl_s: float = TOKEN_TTL_S) -> None:
        self.accounts = accounts
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        # (sha256 of the token, client address) -> (principal, monotonic deadline)
        self._entries: dict[tuple[bytes, str | None], tuple[Principal, float]] = {}
        self._counter: int | None = None  # the catalog's change counter the entries are under

    @staticmethod
    def _key(token: str, client: str | None) -> tuple[bytes, str | None]:
        return hashlib.sha256(token.encode()).digest(), client

    def cached(self, token: str, client: str | None) -> Principal | None:
        """The principal ``token`` checked out as from ``client``, if the catalog has not
        changed since and it was within ``ttl_s`` (None: not known, or maybe stale)."""
        key = self._key(token, client)
        with self._lock:
            if key not in self._entries:
                return None
        self._follow(self.accounts.catalog.changes())
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if time.monotonic() >= entry[1]:
                del self._entries[key]
                return None
            return entry[0]

    def counter_is_quick(self) -> bool:
        """Whether reading the catalog's counter cannot wait (``Catalog.changes_are_local``)."""
        return self.accounts.catalog.changes_are_local

    def principal(self, token: str, *, client: str | None = None) -> Principal:
        """``token``'s principal: ``cached``, else checked (``authenticate_token``)."""
        return self.cached(token, client) or self.authenticate_token(token, client=client)

    def authenticate_token(self, token: str, *, client: str | None = None) -> Principal:
        """Check ``token`` against the catalog (blocking) and remember its principal."""
        started = time.monotonic()
        # Read before the rows it guards: a change made meanwhile moves it past this value,
        # and the next request checks again.
        counter = self.accounts.catalog.changes()
        principal = self.accounts.authenticate_token(token, client=client)
        deadline = started + self.ttl_s
        info = self.accounts.catalog.find_token(token_id(token))
        if info is not None and info.expires_at is not None:
            left = info.expires_at.timestamp() - time.time()
            deadline = min(deadline, time.monotonic() + left)
        with self._lock:
            if counter != self._counter:  # entries under another counter go (or it does)
                if self._counter is not None and counter is not None and counter < self._counter:
                    return principal  # read before a newer one: not kept
                self._entries.clear()
                self._counter = counter
            if len(self._entries) >= _MAX_CACHED:
                self._entries.clear()
            self._entries[self._key(token, client)] = (principal, deadline)
        return principal

    def _follow(self, counter: int | None) -> None:
        """The catalog's counter is ``counter`` now: entries filed under another go."""
        with self._lock:
            if counter != self._counter:
                self._entries.clear()
                self._counter = counter

    def clear(self) -> None:
        """Forget every token: the next request of each is checked again (after a change of
        accounts, tokens or grants)."""
        with self._lock:
            self._entries.clear()


class _SeenLogins:
    """Keys (address|token id) that logged in already: a token's first request from an
    address is its login in the audit, not every request. Bounded: forgets all at 100,000."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def first(self, key: str) -> bool:
        with self._lock:
            if key in self._keys:
                return False
            if len(self._keys) >= 100_000:
                self._keys.clear()
            self._keys.add(key)
            return True


def _login_event(principal: str, token: str, address: str | None, outcome: str) -> AuditEvent:
    return AuditEvent(
        principal, "LOGIN", object=f"token {token_id(token)}", outcome=outcome,
        protocol="http", client_address=address,
    )  # fmt: skip


def principal_dependency(
    authenticate: Authenticate,
    *,
    cache: TokenCache | None,
    throttle: LoginThrottle,
    audit: AuditWriter | None,
) -> Any:
    """The FastAPI dependency giving a request's principal from its bearer token (raises
    ``Unauthenticated`` or ``LoginsThrottled``). A token in ``cache`` is answered on the event
    loop when the catalog's counter is a quick local read (``counter_is_quick``); anything
    else in a worker thread (the counter on PostgreSQL: a round trip; a token not seen before:
    a scrypt hash)."""
    bearer = HTTPBearer(auto_error=False, description="a MatrixOS API token")
    seen = _SeenLogins()
    check = cache.principal if cache is not None else authenticate

    async def principal(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> Principal:
        if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials.strip():
            raise Unauthenticated("missing bearer token")
        token = creds.credentials.strip()
        # Failures count per client address and token id (never the secret).
        address = request.client.host if request.client else None
        tid = token_id(token)
        wait = throttle.retry_after(tid, address)
        if wait > 0:
            raise LoginsThrottled(wait)
        who = None
        if cache is not None and cache.counter_is_quick():  # ~8 us: no thread hand-off
            who = cache.cached(token, address)
        try:
            if who is None:
                who = await anyio.to_thread.run_sync(lambda: check(token, client=address))
        except MatrixOSError as e:
            throttle.failed(tid, address)
            if audit is not None:
                audit.record(_login_event("unknown", token, address, outcome_of(e)))
            raise Unauthenticated("invalid, expired or revoked token") from e
        throttle.succeeded(tid, address)
        if audit is not None and seen.first(f"{address or '?'}|{tid}"):
            audit.record(_login_event(who.name, token, address, "ok"))
        return who

    return principal


#: Statements that change no account, token or grant (their first keyword).
_READ_ACTIONS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "VALUES",
                           "FROM", "TABLE", "SUMMARIZE"})  # fmt: skip


def forget_tokens_after(cache: TokenCache, sql: str) -> None:
    """Clear ``cache`` after statement ``sql`` unless it is a plain read: a ``GRANT``,
    ``REVOKE``, ``DROP USER``… run on this server counts from the next request on."""
    if statement_action(sql) not in _READ_ACTIONS:
        cache.clear()
