"""The web console's sessions: a random id in an ``HttpOnly``, ``SameSite=Strict`` cookie, mapped
in this process's memory to the API token the user logged in with.

``ConsoleAuth`` (ASGI middleware) turns a request that carries a live session cookie and no
``Authorization`` header into one with ``Authorization: Bearer <token>``, so every API route
(statements, tables, billing, jobs) serves the console exactly as it serves a bearer client:
same authentication, throttling, grants and audit. A state-changing request (anything but GET,
HEAD, OPTIONS) made with the cookie must repeat the session's CSRF value in the
``X-CSRF-Token`` header and the ``mxs_csrf`` cookie (double submit, checked against the
server's copy); else it is refused with 403 before any route runs. Requests with their own
``Authorization`` header pass untouched. Tokens are never logged nor sent back to the browser.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any

SESSION_COOKIE = "mxs_session"
CSRF_COOKIE = "mxs_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The console's pages: only scripts and styles of this origin, no frames, no plugins.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_PAGE_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


@dataclass(frozen=True)
class ConsoleSession:
    """One logged-in browser: the token it acts with, its CSRF value and when it ends.
    ``minted``: the id of a token made for a password login (revoked at logout)."""

    id: str
    token: str
    csrf: str
    user: str
    expires: float
    minted: str | None = None


class ConsoleSessions:
    """Live sessions by id (in memory: a server restart logs everyone out). A session ends
    ``ttl_s`` after login; at most ``max_sessions`` live at once (the oldest go first)."""

    def __init__(self, ttl_s: float = 8 * 3600, max_sessions: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._live: dict[str, ConsoleSession] = {}
        self._lock = threading.Lock()

    def create(self, token: str, user: str, *, minted: str | None = None) -> ConsoleSession:
        """A new session acting with ``token`` as ``user``."""
        s = ConsoleSession(
            secrets.token_urlsafe(32), token, secrets.token_urlsafe(32), user,
            time.time() + self.ttl_s, minted,
        )  # fmt: skip
        with self._lock:
            self._expire()
            while len(self._live) >= self.max_sessions:
                self._live.pop(next(iter(self._live)))
            self._live[s.id] = s
        return s

    def get(self, session_id: str) -> ConsoleSession | None:
        """The live session ``session_id`` (None: unknown or expired)."""
        with self._lock:
            s = self._live.get(session_id)
            if s is not None and s.expires <= time.time():
                del self._live[session_id]
                return None
            return s

    def drop(self, session_id: str) -> ConsoleSession | None:
        """End a session (logout); the session it was, if live."""
        with self._lock:
            return self._live.pop(session_id, None)

    def _expire(self) -> None:
        stamp = time.time()
        for sid in [k for k, s in self._live.items() if s.expires <= stamp]:
            del self._live[sid]


def request_cookies(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The cookies of an ASGI request's headers (a malformed header counts as none)."""
    jar: SimpleCookie = SimpleCookie()
    for key, value in headers:
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                continue
    return {k: m.value for k, m in jar.items()}


def is_console_page(path: str) -> bool:
    """Whether ``path`` is one of the console's pages or assets (they get the CSP headers)."""
    return path == "/" or path == "/console" or path.startswith("/console/")


class ConsoleAuth:
    """ASGI middleware: session cookie → bearer token, CSRF check, security headers on the
    console's pages (see the module's docs)."""

    def __init__(self, app: Any, sessions: ConsoleSessions) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        if not any(k == b"authorization" for k, _ in headers):
            cookies = request_cookies(headers)
            session = self.sessions.get(cookies.get(SESSION_COOKIE, ""))
            if session is not None:
                if scope["method"] not in SAFE_METHODS and not _csrf_ok(session, cookies, headers):
                    await _refuse_csrf(send)
                    return
                bearer = f"Bearer {session.token}".encode()
                scope = {**scope, "headers": [*headers, (b"authorization", bearer)]}
        if not is_console_page(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_PAGE_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _csrf_ok(
    session: ConsoleSession, cookies: dict[str, str], headers: list[tuple[bytes, bytes]]
) -> bool:
    sent = next((v.decode("latin-1") for k, v in headers if k == b"x-csrf-token"), "")
    cookie = cookies.get(CSRF_COOKIE, "")
    return (
        bool(sent)
        and hmac.compare_digest(sent, session.csrf)
        and hmac.compare_digest(cookie, session.csrf)
    )


async def _refuse_csrf(send: Any) -> None:
    body = json.dumps(
        {"error_code": "PERMISSION_DENIED", "message": "missing or wrong CSRF token",
         "hint": f"send the {CSRF_COOKIE} cookie's value in the {CSRF_HEADER} header"}
    ).encode()  # fmt: skip
    await send(
        {"type": "http.response.start", "status": 403,
         "headers": [(b"content-type", b"application/json"),
                     (b"content-length", str(len(body)).encode())]}
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})
