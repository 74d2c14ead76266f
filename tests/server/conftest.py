"""A real ``matrixos serve`` process on 127.0.0.1 for the server tests (HTTP and pg wire).

``served_warehouse`` (module scope) is a warehouse with a few tables and three accounts:
``admin`` (an admin), ``alice`` (reads schema ``sales``) and ``bob`` (no grants), each with an
API token (``.tokens``) and a password (``.passwords``). ``matrixos_server`` runs
``python -m matrixos.cli serve`` on it with free ports (``.http_url``, ``.pg_port``) and its log
kept in ``.log_path``; ``MatrixOSServer`` starts more (``stop()`` sends SIGTERM and waits).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts

try:
    from tests._servers import LOCALHOST, free_port
except ModuleNotFoundError:
    from _servers import LOCALHOST, free_port  # type: ignore[no-redef]


@dataclass
class ServedWarehouse:
    uri: str
    tokens: dict[str, str] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)


class MatrixOSServer:
    """``matrixos serve`` in a subprocess; ``start()`` returns once ``/healthz`` answers."""

    def __init__(
        self,
        warehouse: str,
        log_path: Path,
        *,
        pg: bool = False,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.warehouse = warehouse
        self.log_path = log_path
        self.port = free_port()
        self.pg_port = free_port() if pg else -1
        self.args = list(args)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> MatrixOSServer:
        cmd = [
            sys.executable, "-m", "matrixos.cli", "serve", "--warehouse", self.warehouse,
            "--host", LOCALHOST, "--port", str(self.port), "--pg-port", str(self.pg_port),
            *self.args,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"matrixos serve exited:\n{self.log()}")
            try:
                if httpx.get(self.http_url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"matrixos serve did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        """Send SIGTERM (the server drains, then exits)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.terminate()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def make_served_warehouse(root: Path) -> ServedWarehouse:
    """A warehouse with ``sales.orders`` (5 rows), ``sales.customers``, ``hr.salaries`` and
    the accounts ``admin``, ``alice`` (USE + SELECT on schema ``main.sales``) and ``bob``."""
    wh = ServedWarehouse(str(root))
    with mx.connect(wh.uri) as lh:
        lh.create_table(
            "sales.orders",
            [{"id": i, "customer": f"c{i % 2}", "amount": 10.0 * i} for i in range(1, 6)],
        )
        lh.create_table(
            "sales.customers", [{"id": "c0", "name": "Ann"}, {"id": "c1", "name": "O'Hara"}]
        )
        lh.create_table("hr.salaries", [{"name": "Ann", "salary": 100}])
        accounts = Accounts(lh.catalog)
        for name, admin in (("admin", True), ("alice", False), ("bob", False)):
            wh.passwords[name] = f"pw-{name}-Secret1"
            accounts.create(name, admin=admin, password=wh.passwords[name])
            wh.tokens[name] = accounts.create_token(name)
        accounts.grant("USE CATALOG", "main", "alice")
        accounts.grant("USE SCHEMA", "main.sales", "alice")
        accounts.grant("SELECT", "main.sales", "alice")
    return wh


@pytest.fixture(scope="module")
def served_warehouse(tmp_path_factory: pytest.TempPathFactory) -> ServedWarehouse:
    return make_served_warehouse(tmp_path_factory.mktemp("served") / "warehouse")


@pytest.fixture(scope="module")
def matrixos_server(
    served_warehouse: ServedWarehouse, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MatrixOSServer]:
    """One ``matrixos serve`` (HTTP and pg wire) for a test module, stopped with SIGTERM."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    server = MatrixOSServer(served_warehouse.uri, log, pg=True, args=["--chunk-rows", "1000"])
    server.start()
    try:
        yield server
    finally:
        server.stop()
