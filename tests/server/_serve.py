"""The server tests' helpers: a real ``matrixos serve`` subprocess and a warehouse to serve.

``MatrixOSServer`` runs ``python -m matrixos.cli serve`` with free ports (``.http_url``,
``.pg_port``) and its log kept in ``.log_path``; ``stop()`` sends SIGTERM and waits.
``make_served_warehouse`` makes a warehouse with tables and accounts (see its docstring).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

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

    def stacks(self) -> str:
        """Every thread's stack in the server now (SIGUSR1 makes it write them to its log)."""
        assert self.proc is not None
        before = len(self.log())
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        return self.log()[before:]

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


def make_served_warehouse(
    root: Path | str,
    *,
    storage_options: dict[str, str] | None = None,
    catalog_url: str | None = None,
) -> ServedWarehouse:
    """A warehouse with ``sales.orders`` (5 rows), ``sales.customers``, ``hr.salaries``,
    ``big.nums`` (n: 0…19,999), ``kb.docs`` (Lance, hash embeddings) and the accounts
    ``admin``, ``alice`` (USE + SELECT on schema ``main.sales``) and ``bob``."""
    wh = ServedWarehouse(str(root))
    with mx.connect(wh.uri, storage_options=storage_options, catalog_url=catalog_url) as lh:
        lh.create_table(
            "sales.orders",
            [{"id": i, "customer": f"c{i % 2}", "amount": 10.0 * i} for i in range(1, 6)],
        )
        lh.create_table(
            "sales.customers", [{"id": "c0", "name": "Ann"}, {"id": "c1", "name": "O'Hara"}]
        )
        lh.create_table("hr.salaries", [{"name": "Ann", "salary": 100}])
        # 20,000 rows: a self cross join is 4e8 pairs (about a second), a triple one endless.
        lh.create_table("big.nums", {"n": list(range(20_000))})
        docs = [
            {"id": 1, "text": "VACUUM removes old files"},
            {"id": 2, "text": "OPTIMIZE compacts small files"},
        ]
        lh.create_table("kb.docs", docs, format="lance").set_embedding("text", embedder="hash")
        accounts = Accounts(lh.catalog)
        for name, admin in (("admin", True), ("alice", False), ("bob", False)):
            wh.passwords[name] = f"pw-{name}-Secret1"
            accounts.create(name, admin=admin, password=wh.passwords[name])
            wh.tokens[name] = accounts.create_token(name)
        accounts.grant("USE CATALOG", "main", "alice")
        accounts.grant("USE SCHEMA", "main.sales", "alice")
        accounts.grant("SELECT", "main.sales", "alice")
    return wh
