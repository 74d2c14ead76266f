"""What ``matrixos serve`` runs for IoT: the ingest service (write-ahead log and flusher), an
MQTT subscriber and file-drop watchers, started together and stopped together.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> iot = start_iot(lh, IotOptions(flush_interval=0.5))
    >>> iot.ingest.flusher.interval
    0.5
    >>> iot.close()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from matrixos.errors import ConfigError
from matrixos.iot.filedrop import FileDropWatcher
from matrixos.iot.ingest import IotIngest, close_ingest, ingest_for
from matrixos.iot.mqtt import MqttSubscriber, Route

if TYPE_CHECKING:
    from matrixos.session import Lakehouse


@dataclass(frozen=True)
class IotOptions:
    """``wal_dir``: the write-ahead log's folder (default: see ``IotIngest``);
    ``flush_interval`` seconds between commits; ``max_pending_mb`` of points held before
    writers get 429; ``mqtt`` a broker URL with ``routes`` (``'topic/#=schema.table'``);
    ``watch``: ``'folder=schema.table'`` file drops."""

    wal_dir: str | None = None
    flush_interval: float = 1.0
    max_pending_mb: int = 512
    mqtt: str | None = None
    routes: tuple[str, ...] = ()
    watch: tuple[str, ...] = ()
    mqtt_client_id: str | None = None
    fsync: bool = True
    precision: str = "ns"  # of file drops' integer times


@dataclass
class IotRuntime:
    lakehouse: Lakehouse
    ingest: IotIngest
    mqtt: MqttSubscriber | None = None
    watchers: list[FileDropWatcher] = field(default_factory=list)

    def close(self) -> None:
        """Stop MQTT and the watchers, then the ingest service (a last flush first)."""
        if self.mqtt is not None:
            self.mqtt.close()
        for w in self.watchers:
            w.close()
        close_ingest(self.lakehouse)


def start_iot(lakehouse: Lakehouse, options: IotOptions) -> IotRuntime:
    """Start ``lakehouse``'s ingest service and what ``options`` asks for; writes from MQTT
    and file drops act as the lakehouse's own principal (the server's)."""
    if options.routes and not options.mqtt:
        raise ConfigError("--route needs --mqtt mqtt://host:port")
    routes = [Route.parse(r) for r in options.routes]
    ingest = ingest_for(
        lakehouse,
        wal_dir=options.wal_dir,
        flush_interval=options.flush_interval,
        max_pending_bytes=options.max_pending_mb << 20,
        fsync=options.fsync,
    )
    runtime = IotRuntime(lakehouse, ingest)
    try:
        for spec in options.watch:
            folder, sep, table = spec.rpartition("=")
            if not sep or not folder:
                raise ConfigError(f"bad --watch {spec!r}", hint="--watch /folder=schema.table")
            runtime.watchers.append(
                FileDropWatcher(
                    ingest, folder, table, lakehouse.principal, precision=options.precision
                ).start()
            )
        if options.mqtt:
            runtime.mqtt = MqttSubscriber(
                ingest,
                options.mqtt,
                routes,
                lakehouse.principal,
                client_id=options.mqtt_client_id,
            ).start()
    except BaseException:
        runtime.close()
        raise
    return runtime


__all__ = ["IotOptions", "IotRuntime", "start_iot"]
