"""Logging in over the PostgreSQL wire: SCRAM-SHA-256 against the accounts' stored verifiers,
or a cleartext password or API token; failed logins throttled per user and client address.

Example:
    >>> import tempfile, matrixos as mx
    >>> from matrixos.catalog.accounts import Accounts
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> ScramAuth(Accounts(lh.catalog)).MECHANISM
    'SCRAM-SHA-256'
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any

from pg_mimic import messages
from pg_mimic.auth import AuthPlugin
from pg_mimic.errors import PgError
from pg_mimic.stream import PgStream
from scramp import ScramException, ScramMechanism

from matrixos.catalog.accounts import Accounts
from matrixos.catalog.audit import AuditEvent
from matrixos.errors import AccessDenied, MatrixOSError

if TYPE_CHECKING:
    from matrixos.server.audit import AuditWriter

log = logging.getLogger("matrixos.server.pg")


class WireAuth(AuthPlugin):
    """A login over the wire, audited (``LOGIN``, ``ok`` or ``denied``, with the client's
    address) when the server keeps an audit trail."""

    def __init__(self, accounts: Accounts, audit: AuditWriter | None = None) -> None:
        self.accounts = accounts
        self.audit = audit

    async def authenticate(self, stream: PgStream, username: str, identity_provider: Any) -> bool:
        client = peer_address(stream)
        ok = await self.login(stream, username, client)
        if self.audit is not None:
            outcome = "ok" if ok else "denied"
            self.audit.record(
                AuditEvent(username, "LOGIN", outcome=outcome, protocol="pg", client_address=client)
            )
        return ok

    async def login(self, stream: PgStream, username: str, client: str | None) -> bool:
        """Run the exchange; whether ``username`` proved who it is."""
        raise NotImplementedError


class ScramAuth(WireAuth):
    """SCRAM-SHA-256 (RFC 5802/7677) against the account's stored verifier (scramp's server
    side). An unknown user goes through the whole exchange with a random verifier and fails
    like a wrong password, so the reply does not tell which names exist."""

    MECHANISM = "SCRAM-SHA-256"

    async def login(self, stream: PgStream, username: str, client: str | None) -> bool:
        throttle = self.accounts.throttle
        if throttle is not None:
            try:
                throttle.check(username, client)
            except AccessDenied:
                log.info("pg login throttled for user %r from %s", username, client)
                return False
        ok = await self._exchange(stream, username)
        if throttle is not None:
            (throttle.succeeded if ok else throttle.failed)(username, client)
        return ok

    async def _exchange(self, stream: PgStream, username: str) -> bool:
        verifier = await asyncio.to_thread(self._verifier, username)
        if verifier is None:
            salt, stored, server_key, iterations = (secrets.token_bytes(16),) * 3 + (4096,)
        else:
            salt, stored = verifier.salt, verifier.stored_key
            server_key, iterations = verifier.server_key, verifier.iterations
        server = ScramMechanism(self.MECHANISM).make_server(
            lambda _name: (salt, stored, server_key, iterations)
        )
        stream.write(messages.make_authentication_sasl([self.MECHANISM]))
        await stream.drain()
        tag, payload = await stream.read_message()
        if tag != messages.PASSWORD:
            raise PgError("28P01", "expected a SASLInitialResponse")
        _mechanism, client_first = messages.parse_sasl_initial_response(payload)
        try:
            _set_client_first(server, client_first.decode("utf-8"))
            first = server.get_server_first().encode()
            stream.write(messages.make_authentication_sasl_continue(first))
            await stream.drain()
            tag, payload = await stream.read_message()
            if tag != messages.PASSWORD:
                raise PgError("28P01", "expected a SASLResponse")
            server.set_client_final(payload.decode("utf-8"))
            final = server.get_server_final()
        except (ScramException, UnicodeDecodeError):
            log.info("pg login failed (SCRAM) for user %r", username)
            return False
        stream.write(messages.make_authentication_sasl_final(final.encode("utf-8")))
        await stream.drain()
        return True

    def _verifier(self, username: str) -> Any:
        try:
            return self.accounts.scram_verifier(username)
        except MatrixOSError:
            return None


def peer_address(stream: PgStream) -> str | None:
    """The client's IP address (what failed logins are throttled by)."""
    peer = stream.writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def _set_client_first(server: Any, client_first: str) -> None:
    """libpq sends ``n=`` (the user travelled in the startup packet); scramp wants a name.
    Feed it a stand-in, then restore the signed client-first-bare exactly as sent."""
    parts = client_first.split(",")
    if len(parts) < 3 or parts[2] != "n=":
        server.set_client_first(client_first)
        return
    server.set_client_first(",".join([*parts[:2], "n=user", *parts[3:]]))
    server.client_first_bare = ",".join(parts[2:])


class PasswordAuth(WireAuth):
    """Cleartext password: the user's password or one of its API tokens (over TLS only, in
    any deployment that is not loopback)."""

    async def login(self, stream: PgStream, username: str, client: str | None) -> bool:
        stream.write(messages.make_authentication_cleartext_password())
        await stream.drain()
        tag, payload = await stream.read_message()
        if tag != messages.PASSWORD:
            raise PgError("28P01", "expected a password")
        secret = payload.rstrip(b"\x00").decode("utf-8", "replace")
        return await asyncio.to_thread(self._check, username, secret, client)

    def _check(self, username: str, secret: str, client: str | None) -> bool:
        try:
            if secret.startswith("mxt_"):
                return self.accounts.authenticate_token(secret, client=client).name == username
            self.accounts.authenticate_password(username, secret, client=client)
            return True
        except MatrixOSError:
            log.info("pg login failed (password) for user %r", username)
            return False
