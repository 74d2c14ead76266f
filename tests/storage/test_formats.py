"""A new table format is one module and one registry line.

``ParquetFolderStore`` below is the whole of a read-only format: a folder of Parquet files is
a table (its version: how many files it holds). Registered, it is found by the catalog, read
by the SDK and by SQL (joins with Delta tables, EXPLAIN), and refused for every write — with no
change anywhere else in MatrixOS.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import matrixos as mx
from matrixos.errors import NotSupported, TableNotFound, VersionNotFound
from matrixos.storage import tablestore
from matrixos.storage.tablestore import TableStore, register_format, store_class


class ParquetFolderStore(TableStore):
    """A folder of ``*.parquet`` files, read-only; version n = the first n+1 files by name."""

    format = "parquet-folder"
    writable = False

    def __init__(self, location: str, name: str) -> None:
        self.location = location
        self.label = f"table {name}"

    @classmethod
    def configured(cls, location, warehouse, settings, *, name, properties) -> ParquetFolderStore:
        return cls(location, name)

    @classmethod
    def detect(cls, location: str, fs: Any) -> bool:
        return Path(location).is_dir() and any(Path(location).glob("*.parquet"))

    def _files(self) -> list[str]:
        return sorted(str(p) for p in Path(self.location).glob("*.parquet"))

    def exists(self) -> bool:
        return bool(self._files())

    def open(self, version: int | None = None, timestamp: datetime | str | None = None) -> Any:
        files = self._files()
        if not files:
            raise TableNotFound(f"no Parquet files at {self.location}")
        if version is not None:
            if not 0 <= version < len(files):
                raise VersionNotFound(f"{self.label} has versions 0 to {len(files) - 1}")
            files = files[: version + 1]
        return pads.dataset(files, format="parquet")

    def version(self, snapshot: Any = None) -> int:
        return len((snapshot or self.open()).files) - 1

    def schema(self, snapshot: Any = None) -> pa.Schema:
        return (snapshot or self.open()).schema

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        rows = [
            {"version": v, "operation": "ADD FILE", "operationParameters": {"file": Path(f).name}}
            for v, f in enumerate(self._files())
        ]
        return rows[::-1][:limit]

    def dataset(self, version: int | None = None, timestamp: Any = None) -> Any:
        return self.open(version, timestamp)

    def describe(self) -> dict[str, Any]:
        files = self._files()
        return {
            "version": len(files) - 1,
            "num_files": len(files),
            "size_bytes": sum(Path(f).stat().st_size for f in files),
        }


@pytest.fixture
def parquet_format() -> Iterator[None]:
    register_format("parquet-folder", ParquetFolderStore)  # the one registry line
    yield
    tablestore.FORMATS.pop("parquet-folder")


@pytest.fixture
def lh(tmp_path, parquet_format):
    folder = tmp_path / "events"
    folder.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "kind": ["a", "b"]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"id": [3], "kind": ["a"]}), folder / "part-1.parquet")
    with mx.connect(str(tmp_path / "wh")) as lh:
        lh.register_table("raw.events", str(folder), format="parquet-folder")
        lh.create_table("raw.kinds", [{"kind": "a", "label": "alpha"}])
        yield lh


def test_registry_finds_the_format(parquet_format) -> None:
    assert store_class("parquet-folder") is ParquetFolderStore
    with pytest.raises(NotSupported, match="'iceberg' is not supported"):
        store_class("iceberg")


def test_the_sdk_reads_it(lh) -> None:
    t = lh.table("raw.events")
    assert type(t).__name__ == "StoreTable"
    assert t.version == 1 and t.count() == 3
    assert sorted(t.to_arrow().column("id").to_pylist()) == [1, 2, 3]
    assert t.to_arrow(version=0).num_rows == 2
    assert t.history()[0]["operationParameters"] == {"file": "part-1.parquet"}
    assert t.describe()["num_files"] == 2
    assert t.schema.names == ["id", "kind"]


def test_sql_reads_joins_time_travels_and_explains_it(lh) -> None:
    q = "SELECT e.id, k.label FROM raw.events e JOIN raw.kinds k ON e.kind = k.kind ORDER BY e.id"
    assert lh.sql(q).fetchall() == [(1, "alpha"), (3, "alpha")]
    assert lh.sql("SELECT count(*) FROM raw.events VERSION AS OF 0").scalar() == 2
    plan = "\n".join(lh.sql("EXPLAIN SELECT * FROM raw.events").column("plan").to_pylist())
    assert "Scan main.raw.events (parquet-folder, version 1)" in plan


@pytest.mark.parametrize(
    "write",
    [
        "INSERT INTO raw.events VALUES (4, 'c')",
        "DELETE FROM raw.events",
        "UPDATE raw.events SET kind = 'z'",
        "OPTIMIZE raw.events",
    ],
)
def test_every_write_is_refused_and_changes_nothing(lh, write) -> None:
    with pytest.raises(NotSupported, match="parquet-folder tables are read-only"):
        lh.sql(write)
    assert lh.table("raw.events").count() == 3


def test_it_cannot_be_created_as_a_managed_table(lh) -> None:
    with pytest.raises(NotSupported, match="read-only"):
        lh.create_table("raw.new", [{"x": 1}], format="parquet-folder")
    assert "main.raw.new" not in lh.tables()


def test_grants_apply_to_it_like_any_table(lh) -> None:
    from matrixos.catalog.access import Principal
    from matrixos.errors import AccessDenied

    bob = lh.with_principal(
        Principal(
            "bob",
            frozenset(
                {"USE CATALOG ON main", "USE SCHEMA ON CATALOG main", "SELECT ON main.raw.kinds"}
            ),
        )
    )
    with pytest.raises(AccessDenied):
        bob.sql("SELECT * FROM raw.events")
