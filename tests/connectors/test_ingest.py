"""SDK ingest: files into tables, atomically."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from matrixos.catalog.access import Principal
from matrixos.errors import AccessDenied, ConfigError, IngestError, SchemaMismatch


def test_ingest_modes_and_bad_file(lh, tmp_path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv").write_text("id,name,amount\n1,a,1.5\n2,b,2.5\n")
    (src / "b.ndjson").write_text(
        "\n".join(json.dumps(r) for r in [{"id": 3, "name": "c", "amount": 3.5}])
    )
    pq.write_table(pa.table({"id": [4], "name": ["d"], "amount": [4.5]}), src / "c.parquet")

    s = lh.ingest(str(src), "raw.items")
    assert (s.files, s.rows, s.mode, s.version) == (3, 4, "create", 0)
    assert lh.sql("SELECT sum(amount) FROM raw.items").scalar() == pytest.approx(12.0)

    upd = tmp_path / "upd.csv"
    upd.write_text("id,name,amount\n1,a,10.0\n5,e,5.0\n")
    s = lh.ingest(str(upd), "raw.items", mode="merge", on=["id"])
    assert s.mode == "merge"
    rows = dict(lh.sql("SELECT id, amount FROM raw.items").fetchall())
    assert rows == {1: 10.0, 2: 2.5, 3: 3.5, 4: 4.5, 5: 5.0}

    before = lh.table("raw.items").version
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name,amount\n6,f,6.0\n7,g,oops\n")
    with pytest.raises(IngestError) as err:
        lh.ingest(str(bad), "raw.items")
    assert (err.value.path, err.value.line, err.value.col) == (str(bad), 3, 3)
    assert lh.table("raw.items").version == before
    assert lh.sql("SELECT count(*) FROM raw.items").scalar() == 5

    s = lh.ingest(str(upd), "raw.items", mode="overwrite")
    assert lh.sql("SELECT count(*) FROM raw.items").scalar() == 2


def test_ingest_new_column_needs_evolve(lh, tmp_path) -> None:
    (tmp_path / "a.csv").write_text("id\n1\n")
    (tmp_path / "b.csv").write_text("id,extra\n2,x\n")
    lh.ingest(str(tmp_path / "a.csv"), "raw.e")
    with pytest.raises(SchemaMismatch, match="extra"):
        lh.ingest(str(tmp_path / "b.csv"), "raw.e")
    lh.ingest(str(tmp_path / "b.csv"), "raw.e", evolve=True)
    assert sorted(lh.sql("SELECT id, extra FROM raw.e").fetchall()) == [(1, None), (2, "x")]


def test_ingest_unknown_format_names_the_valid_ones(lh, tmp_path) -> None:
    (tmp_path / "a.txt").write_text('{"id": 1}\n')
    with pytest.raises(ConfigError, match=r"'bogus'.*csv, tsv, json, ndjson, parquet") as err:
        lh.ingest(str(tmp_path / "a.txt"), "raw.f", format="bogus")
    assert err.value.hint is not None and ".jsonl" in err.value.hint
    assert lh.tables("raw") == []
    # An alias, in any case, names a real format: the same file reads as NDJSON.
    assert lh.ingest(str(tmp_path / "a.txt"), "raw.f", format="JSONL").rows == 1


def test_ingest_without_modify_is_refused_and_changes_nothing(lh, tmp_path) -> None:
    (tmp_path / "a.csv").write_text("id,name\n1,a\n2,b\n")
    lh.ingest(str(tmp_path / "a.csv"), "raw.items")
    version = lh.table("raw.items").version
    reader = lh.with_principal(
        Principal(
            "bob",
            frozenset(
                {"USE CATALOG ON main", "USE SCHEMA ON CATALOG main", "SELECT ON main.raw.*"}
            ),
        )
    )
    (tmp_path / "b.csv").write_text("id,name\n3,c\n")
    for mode in ("append", "overwrite", "merge"):
        with pytest.raises(AccessDenied, match=r"bob has no MODIFY privilege on main\.raw\.items"):
            reader.ingest(str(tmp_path / "b.csv"), "raw.items", mode=mode, on=["id"])
    # Refused before any file is read: a missing path is not what it reports.
    with pytest.raises(AccessDenied):
        reader.ingest(str(tmp_path / "missing.csv"), "raw.items")
    assert lh.table("raw.items").version == version
    assert sorted(lh.sql("SELECT id FROM raw.items").fetchall()) == [(1,), (2,)]
    # MODIFY alone (no SELECT) is enough to append, as for Table.append.
    writer = lh.with_principal(
        Principal(
            "wendy",
            frozenset(
                {"USE CATALOG ON main", "USE SCHEMA ON CATALOG main", "MODIFY ON main.raw.items"}
            ),
        )
    )
    s = writer.ingest(str(tmp_path / "b.csv"), "raw.items")
    assert (s.mode, s.rows, s.version) == ("append", 1, version + 1)
    assert lh.table("raw.items").version == version + 1


def test_ingest_into_a_new_table_needs_create_and_makes_an_owner(lh, tmp_path) -> None:
    (tmp_path / "a.csv").write_text("id\n1\n2\n")
    carol = lh.with_principal(
        Principal(
            "carol",
            frozenset({"USE CATALOG ON main", "USE SCHEMA ON CATALOG main", "CREATE ON main.raw"}),
        )
    )
    s = carol.ingest(str(tmp_path / "a.csv"), "raw.x")
    assert (s.mode, s.rows) == ("create", 2)
    assert lh.table("raw.x").info.owner == "carol"
    # The owner may write its table without any other grant.
    assert carol.ingest(str(tmp_path / "a.csv"), "raw.x").version == s.version + 1
    assert lh.sql("SELECT count(*) FROM raw.x").scalar() == 4
    with pytest.raises(AccessDenied, match=r"carol has no CREATE privilege on main\.other"):
        carol.ingest(str(tmp_path / "a.csv"), "other.y")
    assert lh.tables("other") == []
    assert "main.other" not in lh.schemas()


def test_ingest_embeds_rows_of_a_table_with_an_embedding(lh, tmp_path) -> None:
    t = lh.create_table("kb.docs", [{"id": 1, "text": "vacuum removes old files"}], format="lance")
    t.set_embedding("text", embedder="hash")
    (tmp_path / "more.csv").write_text("id,text\n2,optimize compacts small files\n")
    lh.ingest(str(tmp_path / "more.csv"), "kb.docs")
    rows = {r["id"]: r["vector"] for r in lh.table("kb.docs").to_arrow().to_pylist()}
    assert rows[2] is not None and len(rows[2]) == 64
    hits = lh.table("kb.docs").search("optimize compacts small files", k=1)
    assert hits.column("id").to_pylist() == [2]


def test_ingest_without_paths_is_an_ingest_error(lh) -> None:
    with pytest.raises(IngestError, match="no paths given"):
        lh.ingest([], "raw.none")
    assert lh.tables() == []
