"""The SQL sandbox: user SQL reads only catalog tables, never files, settings or extensions.

Two layers are tested separately, because either alone must hold:

1. ``lh.sql`` refuses every escape with ``AccessDenied`` (a ``MatrixOSError``) that names what
   is not allowed, and nothing changes on disk (no file written, no table created).
2. The engine's DuckDB connection itself is locked: even raw SQL on it cannot read outside the
   warehouse, change a setting or install/load an extension.

Tested with DuckDB 2.0.0 (``duckdb.__version__``). Re-test on every DuckDB upgrade: new
versions add table functions, settings and statements, and the layer-2 assertions pin the exact
exception types DuckDB raises today.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.errors import AccessDenied, MatrixOSError, SQLError, TableNotFound

# Every refusal message says that something is refused, not just that something failed.
REFUSED = re.compile(r"not allowed|may (read|name) only", re.I)
# The DuckDB release whose statements, functions and settings this file was reviewed against.
REVIEWED_DUCKDB = "2.0"


def test_duckdb_is_the_reviewed_release() -> None:
    assert duckdb.__version__.startswith(REVIEWED_DUCKDB + "."), (
        f"DuckDB is now {duckdb.__version__}: review engine/sandbox.py for new table functions, "
        "settings and statements, re-run this file, then update REVIEWED_DUCKDB"
    )


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $HOME: where DuckDB would install extensions and persist secrets."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


@pytest.fixture
def sandbox_lh(tmp_path: Path, home: Path) -> Iterator[mx.Lakehouse]:
    with mx.connect(str(tmp_path / "wh")) as lake:
        lake.create_table("t", pa.table({"id": [1, 2, 3], "s": ["a", "b", "c"]}))
        yield lake


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` (the catalog database aside) with its size."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if not name.startswith("_catalog.db"):
                out[str(path.relative_to(root))] = path.stat().st_size
    return out


@dataclass
class Box:
    """A lakehouse shared by the tests that only try (and fail) to escape from it."""

    root: Path  # holds wh/ (the warehouse) and home/
    home: Path
    lh: mx.Lakehouse


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    root = tmp_path_factory.mktemp("sandbox")
    (root / "home").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(root / "home"))
        with mx.connect(str(root / "wh")) as lake:
            lake.create_table("t", pa.table({"id": [1, 2, 3], "s": ["a", "b", "c"]}))
            yield Box(root, root / "home", lake)


@pytest.fixture
def untouched(box: Box, tmp_path: Path) -> Iterator[None]:
    """Asserts after the test that no file appeared, vanished or changed, and no table."""
    before, tables = (tree(box.root), tree(tmp_path)), box.lh.tables()
    rows = box.lh.sql("SELECT * FROM t ORDER BY id").fetchall()
    yield
    assert (tree(box.root), tree(tmp_path)) == before
    assert box.lh.tables() == tables
    assert box.lh.sql("SELECT * FROM t ORDER BY id").fetchall() == rows


def refused(sandbox_lh: mx.Lakehouse, sql: str, dialect: str | None = None) -> AccessDenied:
    with pytest.raises(AccessDenied) as info:
        sandbox_lh.sql(sql, dialect=dialect)
    err = info.value
    assert isinstance(err, MatrixOSError)
    assert REFUSED.search(str(err)), str(err)
    return err


# ------------------------------------------------------------------------ layer 1: lh.sql
# (sql, dialect, what the message must name)
ESCAPES = [
    ("SELECT * FROM read_csv('/etc/passwd')", None, "read_csv()"),
    ("SELECT * FROM read_csv(['/etc/passwd', '/etc/hosts'])", None, "read_csv()"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", None, "read_csv_auto()"),
    ("SELECT * FROM read_text('/etc/passwd')", None, "read_text()"),
    ("SELECT * FROM read_blob('/etc/passwd')", None, "read_blob()"),
    ("SELECT * FROM read_json('/etc/passwd')", None, "read_json()"),
    ("SELECT * FROM sniff_csv('/etc/passwd')", None, "sniff_csv()"),
    ("SELECT * FROM glob('/etc/*')", None, "glob()"),
    ("SELECT * FROM '/etc/passwd'", None, "/etc/passwd"),
    ("FROM '/etc/passwd'", None, "/etc/passwd"),
    ('SELECT * FROM "/etc/passwd"', None, "/etc/passwd"),
    ('SELECT * FROM "/etc/passwd"', "postgres", "/etc/passwd"),
    ("SELECT * FROM `/etc/passwd`", "mysql", "/etc/passwd"),
    ("SELECT * FROM `/etc/passwd`", "bigquery", "/etc/passwd"),
    ("SELECT * FROM csv.`/etc/passwd`", "databricks", "/etc/passwd"),
    ("SELECT * FROM parquet.`/etc/passwd`", "spark", "/etc/passwd"),
    ("SELECT * FROM 's3://bucket/key.parquet'", None, "s3://bucket/key.parquet"),
    ("SELECT * FROM 'https://example.com/x.csv'", None, "https://example.com/x.csv"),
    ("SELECT * FROM 'data.csv'", None, "data.csv"),
    ('SELECT * FROM "../x"', None, "../x"),
    ('SELECT * FROM "a/b"', None, "a/b"),
    ('SELECT * FROM main."default"."../../etc"', None, "../../etc"),
    ('SELECT * FROM "main".".."."t"', None, ".."),
    ('SELECT * FROM "~"', None, "~"),
    ("SELECT * FROM parquet_metadata('/etc/passwd')", None, "parquet_metadata()"),
    ("SELECT * FROM parquet_schema('/etc/passwd')", None, "parquet_schema()"),
    ("SELECT read_text('/etc/passwd')", None, "read_text()"),
    ("SELECT current_setting('threads')", None, "current_setting()"),
    ("SELECT getenv('HOME')", None, "getenv()"),
    ("SELECT * FROM duckdb_settings()", None, "duckdb_settings()"),
    ("SELECT * FROM duckdb_extensions()", None, "duckdb_extensions()"),
    ("SELECT * FROM duckdb_secrets()", None, "duckdb_secrets()"),
    ("SELECT * FROM query('select 1')", None, "query()"),
    ("SELECT * FROM query_table('t')", None, "query_table()"),
    ("SELECT * FROM pragma_version()", None, "pragma_version()"),
    ("SELECT * FROM sqlite_scan('/tmp/x.db', 't')", None, "sqlite_scan()"),
    ("SELECT * FROM iceberg_scan('/tmp/x')", None, "iceberg_scan()"),
    ("SELECT * FROM delta_scan('/tmp/x')", None, "delta_scan()"),
    ("INSTALL httpfs", None, "INSTALL"),
    ("FORCE INSTALL httpfs", None, "INSTALL"),
    ("LOAD httpfs", None, "LOAD"),
    ("SET enable_external_access = true", None, "SET"),
    ("SET threads = 1", None, "SET"),
    ("SET GLOBAL lock_configuration = false", None, "SET"),
    ("RESET allowed_directories", None, "RESET"),
    ("PRAGMA version", None, "PRAGMA"),
    ("PRAGMA threads = 1", None, "PRAGMA"),
    ("CALL pragma_version()", None, "CALL"),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')", None, "CREATE SECRET"),
    ("CREATE MACRO m(a) AS a + 1", None, "CREATE MACRO"),
    ("CREATE VIEW v AS SELECT * FROM t", None, "CREATE VIEW"),
    ("CREATE FUNCTION f(a) AS a + 1", None, "CREATE FUNCTION"),
    ("USE memory", None, "USE"),
    ("DETACH memory", None, "DETACH"),
    ("CHECKPOINT", None, "CHECKPOINT"),
    ("SUMMARIZE t", None, "SUMMARIZE"),
    ("IMPORT DATABASE '/tmp/x'", None, "IMPORT"),
    # in every position a table or expression can take
    ("WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x", None, "read_csv()"),
    ("SELECT * FROM t, LATERAL read_csv('/etc/passwd')", None, "read_csv()"),
    (
        "SELECT * FROM t WHERE s IN (SELECT content FROM read_text('/etc/passwd'))",
        None,
        "read_text",
    ),
    ("SELECT (SELECT content FROM read_text('/etc/passwd'))", None, "read_text()"),
    (
        "SELECT * FROM t UNION ALL SELECT 1, content FROM read_text('/etc/passwd')",
        None,
        "read_text",
    ),
    ("SELECT list_transform([1], x -> getenv('HOME'))", None, "getenv()"),
    ("SELECT * FROM t WHERE s = 'a' AND read_blob('/etc/passwd') IS NULL", None, "read_blob()"),
    ("SELECT * FROM t TIMESTAMP AS OF getenv('X')", None, "getenv()"),
    ("EXPLAIN SELECT * FROM read_csv('/etc/passwd')", None, "read_csv()"),
    ("SELECT 1; SELECT * FROM read_csv('/etc/passwd')", None, "read_csv()"),
    # DML and DDL carry queries and expressions too
    ("INSERT INTO t SELECT 1, content FROM read_text('/etc/passwd')", None, "read_text()"),
    ("INSERT INTO t VALUES (4, getenv('HOME'))", None, "getenv()"),
    ("CREATE TABLE leak AS SELECT * FROM read_text('/etc/passwd')", None, "read_text()"),
    ("UPDATE t SET s = getenv('HOME') WHERE id = 1", None, "getenv()"),
    ("UPDATE t SET s = current_setting('threads')", None, "current_setting()"),
    ("DELETE FROM t WHERE s = getenv('HOME')", None, "getenv()"),
    (
        "MERGE INTO t USING (SELECT 1 AS id, content AS s FROM read_text('/etc/passwd')) src "
        "ON t.id = src.id WHEN MATCHED THEN UPDATE SET s = src.s",
        None,
        "read_text()",
    ),
    # path-like names are refused in every statement, not only in queries
    ('CREATE TABLE "../x" (a INT)', None, "../x"),
    ('CREATE TABLE "a/b".t (a INT)', None, "a/b"),
    ('CREATE SCHEMA "../x"', None, "../x"),
    ('INSERT INTO "../../x" VALUES (1)', None, "../../x"),
    ('DROP TABLE "../x"', None, "../x"),
    ('DROP SCHEMA "/tmp"', None, "/tmp"),
    ("DESCRIBE '/etc/passwd'", None, "/etc/passwd"),
    ('OPTIMIZE "../x"', None, "../x"),
    ('VACUUM "/tmp/x"', None, "/tmp/x"),
]


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(("sql", "dialect", "what"), ESCAPES)
def test_escape_is_refused(box: Box, sql: str, dialect: str | None, what: str) -> None:
    err = refused(box.lh, sql, dialect)
    assert what.lower() in str(err).lower(), str(err)
    assert err.sqlstate == "42501"


@pytest.mark.usefixtures("untouched")
def test_read_parquet_of_a_warehouse_file_bypassing_the_catalog_is_refused(box: Box) -> None:
    sandbox_lh = box.lh
    files = [p for p in Path(sandbox_lh.table("t").location).glob("*.parquet")]
    assert files  # the table really has a file that layer 2 alone would let DuckDB read
    for sql in (
        f"SELECT * FROM read_parquet('{files[0]}')",
        f"SELECT * FROM '{files[0]}'",
        f"SELECT * FROM parquet_metadata('{files[0]}')",
        f"SELECT * FROM read_parquet('{sandbox_lh.table('t').location}/*.parquet')",
    ):
        err = refused(sandbox_lh, sql)
        assert str(files[0].parent) in str(err) or "parquet" in str(err).lower()


# (statement template, file or folder it would create) — {out} is a folder outside the
# warehouse, {wh} the warehouse itself (which the locked connection can write, so only
# layer 1 stands between these and overwriting table files).
WRITES = [
    ("COPY t TO '{out}/x.csv'", "{out}/x.csv", "COPY"),
    ("COPY t TO '{wh}/x.csv' (FORMAT csv)", "{wh}/x.csv", "COPY"),
    ("COPY (SELECT 1) TO '{out}/x.csv'", "{out}/x.csv", "COPY"),
    (
        "COPY (SELECT * FROM t) TO '{wh}/main/default/t/evil.parquet'",
        "{wh}/main/default/t/evil.parquet",
        "COPY",
    ),
    ("EXPORT DATABASE '{out}/export'", "{out}/export", "EXPORT"),
    ("EXPORT DATABASE '{wh}/export' (FORMAT parquet)", "{wh}/export", "EXPORT"),
    ("ATTACH '{out}/x.db'", "{out}/x.db", "ATTACH"),
    ("ATTACH '{wh}/x.db' AS x", "{wh}/x.db", "ATTACH"),
    ("CREATE TABLE located (a INT) LOCATION '{out}/located'", "{out}/located", "LOCATION"),
    (
        "CREATE TABLE located USING delta LOCATION '{wh}/loc' AS SELECT 1 AS a",
        "{wh}/loc",
        "LOCATION",
    ),
    ("CREATE TABLE located (a INT) WITH (location = '{out}/located')", "{out}/located", "LOCATION"),
    ("INSTALL httpfs", "{home}/.duckdb", "INSTALL"),
    (
        "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')",
        "{home}/.duckdb",
        "CREATE SECRET",
    ),
]


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(("template", "target", "what"), WRITES)
def test_writing_statement_is_refused_and_writes_nothing(
    box: Box, tmp_path: Path, template: str, target: str, what: str
) -> None:
    places = {"out": tmp_path, "wh": box.root / "wh", "home": box.home}
    err = refused(box.lh, template.format(**places))
    assert what.lower() in str(err).lower(), str(err)
    assert not Path(target.format(**places)).exists()


def test_python_replacement_scan_does_not_read_caller_variables(sandbox_lh: mx.Lakehouse) -> None:
    secret_df = pd.DataFrame({"secret": ["hunter2"]})  # what DuckDB would find by name
    secret_arrow = pa.table({"secret": ["hunter2"]})
    for name in ("secret_df", "secret_arrow"):
        with pytest.raises(TableNotFound) as info:
            sandbox_lh.sql(f"SELECT * FROM {name}")
        assert isinstance(info.value, LookupError)
        assert "hunter2" not in str(info.value)
    del secret_df, secret_arrow


def test_duckdb_internal_schemas_are_not_reachable(sandbox_lh: mx.Lakehouse) -> None:
    for sql in (
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM duckdb_tables",
        "SELECT * FROM pg_catalog.pg_settings",
        "SELECT * FROM system.main.duckdb_settings",
        "SELECT * FROM temp.main.t",
    ):
        with pytest.raises(TableNotFound):
            sandbox_lh.sql(sql)


def test_refusal_comes_before_any_statement_runs(sandbox_lh: mx.Lakehouse) -> None:
    # A script is checked as it runs: statements before the escape take effect, the escape
    # itself and anything after it do not.
    refused(
        sandbox_lh,
        "INSERT INTO t VALUES (4, 'd'); COPY t TO '/tmp/x.csv'; INSERT INTO t VALUES (5, 'e')",
    )
    assert sandbox_lh.sql("SELECT max(id) FROM t").scalar() == 4


def test_table_named_like_an_internal_view_is_just_a_table(sandbox_lh: mx.Lakehouse) -> None:
    # The engine's own stand-ins for tables are named __mx_…; a user table of such a name must
    # neither be mistaken for one of them nor break the query.
    sandbox_lh.sql("CREATE TABLE __mx_scan_1 (a INT)")
    sandbox_lh.sql("INSERT INTO __mx_scan_1 VALUES (42)")
    assert sandbox_lh.sql("SELECT a FROM __mx_scan_1").fetchall() == [(42,)]
    assert sandbox_lh.sql("SELECT t.id, x.a FROM t JOIN __mx_scan_1 x ON t.id = 1").fetchall() == [
        (1, 42)
    ]


def test_allowed_sql_still_runs(sandbox_lh: mx.Lakehouse) -> None:
    # The sandbox is not a blanket refusal: ordinary functions that happen to share a prefix
    # or look like paths in string literals are fine.
    row = sandbox_lh.sql(
        "SELECT count(*), string_agg(s, '/' ORDER BY s), '/etc/passwd' AS p, "
        "regexp_replace('a/b', '/', '.') AS r FROM t"
    ).fetchone()
    assert row == (3, "a/b/c", "/etc/passwd", "a.b")


# --------------------------------------------------------- layer 2: the locked connection
@pytest.fixture
def raw(sandbox_lh: mx.Lakehouse) -> Iterator[duckdb.DuckDBPyConnection]:
    cur = sandbox_lh._engine.cursor()
    yield cur
    cur.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_blob('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        "ATTACH '/etc/passwd' AS x",
    ],
)
def test_raw_connection_cannot_read_outside_the_warehouse(
    raw: duckdb.DuckDBPyConnection, sql: str
) -> None:
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        raw.execute(sql).fetchall()


def test_raw_connection_is_confined_to_the_warehouse_folder_exactly(
    raw: duckdb.DuckDBPyConnection, sandbox_lh: mx.Lakehouse, tmp_path: Path
) -> None:
    wh = tmp_path / "wh"
    # Inside the warehouse the connection can read (that is how tables are scanned) ...
    assert raw.execute(f"SELECT count(*) FROM glob('{wh}/**/*.parquet')").fetchone() == (1,)
    # ... but not a sibling whose name merely starts the same, nor ``..``, nor a symlink out.
    (tmp_path / "wh2").mkdir()
    (tmp_path / "wh2" / "secret.csv").write_text("a\n1\n")
    (tmp_path / "secret.csv").write_text("a\n1\n")
    (wh / "link.csv").symlink_to(tmp_path / "secret.csv")
    (wh / "up").symlink_to(tmp_path)
    with pytest.raises(duckdb.PermissionException):
        raw.execute(f"SELECT * FROM '{tmp_path}/secret.csv'").fetchall()
    for path in (
        tmp_path / "wh2" / "secret.csv",
        f"{wh}/../secret.csv",
        f"{wh}/main/../../secret.csv",
        f"file://{wh}/../secret.csv",
        wh / "link.csv",
        wh / "up" / "secret.csv",
    ):
        with pytest.raises(duckdb.PermissionException):
            raw.execute(f"SELECT * FROM read_csv('{path}')").fetchall()
    with pytest.raises(duckdb.PermissionException):
        raw.execute(f"COPY (SELECT 1) TO '{wh}/../out.csv'")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SET threads = 1",
        "SET memory_limit = '1GB'",
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
        "SET python_enable_replacements = true",
        "SET autoinstall_known_extensions = true",
        "SET autoload_known_extensions = true",
        "SET allow_community_extensions = true",
        "SET lock_configuration = false",
        "SET GLOBAL threads = 1",
        "RESET threads",
        "RESET lock_configuration",
        "PRAGMA threads = 1",
    ],
)
def test_raw_connection_cannot_change_settings(raw: duckdb.DuckDBPyConnection, sql: str) -> None:
    before = raw.execute("SELECT name, value FROM duckdb_settings() ORDER BY name").fetchall()
    with pytest.raises(duckdb.InvalidInputException, match="configuration has been locked"):
        raw.execute(sql)
    after = raw.execute("SELECT name, value FROM duckdb_settings() ORDER BY name").fetchall()
    assert after == before
    settings = dict(after)
    assert settings["enable_external_access"] == "false"
    assert settings["lock_configuration"] == "true"
    assert settings["autoinstall_known_extensions"] == "false"
    assert settings["autoload_known_extensions"] == "false"
    # Connection-local settings must reach the per-statement cursor too.
    assert settings["python_enable_replacements"] == "false"
    assert settings["TimeZone"] == "UTC"


def test_raw_connection_allows_only_the_warehouse_and_duckdb_spill_folder(
    raw: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    row = raw.execute(
        "SELECT current_setting('allowed_directories'), current_setting('temp_directory')"
    ).fetchone()
    assert row is not None
    allowed, temp = row
    # DuckDB adds its own spill folder (``<cwd>/.tmp`` by default) to the allowed list.
    spill = os.path.abspath(temp).rstrip("/") + "/"
    assert set(allowed) <= {f"{tmp_path / 'wh'}/", spill}
    assert f"{tmp_path / 'wh'}/" in allowed


def test_every_statement_runs_in_utc_whatever_the_machine_time_zone(tmp_path: Path) -> None:
    # TimeZone is a connection-local DuckDB setting; statements run on cursors, which would
    # otherwise take the machine's zone (and the locked configuration would keep it).
    script = f"""
import pyarrow as pa, matrixos as mx
sandbox_lh = mx.connect({str(tmp_path / "wh")!r})
sandbox_lh.create_table("t", pa.table({{"ts": pa.array([0], pa.timestamp("us", "UTC"))}}))
print(sandbox_lh.sql("SELECT CAST(TIMESTAMPTZ '2024-01-01 03:00:00+00' AS DATE)::VARCHAR").scalar())
print(sandbox_lh.sql("SELECT ts FROM t").to_arrow().schema.field("ts").type.tz)
print(sandbox_lh.sql("SELECT hour(ts) FROM t").scalar())
"""
    env = {**os.environ, "TZ": "America/New_York"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "2024-01-01"
    assert out[1] in ("UTC", "Etc/UTC")
    assert out[2] == "0"


def test_raw_connection_cannot_install_or_load_extensions(
    raw: duckdb.DuckDBPyConnection, home: Path
) -> None:
    with pytest.raises(duckdb.PermissionException):
        raw.execute("INSTALL httpfs")
    with pytest.raises(duckdb.PermissionException):
        raw.execute("FORCE INSTALL httpfs")
    with pytest.raises(duckdb.PermissionException, match="disabled through configuration"):
        raw.execute("LOAD httpfs")
    with pytest.raises(duckdb.PermissionException):
        raw.execute("LOAD '/tmp/evil.duckdb_extension'")
    assert not (home / ".duckdb").exists()


def test_raw_connection_cannot_persist_secrets_or_write_files(
    raw: duckdb.DuckDBPyConnection, home: Path, tmp_path: Path
) -> None:
    with pytest.raises(duckdb.PermissionException):
        raw.execute("CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')")
    with pytest.raises(duckdb.PermissionException):
        raw.execute(f"COPY (SELECT 1) TO '{tmp_path}/x.csv'")
    with pytest.raises(duckdb.PermissionException):
        raw.execute(f"EXPORT DATABASE '{tmp_path}/export'")
    with pytest.raises(duckdb.PermissionException):
        raw.execute(f"ATTACH '{tmp_path}/x.db'")
    assert not (home / ".duckdb").exists()
    assert not (tmp_path / "x.csv").exists()
    assert not (tmp_path / "export").exists()
    assert not (tmp_path / "x.db").exists()


def test_raw_connection_has_no_python_replacement_scans(raw: duckdb.DuckDBPyConnection) -> None:
    secret_df = pd.DataFrame({"secret": ["hunter2"]})
    with pytest.raises(duckdb.CatalogException):
        raw.execute("SELECT * FROM secret_df").fetchall()
    del secret_df


def test_constant_folding_connection_has_no_file_access_at_all(
    sandbox_lh: mx.Lakehouse, tmp_path: Path
) -> None:
    # The connection that folds constants (time travel, pruning) allows no directory.
    files = list((tmp_path / "wh").rglob("*.parquet"))
    assert files
    cur = sandbox_lh._engine.planning_cursor()
    with pytest.raises(duckdb.PermissionException):
        cur.execute(f"SELECT * FROM read_parquet('{files[0]}')").fetchall()
    with pytest.raises(duckdb.InvalidInputException):
        cur.execute("SET enable_external_access = true")
    # Not even DuckDB's spill folder, which a locked connection may otherwise write.
    from matrixos.engine.sandbox import spill_directory

    assert cur.execute("SELECT current_setting('allowed_directories')").fetchone() == ([],)
    with pytest.raises(duckdb.PermissionException):
        cur.execute(f"COPY (SELECT 1) TO '{spill_directory()}/x.csv'")
    assert not Path(spill_directory(), "x.csv").exists()


def test_larger_than_memory_sort_spills_to_the_private_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With 64 MB of memory, sorting ~250 MB of strings must spill: into this user's own
    # owner-only folder, not DuckDB's default ``.tmp`` under the current directory.
    import threading
    import time

    from matrixos.engine.sandbox import locked_connection, spill_directory

    monkeypatch.chdir(tmp_path)
    con = locked_connection([], threads=2, memory_limit="64MB")
    spill = Path(spill_directory())
    assert spill.stat().st_mode & 0o777 == 0o700
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(p.name for p in spill.glob(f"duckdb_temp_{os.getpid()}_*"))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        sql = (
            "SELECT count(*), min(m) FROM (SELECT md5(range::VARCHAR) || md5((range + 1)::VARCHAR)"
            " AS m FROM range(3000000) ORDER BY m)"
        )
        ((count, first),) = con.execute(sql).fetchall()
    finally:
        done.set()
        watcher.join()
    assert count == 3_000_000 and len(first) == 64
    assert any("storage" in name for name in seen), seen
    assert not (tmp_path / ".tmp").exists()
    with pytest.raises(duckdb.Error):
        con.execute("SET temp_directory = '/tmp/elsewhere'")


# ------------------------------------- user text on the engine's other DuckDB connections
# CREATE TABLE's column names and types, and the arguments of the platform's own functions,
# once reached DuckDB as SQL on the constant-folding connection, where no check looked
# (issue 9 §2, §3). Each payload below escaped then; now each must change nothing.
def engine_objects(sandbox_lh: mx.Lakehouse) -> dict[str, list[Any]]:
    """What the engine's DuckDB connections hold besides MatrixOS's own registrations.

    (``duckdb_secrets()`` and ``duckdb_extensions()`` read folders under $HOME, which the
    locked connection may not: secrets are not listed, and extensions show as functions.)"""
    out: dict[str, list[Any]] = {}
    engine = sandbox_lh._engine
    for name, cur in (("consts", engine.planning_cursor()), ("main", engine.cursor())):
        try:
            out[name] = [
                cur.execute("SELECT database_name FROM duckdb_databases() ORDER BY 1").fetchall(),
                cur.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE database_name <> 'system'"
                ).fetchall(),
                cur.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall(),
                cur.execute(
                    "SELECT function_name FROM duckdb_functions() WHERE function_type = 'macro' "
                    "AND NOT internal"
                ).fetchall(),
                # a loaded extension adds functions
                cur.execute("SELECT count(*) FROM duckdb_functions()").fetchall(),
            ]
        finally:
            cur.close()
    return out


def column_named(payload: str) -> str:
    return '"' + payload.replace('"', '""') + '"'


def spill_files(spill: Path, tag: str) -> list[str]:
    """This test's files in the spill folder, which other processes use at the same time."""
    return sorted(p.name for p in spill.iterdir() if p.name.startswith(tag))


INJECTED_STATEMENTS = [
    "COPY (SELECT 'written by user SQL' AS x) TO '{spill}/{tag}.csv'",
    "COPY (SELECT 1 AS x) TO '{out}/pwn.csv'",
    "SELECT CAST(content AS INT) FROM read_text('{spill}/{tag}-secret.txt')",
    "SELECT CAST(current_setting('temp_directory') AS INT)",
    "SELECT CAST(current_setting('memory_limit') AS INT)",
    "ATTACH ':memory:' AS pwn",
    "ATTACH '{spill}/{tag}.db' AS pwn2",
    "CREATE MACRO abs(x) AS 42",
    "CREATE TABLE pwn AS SELECT 1 AS x",
    "CREATE SECRET pwn (TYPE s3, KEY_ID 'k', SECRET 'v')",
]


@pytest.mark.parametrize("statement", INJECTED_STATEMENTS)
def test_create_table_column_name_is_a_name_never_sql(
    sandbox_lh: mx.Lakehouse, tmp_path: Path, statement: str
) -> None:
    from matrixos.engine.sandbox import spill_directory

    spill = Path(spill_directory())
    tag = f"pwn-{os.getpid()}-{tmp_path.name}"
    out = tmp_path / "out"
    out.mkdir()
    secret = spill / f"{tag}-secret.txt"
    secret.write_text("4242")  # readable by DuckDB's spill allowance
    before = (spill_files(spill, tag), tree(out), engine_objects(sandbox_lh))
    try:
        smuggled = statement.format(spill=spill, out=out, tag=tag)
        payload = 'a" LIMIT 0; ' + smuggled + '; SELECT 1 AS "b'
        sandbox_lh.sql(f"CREATE TABLE inj ({column_named(payload)} INT, ok INT)")
        # The name is just a (strange) name: the table has exactly it and can be used.
        assert sandbox_lh.table("inj").schema.names == [payload, "ok"]
        sandbox_lh.sql("INSERT INTO inj VALUES (1, 2)")
        assert sandbox_lh.sql("SELECT * FROM inj").fetchall() == [(1, 2)]
        assert (spill_files(spill, tag), tree(out), engine_objects(sandbox_lh)) == before
        # A poisoned abs() would fold to 42 and prune every file away.
        assert sandbox_lh.sql("SELECT id FROM t WHERE id = abs(-2)").fetchall() == [(2,)]
    finally:
        for name in spill_files(spill, tag):
            (spill / name).unlink()


@pytest.mark.parametrize(
    "coldef",
    [
        "\"int; COPY (SELECT 1) TO '/tmp/x.csv'; SELECT 1\"",
        "mytype",
        "DECIMAL(getenv('HOME'), 2)",
        "DECIMAL(length(current_setting('memory_limit')), 2)",
        "STRUCT(a \"x; ATTACH ':memory:' AS pwn\")",
    ],
)
def test_create_table_column_type_is_a_built_in_type_never_sql(
    sandbox_lh: mx.Lakehouse, coldef: str
) -> None:
    before = engine_objects(sandbox_lh)
    with pytest.raises(SQLError) as info:
        sandbox_lh.sql(f"CREATE TABLE inj (a {coldef})")
    assert "type" in str(info.value) or REFUSED.search(str(info.value)), str(info.value)
    assert "inj" not in [n.split(".")[-1] for n in sandbox_lh.tables()]
    assert engine_objects(sandbox_lh) == before


def test_create_table_odd_but_valid_names_and_types(sandbox_lh: mx.Lakehouse) -> None:
    sandbox_lh.sql(
        'CREATE TABLE odd ("a b" INT NOT NULL, "x""y" VARCHAR, "; --" DECIMAL(10, 2), '
        's STRUCT("k""1" INT, v VARCHAR[]), m MAP(VARCHAR, INT))'
    )
    schema = sandbox_lh.table("odd").schema
    assert schema.names == ["a b", 'x"y', "; --", "s", "m"]
    assert not schema.field("a b").nullable
    assert schema.field("; --").type == pa.decimal128(10, 2)
    assert schema.field("s").type.field(0).name == 'k"1'
    with pytest.raises(SQLError, match="no type"):
        sandbox_lh.sql("CREATE TABLE untyped (a, b INT)")
    # Once a second column in the schema query, then ``ValueError: zip()``.
    sandbox_lh.sql('CREATE TABLE zipped ("a"", 1 AS ""b" INT)')
    assert sandbox_lh.table("zipped").schema.names == ['a", 1 AS "b']


@pytest.mark.parametrize("engine", ["local", "ray"])
@pytest.mark.parametrize("fn", ["vector_search", "text_search", "hybrid_search"])
@pytest.mark.parametrize(
    ("argument", "what"),
    [
        ("k => current_setting('memory_limit')", "current_setting()"),
        ("k => length(getenv('HOME'))", "getenv()"),
        ("filter => current_setting('temp_directory')", "current_setting()"),
        ("k => (SELECT count(*) FROM read_text('/etc/passwd'))", "read_text()"),
    ],
)
def test_platform_function_arguments_are_checked_before_evaluation(
    box: Box, fn: str, argument: str, what: str, engine: str
) -> None:
    # Refused before anything is evaluated, so engine="ray" needs no cluster to refuse.
    with pytest.raises(AccessDenied) as info:
        box.lh.sql(f"SELECT * FROM {fn}(t, 'q', {argument})", engine=engine)  # type: ignore[arg-type]
    assert what in str(info.value), str(info.value)
    assert "GiB" not in str(info.value) and "matrixos-spill" not in str(info.value)


def test_platform_function_arguments_of_the_wrong_type_are_sql_errors(
    sandbox_lh: mx.Lakehouse,
) -> None:
    # Once raw AttributeErrors from deep inside the embedder registry and Lance.
    sandbox_lh.create_table("kb", pa.table({"id": [1], "text": ["vacuum"]}), format="lance")
    for sql, match in (
        ("SELECT embed('x', 5)", "names an embedder, got 5"),
        ("SELECT embed(s, 5) FROM t", "names an embedder, got 5"),
        ("SELECT * FROM text_search(kb, 'vacuum', filter => 5)", "filter must be text"),
        ("SELECT * FROM text_search(kb, 'vacuum', columns => 5)", "columns must be text"),
    ):
        with pytest.raises(SQLError, match=match):
            sandbox_lh.sql(sql)


def test_embed_arguments_are_checked_before_evaluation(box: Box) -> None:
    with pytest.raises(AccessDenied, match=r"current_setting\(\)"):
        box.lh.sql("SELECT embed(current_setting('temp_directory'))")
    with pytest.raises(AccessDenied, match=r"getenv\(\)"):
        box.lh.sql("SELECT embed('x', getenv('HOME'))")


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("WITH x AS (SELECT 1) SELECT * INTO x FROM t", None),
        ("SELECT * INTO y FROM t", None),
        ("SELECT * INTO TEMP y FROM t", "postgres"),
        ("SELECT * INTO TEMPORARY y FROM t", "postgres"),
        ("SELECT * INTO UNLOGGED y FROM t", "postgres"),
        ("SELECT * INTO #y FROM t", "tsql"),
        ("SELECT * INTO ##y FROM t", "tsql"),
        ("SELECT * INTO y FROM t", "tsql"),
        ("SELECT * FROM (SELECT * INTO y FROM t) s", "tsql"),
    ],
)
def test_select_into_creates_nothing_in_the_engine_database(
    box: Box, sql: str, dialect: str | None
) -> None:
    before = engine_objects(box.lh)
    err = refused(box.lh, sql, dialect)
    assert "INTO" in str(err) and "CREATE TABLE" in str(err), str(err)
    assert engine_objects(box.lh) == before


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM TABLE(GENERATOR(ROWCOUNT => 5))",
        "SELECT seq4() FROM TABLE(GENERATOR(ROWCOUNT => 1000000000))",
        "SELECT * FROM t, TABLE(GENERATOR(ROWCOUNT => 3))",
    ],
)
def test_snowflake_generator_is_a_table_function(box: Box, sql: str) -> None:
    err = refused(box.lh, sql, "snowflake")
    assert "generator()" in str(err), str(err)


def test_schema_names_are_quoted_wherever_the_engine_writes_sql(sandbox_lh: mx.Lakehouse) -> None:
    # Struct field names, column names and partition values end up in the SQL that scans a
    # table (typed empty scans, casts, partition literals); each is data, never SQL.
    from matrixos.engine.sandbox import spill_directory

    spill = Path(spill_directory())
    tag = f"pwn-{os.getpid()}-struct"
    evil = (
        'x" INT)) AS s FROM (SELECT 1) WHERE false UNION ALL SELECT CAST(current_setting('
        f"'memory_limit') AS INT); COPY (SELECT 1) TO '{spill}/{tag}.csv'; SELECT (\"y"
    )
    struct = pa.struct([(evil, pa.int64())])
    empty = sandbox_lh.create_table("st_empty", pa.table({"s": pa.array([], struct)}))
    assert sandbox_lh.sql("SELECT * FROM st_empty").fetchall() == []
    assert empty.schema.field("s").type == struct
    full = sandbox_lh.create_table(
        "st_full",
        pa.table({"s": pa.array([{evil: 1}], struct), evil: ["it's"], "p": ["a'b\"c"]}),
        partition_by=["p"],
    )
    assert sandbox_lh.sql("SELECT * FROM st_full").fetchall() == [({evil: 1}, "it's", "a'b\"c")]
    assert sandbox_lh.sql("SELECT count(*) FROM st_full WHERE p = 'a''b\"c'").scalar() == 1
    assert full.count() == 1
    assert spill_files(spill, tag) == []
