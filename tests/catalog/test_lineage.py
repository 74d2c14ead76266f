"""Lineage: every kind of write records what it read in ``system.lineage.events``
(OpenLineage-shaped), and ``lh.lineage`` / ``matrixos lineage`` / ``GET /api/2.0/lineage``
walk it upstream and downstream as the asking principal may see it (the HTTP route:
``tests/server/test_lineage_http.py``). Real Delta and Lance tables, real job processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.lineage import HIDDEN, LINEAGE_TABLE, LineageLog
from matrixos.cli import app
from matrixos.errors import AccessDenied, ConfigError, TableNotFound
from matrixos.jobs import open_jobs
from matrixos.jobs.runner import LocalPool


@pytest.fixture
def lh(tmp_path: Path) -> Iterator[mx.Lakehouse]:
    with mx.connect(str(tmp_path / "wh")) as session:
        yield session


def _events(lh: mx.Lakehouse) -> list[dict[str, Any]]:
    return LineageLog.of(lh.service).events()


def _pairs(ev: dict[str, Any], side: str) -> list[tuple[str, int | None]]:
    return [(d["name"], d["version"]) for d in ev[side]]


def test_sql_ctas_insert_select_and_merge_record_inputs_with_versions(lh: mx.Lakehouse) -> None:
    lh.create_table("s.a", [{"id": 1, "v": 10}])
    lh.table("s.a").append([{"id": 2, "v": 20}])  # rows from memory: no inputs, no event
    lh.sql("CREATE TABLE s.b AS SELECT id, v FROM s.a VERSION AS OF 0")
    lh.sql("INSERT INTO s.b SELECT a.id, a.v * 2 FROM s.a AS a JOIN s.b USING (id)")
    lh.sql("INSERT INTO s.b VALUES (9, 90)")  # reads nothing: not recorded
    lh.sql(
        "MERGE INTO s.b USING (SELECT * FROM s.a) AS src ON s.b.id = src.id "
        "WHEN MATCHED THEN UPDATE SET v = src.v WHEN NOT MATCHED THEN INSERT *"
    )
    events = _events(lh)
    assert [e["job_name"] for e in events] == ["sql", "sql", "sql"]
    ctas, insert, merge = events
    assert _pairs(ctas, "inputs") == [("main.s.a", 0)]
    assert _pairs(ctas, "outputs") == [("main.s.b", 0)]
    assert sorted(_pairs(insert, "inputs")) == [("main.s.a", 1), ("main.s.b", 0)]
    assert _pairs(insert, "outputs") == [("main.s.b", 1)]
    assert _pairs(merge, "inputs") == [("main.s.a", 1)]
    assert _pairs(merge, "outputs") == [("main.s.b", 3)]
    assert lh.table("s.b").version == 3
    # the principal and the statement as written, its literals redacted
    assert {e["principal"] for e in events} == {lh.principal.name}
    assert insert["statement"].startswith("INSERT INTO s.b SELECT a.id, a.v * ? FROM s.a")
    # the OpenLineage event
    ol = json.loads(merge["event"])
    assert ol["eventType"] == "COMPLETE" and ol["run"]["runId"] == merge["run_id"]
    assert ol["job"] == {
        "namespace": "matrixos",
        "name": "sql",
        "facets": {"sql": {"query": merge["statement"]}},
    }
    assert ol["inputs"] == [
        {
            "namespace": "matrixos",
            "name": "main.s.a",
            "facets": {"version": {"datasetVersion": "1"}},
        }
    ]
    assert ol["outputs"][0]["facets"]["version"] == {"datasetVersion": "3"}
    # SQL reads the events like any table (admins)
    rows = lh.sql(f"SELECT count(*) FROM {LINEAGE_TABLE}").fetchall()
    assert rows == [(3,)]


def test_failed_write_records_nothing(lh: mx.Lakehouse) -> None:
    lh.create_table("s.a", [{"id": 1}])
    with pytest.raises(mx.errors.MatrixOSError):
        lh.sql("INSERT INTO s.a SELECT 'not a number' FROM s.a")
    assert _events(lh) == []


def test_map_batches_records_source_version_and_run(lh: mx.Lakehouse) -> None:
    lh.create_table("s.src", [{"x": i} for i in range(10)])
    summary = lh.map_batches("s.src", lambda b: b, output="s.out", batch_size=3, commit_batches=1)
    (ev,) = _events(lh)
    assert ev["job_name"] == "map_batches" and ev["run_id"] == summary.run
    assert _pairs(ev, "inputs") == [("main.s.src", 0)]
    assert _pairs(ev, "outputs") == [("main.s.out", lh.table("s.out").version)]
    assert lh.table("s.out").version > 0  # several commits: the event names the last


def test_ingest_records_its_files(lh: mx.Lakehouse, tmp_path: Path) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text("id,v\n1,2\n")
    lh.ingest(str(csv), "raw.rows")
    (ev,) = _events(lh)
    assert ev["job_name"] == "ingest"
    assert ev["inputs"] == [{"namespace": "file", "name": str(csv), "version": None}]
    assert _pairs(ev, "outputs") == [("main.raw.rows", 0)]
    tree = str(lh.lineage("raw.rows"))
    assert str(csv) in tree and "ingest" in tree


def test_rag_index_records_a_volume_or_table_source(lh: mx.Lakehouse) -> None:
    vol = lh.create_volume("raw.docs")
    vol.put(b"# Cats\nCats sleep a lot.", "a.md")
    lh.rag.index(source="raw.docs", table="kb.chunks", embedder="hash", build_indexes=False)
    lh.create_table("raw.notes", [{"uri": "n1", "text": "Dogs bark."}])
    lh.rag.index(source="raw.notes", table="kb.notes", embedder="hash", build_indexes=False)
    first, second = _events(lh)
    assert first["job_name"] == "rag.index"
    assert first["inputs"] == [
        {"namespace": "matrixos.volume", "name": "main.raw.docs", "version": None}
    ]
    assert _pairs(first, "outputs") == [("main.kb.chunks", lh.table("kb.chunks").version)]
    assert _pairs(second, "inputs") == [("main.raw.notes", 0)]
    down = lh.lineage("raw.notes", direction="down")
    assert [(e.target.name, e.job) for e in down.edges] == [("main.kb.notes", "rag.index")]


def _copy_job(warehouse: str) -> int:
    """A Python job: reads a table with the SDK, appends the rows to another."""
    with mx.connect(warehouse) as lh:
        rows = lh.table("s.t").to_arrow()
        lh.table("s.copy").append(rows)
        return rows.num_rows


def test_a_job_is_the_run_of_what_it_writes(lh: mx.Lakehouse) -> None:
    lh.create_table("s.t", [{"v": 1}, {"v": 2}])
    lh.create_table("s.copy", [{"v": 0}])
    svc = open_jobs(
        lh.service,
        ray=False,
        pool=LocalPool(cpus=1, gpus=0),
        connect={"warehouse": lh.settings.warehouse, "compute": "local"},
        tick_s=0.2,
    )
    try:
        jobs = svc.for_principal(lh.principal)
        sql = jobs.submit("CREATE TABLE s.total AS SELECT sum(v) AS total FROM s.t")
        assert sql.wait(120) == "SUCCEEDED", sql.logs()
        py = jobs.submit(_copy_job, lh.settings.warehouse)
        assert py.wait(120) == "SUCCEEDED", py.logs()
    finally:
        svc.close()
    first, second = _events(lh)
    # a statement of a SQL job: the job is its run
    assert first["job_name"] == "sql" and first["run_id"] == sql.id and first["job_id"] == sql.id
    assert _pairs(first, "inputs") == [("main.s.t", 0)]
    assert _pairs(first, "outputs") == [("main.s.total", 0)]
    assert json.loads(first["event"])["run"]["facets"]["matrixos"]["jobId"] == sql.id
    # a Python job's append: what the job read before it is the input
    assert second["job_name"] == "job" and second["run_id"] == py.id
    assert _pairs(second, "inputs") == [("main.s.t", 0)]
    assert _pairs(second, "outputs") == [("main.s.copy", 1)]


def _chain(lh: mx.Lakehouse) -> None:
    lh.create_table("s.a", [{"id": 1}])
    lh.sql("CREATE TABLE s.b AS SELECT * FROM s.a")
    lh.sql("CREATE TABLE s.c AS SELECT * FROM s.b")
    lh.sql("CREATE TABLE s.d AS SELECT * FROM s.c")


def test_graph_directions_depth_and_tree(lh: mx.Lakehouse) -> None:
    _chain(lh)
    up = lh.lineage("s.c", direction="up")
    assert [(e.depth, e.source.name, e.target.name) for e in up.edges] == [
        (1, "main.s.b", "main.s.c"),
        (2, "main.s.a", "main.s.b"),
    ]
    assert lh.lineage("s.c", direction="up", depth=1).edges == up.edges[:1]
    both = lh.lineage("s.c")
    assert [(e.direction, e.target.name) for e in both.downstream] == [("down", "main.s.d")]
    text = str(both)
    assert "main.s.a @ v0" in text and "main.s.d @ v0" in text
    assert text.index("upstream") < text.index("main.s.a") < text.index("downstream")
    with pytest.raises(ConfigError, match="direction"):
        lh.lineage("s.c", direction="sideways")  # type: ignore[arg-type]


def test_grants_hide_unreadable_tables(lh: mx.Lakehouse) -> None:
    _chain(lh)
    accounts = Accounts(lh.catalog)
    accounts.create("alice")
    accounts.grant("USE CATALOG", "main", "alice")
    accounts.grant("USE SCHEMA", "main.s", "alice")
    for t in ("main.s.c", "main.s.d"):
        accounts.grant("SELECT", t, "alice")
    alice = lh.with_principal(accounts.principal("alice"))
    graph = alice.lineage("s.c")
    names = {e.source.name for e in graph.edges} | {e.target.name for e in graph.edges}
    assert names == {HIDDEN, "main.s.c", "main.s.d"}
    hidden = [e.source for e in graph.upstream]
    assert all(d.name == HIDDEN and d.version is None for d in hidden)
    assert "main.s.a" not in str(graph) and "main.s.b" not in str(graph)
    with pytest.raises(AccessDenied):
        alice.lineage("s.a")  # may not read it: no lineage either


def test_cli_prints_the_tree_and_json(lh: mx.Lakehouse) -> None:
    _chain(lh)
    wh = lh.settings.warehouse
    runner = CliRunner()
    out = runner.invoke(app, ["--warehouse", wh, "lineage", "s.b"])
    assert out.exit_code == 0, out.output
    assert "main.s.a @ v0" in out.output and "main.s.c @ v0" in out.output
    out = runner.invoke(app, ["--warehouse", wh, "lineage", "s.b", "-d", "down", "-f", "json"])
    assert out.exit_code == 0, out.output
    body = json.loads(out.output)
    assert [(e["depth"], e["target"]["name"]) for e in body["edges"]] == [
        (1, "main.s.c"),
        (2, "main.s.d"),
    ]
    out = runner.invoke(app, ["--warehouse", wh, "lineage", "s.nope"])
    assert isinstance(out.exception, TableNotFound)  # main() prints it as "error: …"


def test_media_ingest_records_its_folder(lh: mx.Lakehouse, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "caption.txt").write_text("a cat on a mat")
    lh.ingest_media(str(photos), "media.photos")
    (ev,) = _events(lh)
    assert ev["job_name"] == "ingest"
    assert ev["inputs"] == [{"namespace": "file", "name": str(photos), "version": None}]
    assert _pairs(ev, "outputs") == [("main.media.photos", lh.table("media.photos").version)]
