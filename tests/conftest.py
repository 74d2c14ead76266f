"""Shared fixtures: real S3 (moto) and PostgreSQL servers, warehouse and catalog targets.

Nothing here is applied to a test unless it asks for it by name, except ``_isolated_home``.
Under pytest-xdist each worker has its own servers (session scope is per worker) on ports
picked at runtime, and its own temp folders.

    def test_roundtrip(warehouse_root, catalog_url): ...   # runs 2 x 2 = 4 times
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import matrixos as mx

try:  # tests/ imported as a package (tests/__init__.py, or the repo root on sys.path)
    from tests._servers import PostgresServer, S3Server, WarehouseTarget
except ModuleNotFoundError:  # pytest's default "prepend" import mode puts tests/ on sys.path
    from _servers import PostgresServer, S3Server, WarehouseTarget  # type: ignore[no-redef]


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point MATRIXOS_HOME at a per-worker folder so no test reads or writes ~/.matrixos.

    Also hides the developer's MATRIXOS_WAREHOUSE / MATRIXOS_CATALOG_URL so that defaults are
    the defaults. Subprocesses (CLI, servers, notebook kernels) inherit the same environment.
    """
    home = tmp_path_factory.mktemp("matrixos-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATRIXOS_HOME", str(home))
        mp.delenv("MATRIXOS_WAREHOUSE", raising=False)
        mp.delenv("MATRIXOS_CATALOG_URL", raising=False)
        yield home


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 (``.endpoint_url``, ``.storage_options``,
    ``.make_bucket()``), one per worker."""
    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server on 127.0.0.1 (``.url(db)``, ``.create_database()``),
    one per worker."""
    with PostgresServer() as server:
        yield server


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``warehouse_root`` (and so ``lh``) runs on each storage backend, or on those a module
    names in ``WAREHOUSES`` (``WAREHOUSES = ("local",)``)."""
    if "warehouse_root" in metafunc.fixturenames:
        kinds = list(getattr(metafunc.module, "WAREHOUSES", ("local", "s3")))
        metafunc.parametrize("warehouse_root", kinds, ids=kinds, indirect=True)


@pytest.fixture
def warehouse_root(request: pytest.FixtureRequest, tmp_path: Path) -> WarehouseTarget:
    """A fresh, empty warehouse location: a local folder, then ``s3://<new bucket>/wh``."""
    if request.param == "local":
        root = tmp_path / "warehouse"
        root.mkdir()
        return WarehouseTarget(uri=str(root), storage_options=None, kind="local")
    # Looked up lazily so that local-only runs (-k local) never start moto.
    s3: S3Server = request.getfixturevalue("s3_server")
    return WarehouseTarget(
        uri=f"s3://{s3.make_bucket()}/wh", storage_options=s3.storage_options, kind="s3"
    )


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty catalog database URL: a SQLite file, then a new Postgres database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    pg: PostgresServer = request.getfixturevalue("postgres_server")
    return pg.url(pg.create_database())


@pytest.fixture
def lh(warehouse_root: WarehouseTarget) -> Iterator[mx.Lakehouse]:
    """``lh`` everywhere: an embedded session on a fresh, empty warehouse (per
    ``warehouse_root``: a local folder, then the S3 server).

    A module that needs the local folder only narrows it, keeping the name's meaning:
    ``WAREHOUSES = ("local",)``.

    Sessions that mean something else have their own names: ``catalog_lh`` (per catalog
    backend), ``sample_lh``, ``shared_lh``, ``sandbox_lh``, ``shell_lh``, and on the Ray
    cluster ``ray_lh``, ``tpch_ray_lh`` and ``modes_lh`` (tests/compute/conftest.py).
    """
    with mx.connect(warehouse_root.uri, storage_options=warehouse_root.storage_options) as lh:
        yield lh
