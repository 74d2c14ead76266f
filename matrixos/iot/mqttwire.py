"""A minimal MQTT 3.1.1 subscriber connection for QoS 1 ingest: packets parsed in bulk, PUBACKs
sent in bulk.

Why not a library: a QoS 1 ingest must acknowledge a message only once its points are durable,
and acknowledging tens of thousands of messages a second means neither a Python callback nor a
socket write per message. Measured on this project's 2-core machine through mosquitto
(benchmarks/iot_ingest.py, see benchmarks/README.md): paho-mqtt's network loop alone reached
about 4,500 messages/s with manual acknowledgements (a callback, a lock and a ``send`` per
message); aiomqtt and asyncio-mqtt wrap paho's loop. gmqtt 0.8 (asyncio), receiving alone and
acknowledging each message when its callback returns (so no acknowledgement after a batch's
fsync), took 31,683 and 12,271 messages/s where this connection, receiving and acknowledging in
bulk, took 39,326 and 23,366 (alternating runs, same publishers, load 24-26; amqtt not
measured). This connection reads whatever
the socket holds (up to 1 MiB), parses every complete packet in one loop, and writes the
PUBACKs of a whole batch with one ``sendall`` after the batch's fsync.

Only what a subscriber needs: CONNECT (persistent session: ``clean_session=False`` and a
stable client id, so the broker keeps unacknowledged QoS 1 messages and sends them again),
SUBSCRIBE, PUBLISH with QoS 0 or 1 (the subscription asks for at most 1), PUBACK, PINGREQ,
DISCONNECT. QoS 2 is never granted, so never sent.

Example (a PUBLISH packet's bytes, parsed):
    >>> wire = MqttWire("127.0.0.1", 1883, "x")
    >>> wire._buffer += bytes([0x32, 11, 0, 3]) + b"a/b" + bytes([0, 7]) + b"v=1i"
    >>> wire._parse()
    [('a/b', b'v=1i', 7, 1)]
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Sequence

from matrixos.errors import ConfigError

PUBLISH, PUBACK, SUBACK, PINGRESP, CONNACK = 3, 4, 9, 13, 2
_PUBACK = struct.Struct(">BBH")
_CONNACK_ERRORS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

# (topic, payload, packet id (0 for QoS 0), QoS)
Message = tuple[str, bytes, int, int]


class WireError(ConnectionError):
    """The connection to the broker broke or the broker refused something."""


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(s: str) -> bytes:
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


class MqttWire:
    """One connection: ``connect()``, ``subscribe()``, then ``read()`` in one thread and
    ``puback()`` from any; ``close()``."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        clean_session: bool = False,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.clean_session = clean_session
        self.username, self.password = username, password
        self.keepalive = keepalive
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._send_lock = threading.Lock()
        self._last_sent = 0.0
        self.subscribed = threading.Event()
        self.granted: list[int] = []

    # -- connecting -------------------------------------------------------------------------
    def connect(self, timeout: float = 10.0) -> bool:
        """Open the connection; returns whether the broker still had this client's session."""
        self.subscribed.clear()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as e:
            raise ConfigError(
                f"cannot reach the MQTT broker at {self.host}:{self.port}: {e}",
                hint="check --mqtt mqtt://host:port and that the broker runs",
            ) from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flags = 0x02 if self.clean_session else 0
        payload = _text(self.client_id)
        if self.username is not None:
            flags |= 0x80
            payload += _text(self.username)
            if self.password is not None:
                flags |= 0x40
                payload += _text(self.password)
        var = _text("MQTT") + bytes([4, flags]) + self.keepalive.to_bytes(2, "big")
        body = var + payload
        self._sock = sock
        self._buffer.clear()
        self._send(bytes([0x10]) + _remaining(len(body)) + body)
        deadline = time.monotonic() + timeout
        while len(self._buffer) < 4:
            if time.monotonic() > deadline:
                raise WireError(f"the MQTT broker at {self.host}:{self.port} did not answer")
            self._fill()
        kind, _, session, code = self._buffer[:4]
        del self._buffer[:4]
        if kind >> 4 != CONNACK:
            raise WireError(f"expected CONNACK from the MQTT broker, got packet type {kind >> 4}")
        if code:
            raise ConfigError(
                f"the MQTT broker at {self.host}:{self.port} refused the connection: "
                f"{_CONNACK_ERRORS.get(code, f'code {code}')}",
                hint="check the user name and password in the --mqtt URL",
            )
        sock.settimeout(max(1.0, self.keepalive / 2))
        return bool(session & 1)

    def subscribe(self, filters: Sequence[tuple[str, int]], packet_id: int = 1) -> None:
        """Send SUBSCRIBE; ``subscribed`` is set when ``read()`` meets the SUBACK."""
        self.subscribed.clear()
        body = packet_id.to_bytes(2, "big") + b"".join(_text(f) + bytes([q]) for f, q in filters)
        self._send(bytes([0x82]) + _remaining(len(body)) + body)

    # -- reading ----------------------------------------------------------------------------
    def read(self) -> list[Message]:
        """The PUBLISH packets complete in what the socket holds now (waiting for some up to
        half the keep-alive; a PINGREQ goes out when nothing was sent for that long)."""
        with contextlib.suppress(TimeoutError):
            self._fill()
        if time.monotonic() - self._last_sent > self.keepalive / 2:
            self._send(b"\xc0\x00")
        return self._parse()

    def _fill(self) -> None:
        if self._sock is None:
            raise WireError("not connected")
        try:
            chunk = self._sock.recv(1 << 20)
        except TimeoutError:
            raise
        except OSError as e:  # (TimeoutError is one too: re-raised as itself above)
            raise WireError(f"the MQTT connection broke: {e}") from e
        if not chunk:
            raise WireError("the MQTT broker closed the connection")
        self._buffer += chunk

    def _parse(self) -> list[Message]:
        buf = self._buffer
        out: list[Message] = []
        pos, end = 0, len(buf)
        while pos + 2 <= end:
            first = buf[pos]
            length = 0
            shift = 0
            i = pos + 1
            while True:  # the remaining length: up to four 7-bit digits
                if i >= end:
                    length = -1
                    break
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
            if length < 0 or i + length > end:
                break  # incomplete: wait for more bytes
            kind = first >> 4
            if kind == PUBLISH:
                qos = (first >> 1) & 3
                n = (buf[i] << 8) | buf[i + 1]
                topic = buf[i + 2 : i + 2 + n].decode("utf-8", "replace")
                at = i + 2 + n
                pid = 0
                if qos:
                    pid = (buf[at] << 8) | buf[at + 1]
                    at += 2
                out.append((topic, bytes(buf[at : i + length]), pid, qos))
            elif kind == SUBACK:
                self.granted = list(buf[i + 2 : i + length])
                self.subscribed.set()
            pos = i + length
        del buf[:pos]
        return out

    # -- writing ----------------------------------------------------------------------------
    def puback(self, packet_ids: Sequence[int]) -> None:
        """Acknowledge QoS 1 messages, all in one write."""
        if packet_ids:
            self._send(b"".join(_PUBACK.pack(0x40, 2, p) for p in packet_ids))

    def _send(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise WireError("not connected")
        try:
            with self._send_lock:
                sock.sendall(data)
                self._last_sent = time.monotonic()
        except OSError as e:
            raise WireError(f"the MQTT connection broke: {e}") from e

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            with self._send_lock:
                sock.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


__all__ = ["Message", "MqttWire", "WireError"]
