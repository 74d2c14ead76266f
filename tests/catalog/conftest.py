"""The catalog tests run over every backend: SQLite, PostgreSQL and the object-store log."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    from tests._servers import PostgresServer
except ModuleNotFoundError:
    from _servers import PostgresServer  # type: ignore[no-redef]


def _sql_url(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    pg: PostgresServer = request.getfixturevalue("postgres_server")
    return pg.url(pg.create_database())


@pytest.fixture(params=["sqlite", "postgres", "log"], ids=["sqlite", "postgres", "log"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty catalog: a SQLite file, a Postgres database, or a commit log in a
    folder (the object-store catalog on local files; on S3 in test_object_store_catalog.py)."""
    if request.param == "log":
        return f"file://{tmp_path / 'catalog-log'}"
    return _sql_url(request, request.param, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def sql_catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty catalog database (the SQL backends only)."""
    return _sql_url(request, request.param, tmp_path)
