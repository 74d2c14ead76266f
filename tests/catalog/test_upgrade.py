"""A warehouse written by MatrixOS 0.1.0 (tests/fixtures/warehouse_v0_1_0, made by
tests/fixtures/make_warehouse.py) opens with the current code: its Delta and Lance tables,
history, volume, accounts, group grants, token, password and credit all still work, and new
writes land. The same warehouse with its catalog database taken back to an older revision is
migrated when opened."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos._filelock import locked
from matrixos.catalog import migrations
from matrixos.catalog.accounts import Accounts
from matrixos.errors import AccessDenied

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
try:
    from tests.fixtures.make_warehouse import WAREHOUSE_PATH
except ModuleNotFoundError:
    import sys

    sys.path.insert(0, str(FIXTURES))
    from make_warehouse import WAREHOUSE_PATH  # type: ignore[no-redef]

FIXTURE = FIXTURES / "warehouse_v0_1_0"


@pytest.fixture
def old_warehouse() -> Iterator[Path]:
    """The fixture copied back to the path it was made at (the catalog keeps absolute table
    locations); one test at a time holds it."""
    with locked(str(WAREHOUSE_PATH) + ".lock"):
        shutil.rmtree(WAREHOUSE_PATH, ignore_errors=True)
        shutil.copytree(FIXTURE, WAREHOUSE_PATH)
        try:
            yield WAREHOUSE_PATH / "wh"
        finally:
            shutil.rmtree(WAREHOUSE_PATH, ignore_errors=True)


def _check_everything(wh: Path) -> None:
    token = (FIXTURE / "alice.token").read_text()
    with mx.connect(str(wh)) as lh:
        assert migrations.current_revision(lh.catalog.engine) == migrations.head_revision()
        assert sorted(lh.tables("sales")) == ["main.sales.orders"]
        orders = lh.table("sales.orders")
        rows = lh.sql("SELECT id, day, amount FROM sales.orders ORDER BY id").fetchall()
        assert rows == [(1, "d1", 3.0), (2, "d1", 2.5), (3, "d2", 3.5), (4, "d2", 4.5)]
        assert orders.version == 2 and len(orders.history()) == 3
        assert orders.to_arrow(version=0).num_rows == 3
        # writes by the current version
        orders.append(pa.table({"id": [5], "day": ["d3"], "amount": [5.5]}))
        lh.sql("DELETE FROM sales.orders WHERE id = 2")
        assert lh.sql("SELECT count(*), max(id) FROM sales.orders").fetchall() == [(4, 5)]
        assert orders.version == 4
        # Lance
        hits = lh.search("kb.docs", [1.0, 0.0], k=1).to_pylist()
        assert hits[0]["text"] == "alpha"
        lh.table("kb.docs").append(
            pa.table(
                {
                    "id": [4],
                    "text": ["delta"],
                    "vector": pa.array([[0.0, 0.5]], pa.list_(pa.float32(), 2)),
                }
            )
        )
        assert lh.sql("SELECT count(*) FROM kb.docs").fetchall() == [(4,)]
        # volume
        volume = lh.volume("raw.files")
        assert volume.read_bytes("notes/hello.txt") == b"hello from 0.1.0\n"
        # accounts: alice is in team, which may read sales.orders only
        accounts = Accounts(lh.catalog)
        alice = accounts.authenticate_token(token)
        assert alice.name == "alice"
        assert accounts.principal("alice").groups >= {"team"}
        as_alice = lh.with_principal(alice)
        assert as_alice.sql("SELECT count(*) FROM sales.orders").fetchall() == [(4,)]
        with pytest.raises(AccessDenied):
            as_alice.sql("SELECT * FROM kb.docs")
        assert lh.accounts.balance("team") == 10


def test_a_warehouse_from_0_1_0_opens_reads_and_writes(old_warehouse: Path) -> None:
    _check_everything(old_warehouse)


def test_its_catalog_database_at_an_older_revision_is_migrated_on_open(
    old_warehouse: Path,
) -> None:
    # Take the catalog back to revision 0002: drop what 0003 made, except the billing tables
    # the fixture's credit is in (0003 checks first, so they stay as they are).
    db = old_warehouse / "_catalog.db"
    with sqlite3.connect(db) as conn:
        for table in ("mx_policies", "mx_jobs", "mx_reservations", "mx_job_leases"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute("ALTER TABLE mx_tokens DROP COLUMN last_used_from")
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    _check_everything(old_warehouse)
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        columns = {r[1] for r in conn.execute("PRAGMA table_info(mx_tokens)")}
    assert {"mx_policies", "mx_jobs", "mx_reservations", "mx_job_leases"} <= names
    assert "last_used_from" in columns
