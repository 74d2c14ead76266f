"""The remote SDK's HTTP: keep-alive connections from the standard library, one per thread.

``http.client`` reads a response body of known length in one buffered read: a 18 MB Arrow chunk
comes in about a third of the time httpx takes (which reads 64 KiB at a time through h11), and
the remote SDK needs no package beyond MatrixOS's own. Each thread (the SDK's chunk prefetchers
included) keeps its own connection; a request on a kept connection that the server closed
meanwhile (an idle timeout) is sent again once on a fresh one.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from matrixos.errors import ConfigError

# A kept connection the server closed: nothing of the request reached it, so it is resent.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    content: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class HttpSession:
    """Requests to one server (``http(s)://host:port``) with fixed ``headers``. Thread-safe."""

    def __init__(self, url: str, headers: Mapping[str, str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"not a server URL: {url!r}", hint="use http://host:port or https://host:port"
            )
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.headers = dict(headers)
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """Send one request and read the whole answer. Raises ``OSError`` when the server
        cannot be reached."""
        target = self.prefix + path
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            target += "?" + urllib.parse.urlencode(query, doseq=True)
        body = None if json is None else jsonlib.dumps(json).encode()
        sent = {**self.headers, **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json"
        for attempt in (0, 1):
            conn, reused = self._connection()
            try:
                conn.request(method, target, body=body, headers=sent)
                response = conn.getresponse()
                content = response.read()
            except _STALE:
                self._drop(conn)
                if reused and attempt == 0:
                    continue
                raise
            except OSError:
                self._drop(conn)
                raise
            if response.will_close:
                self._drop(conn)
            return HttpResponse(
                response.status, {k.lower(): v for k, v in response.getheaders()}, content
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout)
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
