"""``matrixos serve``: one process serving HTTP (uvicorn) and, when available, the PostgreSQL
wire, over one ``Lakehouse``.

SIGTERM (or Ctrl-C) drains: new statements are refused with 503 ``TEMPORARILY_UNAVAILABLE``
(``/healthz`` answers ``draining``), running ones get ``grace_s`` seconds to finish and are
canceled after that (a canceled write commits nothing), then the listeners close. A second
signal stops at once. SIGUSR1 writes every thread's stack to stderr (the server goes on): what
a statement that does not end is doing.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import uvicorn

from matrixos.catalog.access import Principal
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.audit import AuditLog
from matrixos.catalog.history import QueryHistory
from matrixos.catalog.throttle import LoginThrottle
from matrixos.iot.runtime import IotOptions, start_iot
from matrixos.server.audit import AuditWriter
from matrixos.server.http import create_app
from matrixos.server.http_auth import TokenCache, forget_tokens_after
from matrixos.server.pgwire import PgServerHandle, start_pg_server
from matrixos.server.statements import STREAM_AFTER_S, Limits, Slots, StatementManager

if TYPE_CHECKING:
    from matrixos.session import Lakehouse

log = logging.getLogger("matrixos.server")
_LINGER_S = 1.0


@dataclass(frozen=True)
class ServeOptions:
    """How ``serve`` listens and runs statements."""

    host: str = "127.0.0.1"
    port: int = 8080
    pg_port: int | None = 5433  # None: no PostgreSQL wire
    workers: int = 8
    grace_s: float = 30.0
    chunk_rows: int | None = None  # None: by format (see StatementManager)
    stream_after_s: float | None = STREAM_AFTER_S  # see StatementManager
    limits: Limits = field(default_factory=Limits)
    retained_bytes: int = 4 * 1024**3  # results kept for clients to read, all together
    log_level: str = "info"
    iot: IotOptions = field(default_factory=IotOptions)  # write-ahead log, MQTT, file drops


class _DrainingServer(uvicorn.Server):
    """uvicorn, with a first SIGTERM/SIGINT that drains the statements before stopping."""

    def __init__(self, config: uvicorn.Config, drain: Any) -> None:
        super().__init__(config)
        self._drain = drain
        self._draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._draining:  # the second signal: stop now
            super().handle_exit(sig, frame)
            return
        self._draining = True
        log.info("signal %s: draining (no new statements; running ones may finish)", sig)

        def drain_then_exit() -> None:
            try:
                self._drain()
                # A moment for clients polling a statement that just ended to read its state.
                time.sleep(_LINGER_S)
            finally:
                self.should_exit = True

        threading.Thread(target=drain_then_exit, name="mx-drain", daemon=True).start()


def serve(lakehouse: Lakehouse, options: ServeOptions) -> None:
    """Serve ``lakehouse`` until a signal drains and stops the server."""
    if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    # Failed logins over the wire are throttled per (user, address), as by start_pg_server.
    # The HTTP API throttles failures per (token id, address) itself (create_app): other
    # tokens from a busy address (a NAT, a proxy) keep working while one is being guessed.
    accounts = Accounts(lakehouse.catalog, throttle=LoginThrottle())
    tokens = Accounts(lakehouse.catalog)
    lakehouse.start_maintenance()  # continuous aggregates refreshed, retention enforced

    # Tokens checked in the last second are not checked again; a change of accounts, tokens
    # or grants made through this server counts from the next request on.
    cache = TokenCache(tokens)

    def run(principal: Principal, sql: str, dialect: str) -> Any:
        result = lakehouse.with_principal(principal).sql(sql, dialect=dialect)
        forget_tokens_after(cache, sql)
        return result

    # One count of each principal's running statements for HTTP, SDK reads and the wire.
    slots = Slots(options.limits)
    manager = StatementManager(
        run,
        workers=options.workers,
        chunk_rows=options.chunk_rows,
        stream_after_s=options.stream_after_s,
        limits=options.limits,
        retained_bytes=options.retained_bytes,
        slots=slots,
    )
    audit = AuditWriter(AuditLog(lakehouse.service), history=QueryHistory(lakehouse.service))
    audit.on_statement(lambda sql: forget_tokens_after(cache, sql))  # the wire's too
    iot = start_iot(lakehouse, options.iot)  # before the routes: replayed points are visible
    # The server schedules the jobs queue (jobs submitted by the CLI or the SDK included).
    lakehouse.jobs.service.ensure_scheduler()
    app = create_app(
        lakehouse,
        manager,
        tokens.authenticate_token,
        default_dialect=lakehouse.settings.default_dialect,
        audit=audit,
        tokens=cache,
    )
    pg = start_pg(lakehouse, accounts, options, audit, slots)

    def drain() -> None:
        # The wire's statements drain at the same time, within the same grace period.
        wire: list[bool] = []
        wire_drain = threading.Thread(
            target=lambda: wire.append(pg is None or pg.drain(options.grace_s))
        )
        wire_drain.start()
        clean = manager.drain(options.grace_s)
        wire_drain.join()
        clean = clean and all(wire)
        log.info("drained: %s", "every statement finished" if clean else "some were canceled")

    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level=options.log_level,
        timeout_graceful_shutdown=int(options.grace_s) + 5,
    )
    server = _DrainingServer(config, drain)
    log.info("HTTP on http://%s:%d", options.host, options.port)
    try:
        server.run()
    finally:
        if pg is not None:
            pg.stop()
        iot.close()  # a last flush; what it cannot commit stays in the log for the next start
        audit.close()


def start_pg(
    lakehouse: Lakehouse,
    accounts: Accounts,
    options: ServeOptions,
    audit: AuditWriter | None = None,
    slots: Slots | None = None,
) -> PgServerHandle | None:
    """The PostgreSQL wire server on ``options.pg_port`` (None: none), auditing to ``audit``."""
    if options.pg_port is None:
        return None
    handle = start_pg_server(
        lakehouse,
        options.host,
        options.pg_port,
        accounts=accounts,
        limits=options.limits,
        audit=audit,
        slots=slots,
    )
    log.info("PostgreSQL wire on %s:%d", options.host, handle.port)
    return handle
