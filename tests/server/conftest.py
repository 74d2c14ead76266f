"""Shared fixtures of the server tests (HTTP and pg wire): a real ``matrixos serve``.

``served_warehouse`` (module scope) is a warehouse with a few tables and three accounts:
``admin`` (an admin), ``alice`` (reads schema ``sales``) and ``bob`` (no grants), each with an
API token (``.tokens``) and a password (``.passwords``). ``matrixos_server`` runs
``matrixos serve`` on it (HTTP and pg wire on free ports) for a module; tests that need a
server of their own (different options, SIGTERM) start a ``MatrixOSServer`` from ``_serve``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse, make_served_warehouse
except ModuleNotFoundError:
    from _serve import (  # type: ignore[no-redef]
        MatrixOSServer,
        ServedWarehouse,
        make_served_warehouse,
    )


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
