"""The remote SDK's standard-library HTTP session against a bare socket server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from matrixos.errors import ConfigError
from matrixos.server.client_http import HttpSession


@pytest.fixture
def closing_server() -> Iterator[tuple[int, list[bytes]]]:
    """Answers each request, then closes the connection without saying so (as a server's
    idle timeout does): the next request on that kept connection finds it dead."""
    seen: list[bytes] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                seen.append(data.split(b"\r\n", 1)[0])
                body = b'{"n": %d}' % len(seen)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, seen
    sock.close()


def test_a_connection_the_server_closed_is_reopened(closing_server: tuple) -> None:
    port, seen = closing_server
    session = HttpSession(f"http://127.0.0.1:{port}", {"Authorization": "Bearer t"}, 10)
    assert session.request("GET", "/a", params={"x": ["1", "2"], "y": None}).json() == {"n": 1}
    # The kept connection is dead now: the request goes again on a new one, once.
    assert session.request("POST", "/b", json={"k": 1}).json() == {"n": 2}
    assert seen == [b"GET /a?x=1&x=2 HTTP/1.1", b"POST /b HTTP/1.1"]
    session.close()


def test_a_server_url_is_checked() -> None:
    with pytest.raises(ConfigError):
        HttpSession("ftp://example", {}, 1)
    with pytest.raises(OSError):
        HttpSession("http://127.0.0.1:9", {}, 5).request("GET", "/")
