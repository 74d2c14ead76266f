"""The web console of ``matrixos serve``: its pages at ``/`` and ``/console/*`` (static ES
modules and CSS shipped in this package: no CDN, no build step), login and logout.

```
GET  /                          the console (index.html)
GET  /console/{asset}           its scripts, styles and icons
POST /console/login             Authorization: Bearer <token>      → session cookies
POST /console/login/password    {"user": "...", "password": "..."} → session cookies
POST /console/logout            end the session
```

A login answers with two cookies: ``mxs_session`` (``HttpOnly``, ``SameSite=Strict``: a random
id the server maps to the token, see ``sessions``) and ``mxs_csrf`` (readable by the page, sent
back in ``X-CSRF-Token`` on every state-changing call). A password login makes a token that
lives as long as the session (it shows in the token list) and is revoked at logout.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (the
# principal dependency is a parameter of console_router).
import time
from contextlib import suppress
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from matrixos.catalog.access import Principal
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.throttle import LoginThrottle
from matrixos.errors import AccessDenied
from matrixos.server.console.api import console_api, token_id
from matrixos.server.console.sessions import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    ConsoleAuth,
    ConsoleSession,
    ConsoleSessions,
    request_cookies,
)

if TYPE_CHECKING:
    from matrixos.session import Lakehouse

STATIC = files("matrixos.server.console") / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}


class PasswordLogin(BaseModel):
    """``POST /console/login/password``."""

    user: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


def mount_console(app: FastAPI, lakehouse: "Lakehouse", user: Any) -> ConsoleSessions:
    """Serve the console on ``app`` (create_app's): its routes, and the ``ConsoleAuth``
    middleware that lets its session cookie stand for a bearer token. ``user`` is
    create_app's principal dependency. Returns the session store."""
    sessions = ConsoleSessions()
    # The JSON routes first: /console/{asset} would take /console/api/… otherwise.
    app.include_router(console_api(lakehouse, app.state.manager, user))
    app.include_router(console_router(lakehouse, user, sessions))
    app.add_middleware(ConsoleAuth, sessions=sessions)
    return sessions


def console_router(lakehouse: "Lakehouse", user: Any, sessions: ConsoleSessions) -> APIRouter:
    """The console's pages, login and logout (see the module's docs)."""
    router = APIRouter(tags=["console"])
    passwords = Accounts(lakehouse.catalog, throttle=LoginThrottle())
    tokens = Accounts(lakehouse.catalog)

    @router.get("/", include_in_schema=False)
    def index() -> Response:
        return _asset("index.html")

    @router.get("/console", include_in_schema=False)
    @router.get("/console/", include_in_schema=False)
    def console_index() -> Response:
        return _asset("index.html")

    @router.get("/console/{path:path}", include_in_schema=False)
    def asset(path: str) -> Response:
        return _asset(path)

    @router.post("/console/login")
    def login(request: Request, principal: user) -> JSONResponse:  # type: ignore[valid-type]
        """Start a session for the bearer token the request carries (checked, throttled
        and audited as every API call)."""
        p: Principal = principal
        token = request.headers["authorization"].split(None, 1)[1].strip()
        return _started(request, sessions.create(token, p.name), p)

    @router.post("/console/login/password")
    def login_password(body: PasswordLogin, request: Request) -> JSONResponse:
        """Start a session for a user and password (the password the PostgreSQL wire takes)."""
        client = request.client.host if request.client else None
        p = passwords.authenticate_password(body.user, body.password, client=client)
        token = tokens.create_token(p.name, f"{sessions.ttl_s:.0f}s")
        session = sessions.create(token, p.name, minted=token_id(token))
        return _started(request, session, p)

    @router.post("/console/logout")
    def logout(request: Request) -> JSONResponse:
        """End the session (a password login's token is revoked) and clear the cookies."""
        sid = request_cookies(list(request.scope["headers"])).get(SESSION_COOKIE, "")
        ended = sessions.drop(sid) if sid else None
        if ended is not None and ended.minted is not None:
            with suppress(AccessDenied, LookupError):  # the account or token is gone already
                tokens.revoke_token(ended.minted)
        out = JSONResponse({"logged_out": ended is not None})
        out.delete_cookie(SESSION_COOKIE, path="/")
        out.delete_cookie(CSRF_COOKIE, path="/")
        return out

    return router


def _started(request: Request, session: ConsoleSession, p: Principal) -> JSONResponse:
    out = JSONResponse({"name": p.name, "is_admin": p.is_admin, "csrf": session.csrf})
    secure = request.url.scheme == "https"
    age = int(session.expires - time.time())
    out.set_cookie(
        SESSION_COOKIE, session.id, max_age=age, path="/", httponly=True, samesite="strict",
        secure=secure,
    )  # fmt: skip
    out.set_cookie(
        CSRF_COOKIE, session.csrf, max_age=age, path="/", httponly=False, samesite="strict",
        secure=secure,
    )  # fmt: skip
    return out


def _asset(path: str) -> Response:
    """A file of ``static/`` (404 for anything else: no ``..``, no folders)."""
    parts = [p for p in path.split("/") if p]
    missing = Response("not found", status_code=404, media_type="text/plain")
    if not parts or any(p.startswith(".") for p in parts):
        return missing
    node: Traversable = STATIC
    for p in parts:
        node = node / p
    suffix = "." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else ""
    if suffix not in _TYPES or not node.is_file():
        return missing
    return Response(
        node.read_bytes(), media_type=_TYPES[suffix], headers={"Cache-Control": "no-cache"}
    )
