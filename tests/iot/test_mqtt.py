"""MQTT ingest through Debian's mosquitto broker (started per module on a free loopback port):
QoS 1 messages land once, topic levels become tags, JSON and line protocol payloads, and a
message is acknowledged to the broker only once durable (unacknowledged ones come again)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

import matrixos as mx
from matrixos.iot.ingest import IotIngest
from matrixos.iot.mqtt import MqttSubscriber, Route

try:
    from tests._servers import LOCALHOST, free_port
except ModuleNotFoundError:
    from _servers import LOCALHOST, free_port  # type: ignore[no-redef]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
WAREHOUSES = ("local",)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {LOCALHOST}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_inflight_messages 1000\n"
        "max_queued_messages 100000\n"
        "log_dest stderr\n"
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=(root / "log").open("wb"))
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection((LOCALHOST, port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None, (root / "log").read_text()
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
    yield f"mqtt://{LOCALHOST}:{port}"
    proc.terminate()
    proc.wait(10)


def publish(url: str, messages: list[tuple[str, str]]) -> None:
    host, port = url.removeprefix("mqtt://").split(":")
    pub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    pub.connect(host, int(port))
    pub.loop_start()
    infos = [pub.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
    pub.disconnect()
    pub.loop_stop()


def wait_for(fn, expected, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    """``fn()`` once it equals ``expected`` (or its last value); a table still being created
    by the first message counts as nothing yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = fn()
        except mx.errors.TableNotFound:
            got = None
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_route_parsing() -> None:
    r = Route.parse("sensors/{site}/+/#=iot.readings")
    assert r.filter == "sensors/+/+/#" and r.table == "iot.readings"
    assert r.matches("sensors/berlin/x/y/z") and not r.matches("other/berlin/x")
    assert r.tags("sensors/berlin/x/y") == {"site": "berlin"}
    assert Route.parse("a/b=s.t").tags("a/b") == {"topic": "a/b"}
    with pytest.raises(mx.errors.ConfigError):
        Route.parse("no-table")


def test_qos1_messages_land_once_with_topic_tags(
    broker: str, lh: mx.Lakehouse, tmp_path: Path
) -> None:
    with IotIngest(lh, tmp_path / "wal", flush_interval=0.2) as ingest:
        route = Route.parse("sensors/{site}/{device}=iot.readings")
        sub = MqttSubscriber(ingest, broker, [route], lh.principal).start()
        try:
            msgs = [
                (f"sensors/s{i % 3}/d{i % 5}", f"env temp={i}.5,n={i}i {i * 10**9}")
                for i in range(300)
            ]
            msgs.append(("sensors/s9/d9", '{"fields": {"temp": 1.5, "n": 999}, "time": 1}'))
            publish(broker, msgs)
            count = lambda: lh.sql("SELECT count(*) FROM iot.readings").fetchall()[0][0]  # noqa: E731
            assert wait_for(count, 301) == 301
        finally:
            sub.close()
        got = lh.sql(
            "SELECT site, device, temp FROM iot.readings WHERE n IN (7, 999) ORDER BY n"
        ).fetchall()
        assert got == [("s1", "d2", 7.5), ("s9", "d9", 1.5)]
        ingest.flush()
        assert lh.sql("SELECT count(*), count(DISTINCT n) FROM iot.readings").fetchall() == [
            (301, 301)
        ]


def test_unacknowledged_messages_come_again(broker: str, lh: mx.Lakehouse, tmp_path: Path) -> None:
    """The log refuses everything (at capacity): nothing is acknowledged; a new subscriber with
    the same session gets the messages again from the broker and writes them."""
    route = Route.parse("plant/{line}=iot.plant")
    busy = IotIngest(lh, tmp_path / "wal", flush_interval=3600, max_pending_bytes=1)
    sub = MqttSubscriber(busy, broker, [route], lh.principal, client_id="mx-test-redeliver")
    sub.start()
    publish(broker, [(f"plant/l{i % 2}", f"m v={i}i {i * 10**6}") for i in range(40)])
    assert wait_for(lambda: sub.received > 0, True)
    sub.close()
    busy.close()
    assert sub.written == 0
    with IotIngest(lh, tmp_path / "wal", flush_interval=0.2) as ingest:
        again = MqttSubscriber(ingest, broker, [route], lh.principal, client_id="mx-test-redeliver")
        again.start()
        try:
            count = lambda: lh.sql("SELECT count(DISTINCT v) FROM iot.plant").fetchall()[0][0]  # noqa: E731
            assert wait_for(count, 40) == 40
        finally:
            again.close()


def test_multi_line_payloads_and_a_bad_message(
    broker: str, lh: mx.Lakehouse, tmp_path: Path
) -> None:
    """Messages of several lines keep their topic's tags on every line; a message with a bad
    line is counted as dropped and acknowledged, the others land."""
    with IotIngest(lh, tmp_path / "wal", flush_interval=0.2) as ingest:
        route = Route.parse("fleet/{truck}=iot.fleet")
        sub = MqttSubscriber(ingest, broker, [route], lh.principal).start()
        try:
            msgs = [
                (f"fleet/t{i}", f"pos lat={i}.5 {i * 10**9}\npos lat={i}.25 {i * 10**9 + 10**6}\n")
                for i in range(20)
            ]
            msgs.insert(7, ("fleet/bad", "pos lat=oops 5"))
            publish(broker, msgs)
            count = lambda: lh.sql("SELECT count(*) FROM iot.fleet").fetchall()[0][0]  # noqa: E731
            assert wait_for(count, 40) == 40
            assert wait_for(lambda: sub.dropped, 1) == 1
        finally:
            sub.close()
        got = lh.sql(
            "SELECT truck, count(*), min(lat), max(lat) FROM iot.fleet GROUP BY truck "
            "ORDER BY truck LIMIT 2"
        ).fetchall()
        assert got == [("t0", 2, 0.25, 0.5), ("t1", 2, 1.25, 1.5)]


def test_reconnects_after_the_broker_restarts(lh: mx.Lakehouse, tmp_path: Path) -> None:
    """The broker goes away and comes back on the same port: the subscriber reconnects,
    subscribes again and goes on writing."""
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} {LOCALHOST}\nallow_anonymous true\npersistence false\n")
    url = f"mqtt://{LOCALHOST}:{port}"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((LOCALHOST, port), timeout=0.5).close()
                return proc
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)

    proc = start()
    with IotIngest(lh, tmp_path / "wal", flush_interval=0.2) as ingest:
        route = Route.parse("room/{name}=iot.rooms")
        sub = MqttSubscriber(ingest, url, [route], lh.principal).start()
        try:
            publish(url, [(f"room/r{i}", f"t v={i}i {i}") for i in range(5)])
            count = lambda: lh.sql("SELECT count(*) FROM iot.rooms").fetchall()[0][0]  # noqa: E731
            assert wait_for(count, 5) == 5
            proc.terminate()
            proc.wait(10)
            proc = start()
            again = lambda: sub.connections == 2 and sub.wire.subscribed.is_set()  # noqa: E731
            assert wait_for(again, True)  # reconnected and subscribed again
            publish(url, [(f"room/r{i}", f"t v={i}i {i}") for i in range(5, 10)])
            assert wait_for(count, 10) == 10
        finally:
            sub.close()
            proc.terminate()
            proc.wait(10)
