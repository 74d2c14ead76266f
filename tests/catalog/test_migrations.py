"""The catalog database's versioned migrations (matrixos/catalog/migrations).

- Every table any module puts on ``store.METADATA`` is exactly what the migrations make: a table
  or column added to the code without a revision fails here, naming what is missing.
- A database made before migrations existed (``create_all``, no ``alembic_version``) and one at
  an older revision are brought to the newest when a catalog opens them; their rows stay.
- A database written by a newer release is refused with a clear error.
"""

from __future__ import annotations

import importlib
import re
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from matrixos.catalog import migrations
from matrixos.catalog.store import METADATA, SQLCatalog
from matrixos.errors import StorageError

try:
    from tests._servers import PostgresServer
except ModuleNotFoundError:
    from _servers import PostgresServer  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
_PACKAGES = {"matrixos": "matrixos", "storage": "matrixos.storage", "engine": "matrixos.engine"}


def _import_table_modules() -> list[str]:
    """Import every product module that defines tables on METADATA (found by reading the
    source, so a new module is checked without being listed here)."""
    found = []
    for folder, package in _PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            if re.search(r'sa\.Table\(\s*"[^"]+",\s*(METADATA|_meta)\b', path.read_text()):
                rel = path.relative_to(ROOT / folder).with_suffix("")
                name = ".".join([package, *rel.parts])
                importlib.import_module(name)
                found.append(name)
    return found


def _schema_diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, METADATA)
    # alembic's own table is not the product's
    return [d for d in diff if "alembic_version" not in repr(d)]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty catalog database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    pg: PostgresServer = request.getfixturevalue("postgres_server")
    return pg.url(pg.create_database())


def test_migrations_make_exactly_the_tables_of_the_code(database_url: str) -> None:
    modules = _import_table_modules()
    assert "matrixos.catalog.store" in modules and "matrixos.jobs.store" in modules
    cat = SQLCatalog(database_url)
    try:
        diff = _schema_diff(cat.engine)
        assert not diff, (
            "the catalog tables in the code differ from what the migrations make; add a "
            "revision under matrixos/catalog/migrations/versions (copy script.py.mako; use "
            f"create_table / add_column) for: {diff}"
        )
        assert migrations.current_revision(cat.engine) == migrations.head_revision()
        # opening again is a no-op
        assert migrations.upgrade(cat.engine) == migrations.head_revision()
    finally:
        cat.close()


def _legacy_database(path: Path) -> None:
    """What the first release made: the baseline tables by ``create_all`` (no version table,
    no ``mx_tokens.last_used_from``), with a schema, a table and a token in it."""
    meta = sa.MetaData()
    keep = {"mx_catalogs", "mx_schemas", "mx_tables", "mx_volumes", "mx_accounts", "mx_members"}
    keep |= {"mx_grants", "mx_tokens", "mx_passwords"}
    for table in METADATA.sorted_tables:
        if table.name in keep:
            cols = [c.copy() for c in table.columns if c.name != "last_used_from"]
            sa.Table(table.name, meta, *cols)
    engine = sa.create_engine(f"sqlite:///{path}")
    meta.create_all(engine)
    with engine.begin() as conn:
        now = "2026-01-01 00:00:00.000000"
        conn.execute(sa.text(f"INSERT INTO mx_catalogs VALUES ('main', NULL, '{now}')"))
        conn.execute(
            sa.text(f"INSERT INTO mx_schemas VALUES ('main', 'sales', NULL, NULL, '{now}')")
        )
        conn.execute(
            sa.text(
                "INSERT INTO mx_tables VALUES ('main', 'sales', 'orders', 'delta', "
                f"'file:///wh/main/sales/orders', 0, NULL, '{{}}', NULL, '{now}', '{now}')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO mx_tokens (id, account, hash, created_at) "
                f"VALUES ('t1', 'alice', 'h', '{now}')"
            )
        )
    engine.dispose()


def test_a_database_made_before_migrations_is_migrated_on_open(tmp_path: Path) -> None:
    _import_table_modules()
    db = tmp_path / "catalog.db"
    _legacy_database(db)
    cat = SQLCatalog(f"sqlite:///{db}")
    try:
        assert migrations.current_revision(cat.engine) == migrations.head_revision()
        assert not _schema_diff(cat.engine)
        assert ("main", "sales") in cat.list_schemas()
        with cat.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT account, last_used_from FROM mx_tokens")).one()
        assert tuple(row) == ("alice", None)
    finally:
        cat.close()


def test_a_database_at_an_older_revision_is_migrated_on_open(tmp_path: Path) -> None:
    _import_table_modules()
    db = tmp_path / "catalog.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    assert migrations.upgrade(engine, "0001") == "0001"
    names = set(sa.inspect(engine).get_table_names())
    assert "mx_jobs" not in names and "mx_tables" in names
    engine.dispose()
    cat = SQLCatalog(f"sqlite:///{db}")
    try:
        assert migrations.current_revision(cat.engine) == migrations.head_revision()
        assert not _schema_diff(cat.engine)
    finally:
        cat.close()


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    SQLCatalog(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StorageError, match="newer release") as info:
        SQLCatalog(f"sqlite:///{db}")
    assert "upgrade MatrixOS" in str(info.value.hint)


def test_processes_opening_one_new_database_at_once_all_succeed(database_url: str) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from matrixos.catalog.store import SQLCatalog; "
        "c = SQLCatalog(sys.argv[1]); print(len(c.list_schemas())); c.close()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == "1"
    engine = sa.create_engine(database_url)
    try:
        assert migrations.current_revision(engine) == migrations.head_revision()
    finally:
        engine.dispose()
