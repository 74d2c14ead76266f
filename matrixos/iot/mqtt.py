"""MQTT ingest: a subscriber whose messages go through the ingest service's write-ahead log,
acknowledged to the broker only once durable.

``matrixos serve --mqtt mqtt://127.0.0.1:1883 --route 'sensors/{site}/#=iot.readings'``

A route is ``<topic filter>=<schema.table>``. The filter's levels are MQTT's (``+`` one level,
``#`` the rest) plus ``{name}``: one level whose value becomes the tag column ``name`` of every
point of the message (``sensors/{site}/{device}`` puts ``site`` and ``device`` on each point). A
route without ``{…}`` levels records the whole topic in the tag column ``topic``. Payloads are
line protocol, or JSON when they start with ``{`` or ``[`` (``matrixos.iot.jsonpoints``).

QoS 1: messages are taken in batches (all that arrived, up to ``batch``), each batch written as
one log append (one fsync for all of them), and only then are its messages acknowledged, all
their ``PUBACK``s in one write (``matrixos.iot.mqttwire``: a minimal MQTT 3.1.1 connection; it
says why not paho-mqtt). A crash before the acknowledgement makes the broker send the message
again (a persistent session: ``clean_session=False``, a stable client id); its points land on
the same series and times, so last write wins keeps them once. Acknowledgements of messages
received on a connection that has since broken are dropped: the broker sends those again on
the new one. A message that cannot be parsed is logged and acknowledged (sending it again
would not make it valid). The broker bounds the QoS 1 messages in flight to one subscriber
(mosquitto's ``max_inflight_messages``, 20 by default): throughput needs it in the thousands,
as one batch waits for one fsync.

Example (a route's tag levels):
    >>> Route.parse("sensors/{site}/#=iot.readings").tags("sensors/berlin/t1")
    {'site': 'berlin'}
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa

from matrixos.catalog.names import TableIdent
from matrixos.errors import ConfigError, IngestBusy, MatrixOSError
from matrixos.iot import lineproto
from matrixos.iot.jsonpoints import parse_json
from matrixos.iot.mqttwire import MqttWire, WireError

if TYPE_CHECKING:
    from matrixos.catalog.access import Principal
    from matrixos.iot.ingest import IotIngest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """``filter=table``: messages on topics matching ``filter`` go to ``table``."""

    filter: str  # the MQTT subscription ({name} levels as +)
    levels: tuple[str, ...]
    table: str

    @classmethod
    def parse(cls, text: str) -> Route:
        """``'sensors/{site}/#=iot.readings'`` → a route (``ConfigError`` when malformed)."""
        topic, sep, table = text.rpartition("=")
        if not sep or not topic or not table:
            raise ConfigError(
                f"bad MQTT route {text!r}", hint="write --route 'sensors/#=schema.table'"
            )
        TableIdent.parse(table)
        levels = tuple(topic.split("/"))
        for i, lv in enumerate(levels):
            if lv == "#" and i != len(levels) - 1:
                raise ConfigError(f"bad MQTT route {text!r}: '#' must be the last level")
        mqtt_filter = "/".join("+" if _name(lv) else lv for lv in levels)
        return cls(mqtt_filter, levels, table)

    def matches(self, topic: str) -> bool:
        parts = topic.split("/")
        for i, lv in enumerate(self.levels):
            if lv == "#":
                return True
            if i >= len(parts):
                return False
            if lv != "+" and not _name(lv) and lv != parts[i]:
                return False
        return len(parts) == len(self.levels)

    def tags(self, topic: str) -> dict[str, str]:
        """The tag columns the topic gives each point of its message."""
        parts = topic.split("/")
        named = {
            n: parts[i] for i, lv in enumerate(self.levels) if (n := _name(lv)) and i < len(parts)
        }
        return named or {"topic": topic}


_UNKNOWN = Route("", (), "")  # a topic not looked up yet


def _name(level: str) -> str | None:
    return level[1:-1] if len(level) > 2 and level[0] == "{" and level[-1] == "}" else None


@dataclass
class _Message:
    topic: str
    payload: bytes
    mid: int
    qos: int
    route: Route
    connection: int  # the connection it came on (its acknowledgement goes on that one only)


class MqttSubscriber:
    """Subscribes to ``url`` (``mqtt://[user:password@]host:port``) for ``routes`` and writes
    what arrives as ``principal``. ``start()`` connects (and reconnects); ``close()`` stops."""

    def __init__(
        self,
        ingest: IotIngest,
        url: str,
        routes: list[Route],
        principal: Principal,
        *,
        client_id: str | None = None,
        batch: int = 20_000,
        qos: int = 1,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "tcp", ""):
            raise ConfigError(f"unsupported MQTT URL {url!r}", hint="mqtt://host:1883")
        if not routes:
            raise ConfigError("--mqtt needs at least one --route 'topic/#=schema.table'")
        if qos not in (0, 1):
            raise ConfigError(f"MQTT QoS {qos} is not supported", hint="use QoS 0 or 1")
        self.ingest = ingest
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 1883
        self.routes = routes
        self.principal = principal
        self.batch = batch
        self.qos = qos
        self.received = 0
        self.written = 0
        self.dropped = 0
        self._queue: queue.Queue[list[_Message]] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._routes: dict[str, Route | None] = {}  # topic → its route (None: no route)
        self.connections = 0  # connections made so far (reconnects count)
        # A persistent session (clean_session=False, a stable client id): QoS 1 messages not
        # acknowledged before a crash are sent again when the subscriber reconnects.
        self.wire = MqttWire(
            self.host,
            self.port,
            client_id or f"matrixos-{uuid.uuid4().hex[:12]}",
            clean_session=False,
            username=parsed.username,
            password=parsed.password,
        )
        self._reader = threading.Thread(target=self._read_loop, name="iot-mqtt-read", daemon=True)
        self._worker = threading.Thread(target=self._run, name="iot-mqtt", daemon=True)

    def start(self, timeout: float = 10.0) -> MqttSubscriber:
        self._open(timeout)
        self._reader.start()
        self._worker.start()
        if not self.wire.subscribed.wait(timeout):
            self.close()
            raise ConfigError(f"the MQTT broker at {self.host}:{self.port} did not subscribe us")
        if any(code & 0x80 for code in self.wire.granted):
            self.close()
            raise ConfigError(
                f"the MQTT broker at {self.host}:{self.port} refused a subscription of "
                f"{', '.join(r.filter for r in self.routes)}",
                hint="check the broker's access rules for these topics",
            )
        self._connected.set()
        return self

    def _open(self, timeout: float) -> None:
        self.wire.connect(timeout)
        self.connections += 1
        self.wire.subscribe([(r.filter, self.qos) for r in self.routes])
        log.info("MQTT: subscribing to %s", ", ".join(r.filter for r in self.routes))

    def close(self) -> None:
        self._stop.set()
        self.wire.close()
        for t in (self._reader, self._worker):
            if t.is_alive():
                t.join(timeout=30)

    # -- the reader -------------------------------------------------------------------------
    def _read_loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                msgs = self.wire.read()
            except (WireError, ConfigError) as e:
                if self._stop.is_set():
                    return
                log.warning("MQTT: %s; reconnecting in %.1f s", e, delay)
                self.wire.close()
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
                try:
                    self._open(10.0)
                except (WireError, ConfigError) as again:
                    log.warning("MQTT: reconnecting failed: %s", again)
                continue
            delay = 0.5
            if msgs:
                self._take(msgs)

    def _take(self, msgs: list[tuple[str, bytes, int, int]]) -> None:
        routes = self._routes
        conn = self.connections
        batch: list[_Message] = []
        unrouted: list[int] = []
        for topic, payload, mid, qos in msgs:
            route = routes.get(topic, _UNKNOWN)
            if route is _UNKNOWN:
                route = next((r for r in self.routes if r.matches(topic)), None)
                if len(routes) < 100_000:
                    routes[topic] = route
            if route is None:
                if qos:
                    unrouted.append(mid)
                continue
            batch.append(_Message(topic, payload, mid, qos, route, conn))  # type: ignore[arg-type]
        if unrouted:
            self._ack(unrouted, conn)
        if batch:
            self.received += len(batch)
            self._queue.put(batch)

    def _ack(self, mids: list[int], connection: int) -> None:
        if connection != self.connections:
            return  # that connection broke: the broker sends these messages again
        try:
            self.wire.puback(mids)
        except WireError as e:  # the reader reconnects; the broker sends them again
            log.warning("MQTT: acknowledgements not sent: %s", e)

    # -- the writer -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            while len(msgs) < self.batch:
                try:
                    msgs += self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(msgs)

    def _write(self, msgs: list[_Message]) -> None:
        by_route: dict[Route, list[_Message]] = {}
        for m in msgs:
            by_route.setdefault(m.route, []).append(m)
        for route, group in by_route.items():
            while not self._stop.is_set():
                try:
                    self._write_group(route, group)
                    break
                except IngestBusy as e:  # not acknowledged: wait, then try again
                    log.warning("MQTT: %s; retrying in %.0f s", e.message, e.retry_after)
                    self._stop.wait(e.retry_after)
            else:
                return  # stopping: unacknowledged messages come again after a restart
            by_connection: dict[int, list[int]] = {}
            for m in group:
                if m.qos:
                    by_connection.setdefault(m.connection, []).append(m.mid)
            for connection, mids in by_connection.items():
                self._ack(mids, connection)

    def _write_group(self, route: Route, group: list[_Message]) -> None:
        ident = TableIdent.parse(route.table)
        text = [m for m in group if m.payload.lstrip()[:1] not in (b"{", b"[")]
        other = [m for m in group if m.payload.lstrip()[:1] in (b"{", b"[")]
        if text:
            self._write_lines(route, ident, text)
        for m in other:
            try:
                points, tags = parse_json(
                    json.loads(m.payload), extra_tags=route.tags(m.topic), source=m.topic
                )
                self.written += self.ingest.write_points(
                    self.principal, ident, points, tags, source=m.topic
                )
            except IngestBusy:
                raise
            except (MatrixOSError, ValueError) as e:
                self.dropped += 1
                log.warning("MQTT message on %s refused: %s", m.topic, e)

    def _write_lines(self, route: Route, ident: TableIdent, msgs: list[_Message]) -> None:
        """Many messages' line protocol parsed as one body; each line gets its message's
        topic tags (worked out once per distinct topic)."""
        body = b"\n".join([m.payload for m in msgs])
        if body.count(b"\n") + 1 == len(msgs) and b"\n\n" not in body:
            ends = None  # one line a message (the usual case): line k is message k - 1
        else:
            payloads = [m.payload.rstrip(b"\n") for m in msgs]
            counts = np.array([p.count(b"\n") + 1 for p in payloads], dtype=np.int64)
            ends = np.cumsum(counts)  # the last line number of each message
            body = b"\n".join(payloads)
        try:
            batch = lineproto.parse(body, source=route.filter, partial=True)
        except MatrixOSError as e:
            self.dropped += len(msgs)
            log.warning("MQTT messages on %s refused: %s", route.filter, e)
            return

        def message_of(lines: np.ndarray) -> np.ndarray:
            return lines - 1 if ends is None else np.searchsorted(ends, lines)

        if batch.rejected:
            bad = message_of(np.array([int(r["line"]) for r in batch.rejected]))
            self.dropped += len(set(bad.tolist()))
            log.warning("MQTT: %d line(s) refused, first: %s", len(batch.rejected),
                        batch.rejected[0]["message"])  # fmt: skip
        topics: dict[str, int] = {}
        code = np.array([topics.setdefault(m.topic, len(topics)) for m in msgs], dtype=np.int64)
        topic_tags = [route.tags(t) for t in topics]
        names = list(dict.fromkeys(k for t in topic_tags for k in t))
        for m, points in batch.tables.items():
            which = pa.array(code[message_of(points.column(lineproto.LINE).to_numpy())])
            tags = list(batch.tags.get(m, []))
            for name in names:
                values = pa.array([t.get(name) for t in topic_tags], pa.string())
                if name in points.column_names:
                    points = points.drop_columns([name])
                points = points.append_column(name, values.take(which))
                if name not in tags:
                    tags.append(name)
            self.written += self.ingest.write_points(
                self.principal, ident, points, tags, source=route.filter
            )


__all__ = ["MqttSubscriber", "Route"]
