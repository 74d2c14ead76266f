"""The sandbox fuzzer's parts: hostile SQL across dialects, a lakehouse to aim it at, and the
oracle that decides whether a statement escaped.

Statements are built from templates (queries, DDL, DML, MERGE, the platform's own functions,
time travel, SELECT … INTO, EXPLAIN, scripts) whose holes take hostile parts: file readers,
settings and environment readers, catalog functions of DuckDB, table functions, and whole
statements (COPY, ATTACH, CREATE MACRO/SECRET/TABLE, INSTALL/LOAD, SET, PRAGMA, EXPORT)
smuggled inside identifiers that try to break out of their quotes in each dialect's quoting.

An escape is any of:

- a file written (or a database attached) outside the warehouse — every target path the
  fuzzer names contains ``zz9escape``;
- a secret, a setting or the environment read back — planted markers (``zz9secret`` in
  files, ``zz9home`` in $HOME, the spill folder's name) in any result value or error message;
- an object created in, or an extension loaded into, the engine's own DuckDB connections;
- an exception from ``lh.sql`` that is not a ``MatrixOSError``.

Used by ``tests/engine/test_sandbox_fuzz.py`` (a few seconds in CI) and by
``python -m benchmarks.sandbox_fuzz`` (the long run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

import matrixos as mx
from matrixos.engine.sandbox import spill_directory
from matrixos.errors import MatrixOSError

DIALECTS = ("duckdb", "postgres", "snowflake", "tsql", "mysql", "bigquery", "spark")
ESCAPE_MARK = "zz9escape"
SECRET_MARK = "zz9secret"
HOME_MARK = "zz9home"


@dataclass
class Places:
    """Where the fuzzer aims: a folder outside the warehouse, the spill folder (which a
    locked DuckDB connection may still write), a secret file in each, and the warehouse."""

    root: Path
    out: Path
    home: Path
    warehouse: Path
    spill: Path
    secrets: list[Path]


# -- hostile parts ---------------------------------------------------------------------------
def _expressions(p: Places) -> list[str]:
    files = [str(s) for s in p.secrets]
    out = f"{p.out}/{ESCAPE_MARK}"
    exprs = [
        "current_setting('memory_limit')",
        "current_setting('temp_directory')",
        "current_setting('allowed_directories')",
        "getenv('HOME')",
        "(SELECT value FROM duckdb_settings() WHERE name = 'temp_directory')",
        "(SELECT string_agg(path, ',') FROM duckdb_databases())",
        "(SELECT count(*) FROM glob('/etc/*'))",
        f"(SELECT count(*) FROM glob('{p.spill}/*'))",
        "(SELECT * FROM query('SELECT 1'))",
        "which_secret('s3://b/k', 's3')",
        "(SELECT count(*) FROM duckdb_extensions())",
        "(SELECT count(*) FROM pragma_version())",
        "list_transform([1], x -> getenv('HOME'))",
        "CAST(current_setting('temp_directory') AS INT)",
        f"'{out}.csv'",
        "1",
        "'a'",
        "NULL",
    ]
    for f in files:
        exprs += [
            f"(SELECT content FROM read_text('{f}'))",
            f"(SELECT content FROM read_blob('{f}'))",
            f"CAST((SELECT content FROM read_text('{f}')) AS INT)",
            f"(SELECT column0 FROM read_csv('{f}', header = false))",
            f"read_text('{f}')",
            f"(SELECT * FROM '{f}')",
        ]
    return exprs


def _sources(p: Places) -> list[str]:
    f = str(p.secrets[0])
    wh_file = str(p.secrets[-1])
    return [
        f"read_csv('{f}')",
        f"read_csv_auto('{f}')",
        f"read_text('{f}')",
        f"read_json('{f}')",
        f"read_parquet('{wh_file}')",
        f"'{f}'",
        f'"{f}"',
        f"'{wh_file}'",
        f"sniff_csv('{f}')",
        f"glob('{p.spill}/*')",
        f"parquet_metadata('{wh_file}')",
        "duckdb_settings()",
        "duckdb_tables()",
        "duckdb_databases()",
        "pragma_version()",
        "query('SELECT 1')",
        "query_table('t')",
        "range(3)",
        "generate_series(1, 3)",
        "TABLE(GENERATOR(ROWCOUNT => 3))",
        "t",
        "information_schema.tables",
        "system.main.duckdb_settings",
        "UNNEST([1, 2])",
        f"sqlite_scan('{p.out}/{ESCAPE_MARK}.db', 't')",
    ]


def _statements(p: Places) -> list[str]:
    out = f"{p.out}/{ESCAPE_MARK}"
    spill = f"{p.spill}/{ESCAPE_MARK}"
    f = str(p.secrets[0])
    return [
        f"COPY (SELECT 1 AS x) TO '{out}.csv'",
        f"COPY (SELECT 1 AS x) TO '{spill}.csv'",
        f"COPY t TO '{p.warehouse}/{ESCAPE_MARK}.parquet'",
        f"ATTACH '{out}.db' AS pwn",
        f"ATTACH '{spill}.db' AS pwn",
        "ATTACH ':memory:' AS pwn",
        "CREATE MACRO abs(x) AS 42",
        "CREATE OR REPLACE MACRO lower(x) AS 'pwned'",
        "CREATE TABLE pwn AS SELECT 1 AS x",
        "CREATE VIEW pwn AS SELECT 1 AS x",
        "CREATE TEMP TABLE pwn AS SELECT 1 AS x",
        "CREATE SECRET pwn (TYPE s3, KEY_ID 'k', SECRET 'v')",
        "INSTALL httpfs",
        "LOAD httpfs",
        "LOAD json",
        "SET threads = 1",
        "SET enable_external_access = true",
        "RESET allowed_directories",
        "PRAGMA version",
        "CALL pragma_version()",
        f"EXPORT DATABASE '{out}'",
        f"SELECT * FROM read_text('{f}')",
        "SELECT current_setting('temp_directory')",
        "DETACH memory",
        "USE system",
        "CHECKPOINT",
    ]


_IDENT_CHARS = [*"abcXYZ_09 \"'`[];-/*\\\n\t,().$#@", "--", "/*", "*/"]
_QUOTES = {
    "duckdb": ['"'],
    "postgres": ['"'],
    "snowflake": ['"'],
    "tsql": ['"', "]"],
    "mysql": ["`"],
    "bigquery": ["`"],
    "spark": ["`"],
}
_OPEN = {'"': '"', "`": "`", "]": "["}
_TYPES = [
    "INT",
    "BIGINT",
    "VARCHAR",
    "DOUBLE",
    "DECIMAL(10, 2)",
    "DATE",
    "TIMESTAMP",
    "INT[]",
    "STRUCT(a INT)",
    "MAP(VARCHAR, INT)",
    "mytype",
    "\"int; COPY (SELECT 1) TO '{out}.csv'\"",
    "DECIMAL(length(current_setting('memory_limit')), 2)",
    'STRUCT("x"" INT); ATTACH \':memory:\' AS pwn; --" INT)',
]


# The grammar takes ``pick`` (choose one of a list): hypothesis's ``sampled_from`` in tests,
# ``random.Random.choice`` in the long run, where hypothesis's preference for small, repeated
# examples would leave most of the grammar untried.
Pick = Callable[[Sequence[Any]], Any]


def identifier(pick: Pick, p: Places, dialect: str) -> str:
    """A quoted identifier in ``dialect``'s quoting: random text (escaped right or not), or a
    name that carries a whole statement, written correctly (one identifier to the parser, as
    in the CREATE TABLE escape of issue 9) or not."""
    close = pick(_QUOTES[dialect])
    open_ = _OPEN[close]
    kind = pick(["plain", "random", "escaped", "breakout", "breakout", "raw-breakout"])
    if kind == "plain":
        return str(pick(["a", "b", "id", "s", "x_1"]))
    if kind in ("random", "escaped"):
        body = "".join(pick(_IDENT_CHARS) for _ in range(pick(range(1, 13))))
        if kind == "escaped":
            body = body.replace(close, close + close)
        return open_ + body + close
    # The quote the engine's own SQL would use (DuckDB: "), a string quote, or backticks.
    q = pick(['"', '"', "'", "`"])
    stmt = pick(_statements(p))
    lead = pick([" LIMIT 0; ", "; ", " INT); ", ") AS x; "])
    tail = pick([f"; SELECT 1 AS {q}b", " -- ", f"; SELECT {q}"])
    body = f"a{q}{lead}{stmt}{tail}"
    if kind == "breakout":
        body = body.replace(close, close + close)
    return open_ + body + close


def statement(pick: Pick, p: Places) -> tuple[str, str]:
    """(SQL, dialect): one hostile statement."""
    dialect = str(pick(DIALECTS))
    expr = pick(_expressions(p))
    source = pick(_sources(p))
    ident = identifier(pick, p, dialect)
    col = identifier(pick, p, dialect)
    typ = pick(_TYPES).format(out=f"{p.out}/{ESCAPE_MARK}")
    stmt = pick(_statements(p))
    fn = pick(["vector_search", "text_search", "hybrid_search"])
    arg = pick(["k", "filter", "columns"])
    into = pick(["a", "pwn"])
    # Five families drawn equally often, so that the rarer shapes (an identifier carrying a
    # statement into DDL) come up as often as plain hostile queries.
    families = {
        "names": [
            f"CREATE TABLE {ident} ({col} {typ})",
            f"CREATE TABLE fz ({col} {typ}, ok INT)",
            f"CREATE TABLE fz (ok INT, {col} INT NOT NULL)",
            f"CREATE TABLE fz AS SELECT {expr} AS {col}",
            f"CREATE TABLE fz AS SELECT 1 AS {col}",
            f"SELECT 1 AS {col}",
            f"SELECT {expr} AS {col} FROM t",
            f"SELECT {col} FROM t",
            f"INSERT INTO t ({col}) VALUES (1)",
            f"CREATE SCHEMA {ident}",
            f"DESCRIBE {ident}",
            f"OPTIMIZE {ident}",
            f"DROP TABLE IF EXISTS {ident}",
            f"WITH x AS (SELECT 1) SELECT * INTO {ident} FROM t",
            f"SELECT * INTO TEMP {ident} FROM t",
            f"SELECT * INTO #{into} FROM t",
        ],
        "expressions": [
            f"SELECT {expr}",
            f"SELECT * FROM t WHERE id = {expr}",
            f"SELECT * FROM t WHERE s IN (SELECT {expr})",
            f"SELECT * FROM t, LATERAL (SELECT {expr}) AS l",
            f"SELECT * FROM t UNION ALL SELECT 1, CAST({expr} AS VARCHAR)",
            f"INSERT INTO t VALUES (1, {expr})",
            f"INSERT INTO t SELECT 1, CAST({expr} AS VARCHAR)",
            f"UPDATE t SET s = {expr} WHERE id = 1",
            f"DELETE FROM t WHERE s = {expr}",
            f"MERGE INTO t USING (SELECT 1 AS id, {expr} AS s) src ON t.id = src.id "
            "WHEN MATCHED THEN UPDATE SET s = src.s",
            f"EXPLAIN SELECT {expr}",
            f"SELECT * FROM t PIVOT (count(*) FOR s IN ({expr}))",
            f"SELECT {'(' * 120}{expr}{')' * 120}",
        ],
        "sources": [
            f"SELECT * FROM {source}",
            f"SELECT * FROM {source} AS {col}",
            f"WITH x AS (SELECT * FROM {source}) SELECT * FROM x",
            f"CREATE TABLE fz AS SELECT * FROM {source}",
            f"EXPLAIN SELECT * FROM {source}",
            f"SELECT * FROM t JOIN {source} AS j ON true",
            "SELECT * FROM TABLE(GENERATOR(ROWCOUNT => 3))",
        ],
        "statements": [stmt, f"SELECT 1; {stmt}", f"SELECT {expr}; {stmt}"],
        "platform": [
            f"SELECT * FROM {fn}(t, 'q', {arg} => {expr})",
            f"SELECT * FROM {fn}(t, {expr})",
            f"SELECT * FROM {fn}(kb, 'vacuum', {arg} => {expr})",
            f"SELECT * FROM {fn}(kb, {expr})",
            f"SELECT * FROM {fn}({source}, 'q')",
            f"SELECT embed({expr})",
            f"SELECT embed('x', {expr})",
            f"SELECT embed(s, {expr}) FROM t",
            f"SELECT * FROM t VERSION AS OF {expr}",
            f"SELECT * FROM t TIMESTAMP AS OF {expr}",
            f"SELECT * FROM t AT (VERSION => {expr})",
            f"SELECT * FROM t AT (TIMESTAMP => {expr})",
            f"SELECT * FROM t AT (OFFSET => {expr})",
            f"SELECT * FROM t BEFORE (STATEMENT => {expr})",
        ],
    }
    family = pick(sorted(families))
    return str(pick(families[family])), dialect


@st.composite
def statements(draw: st.DrawFn, p: Places) -> tuple[str, str]:
    """The grammar as a hypothesis strategy."""
    return statement(lambda xs: draw(st.sampled_from(xs)), p)


# -- the lakehouse and the oracle --------------------------------------------------------------
@dataclass
class Box:
    places: Places
    lh: mx.Lakehouse
    tables: list[str] = field(default_factory=list)


@contextmanager
def box() -> Iterator[Box]:
    """A lakehouse with a Delta table ``t`` and a Lance table ``kb``, a private $HOME and
    planted secrets."""
    root = Path(tempfile.mkdtemp(prefix="sandbox-fuzz-"))
    spill = Path(spill_directory())
    home = root / HOME_MARK
    out = root / "out"
    for d in (home, out):
        d.mkdir()
    warehouse = root / "wh"
    places = Places(root, out, home, warehouse, spill, [])
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        with mx.connect(str(warehouse)) as lh:
            lh.create_table("t", pa.table({"id": [1, 2, 3], "s": ["a", "b", "c"]}))
            lh.create_table(
                "kb",
                pa.table({"id": [1, 2], "text": ["vacuum a table", "time travel"]}),
                format="lance",
            )
            # One secret outside everything, one in the spill folder (a locked connection
            # may read it), one in the warehouse (where table files are readable).
            for folder in (out, spill, warehouse):
                secret = folder / f"fuzz-{os.getpid()}.csv"  # the name is no marker
                secret.write_text(f"{SECRET_MARK}\n")
                places.secrets.append(secret)
            b = Box(places, lh, lh.tables())
            yield b
    finally:
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home
        for s in places.secrets:
            s.unlink(missing_ok=True)
        for leftover in spill.glob(f"*{ESCAPE_MARK}*"):
            leftover.unlink()
        shutil.rmtree(root, ignore_errors=True)


def _inventory(lh: mx.Lakehouse) -> list[Any]:
    """What the engine's DuckDB connections hold (both of them).

    Listing every function costs ~150 ms, so macros are probed by the names the fuzzer
    redefines; an extension cannot load without being installed under $HOME first, which the
    file check sees.
    """
    engine = lh._engine
    out: list[Any] = []
    for cur in (engine.planning_cursor(), engine.cursor()):
        try:
            out.append(
                [
                    cur.execute("SELECT database_name FROM duckdb_databases()").fetchall(),
                    cur.execute(
                        "SELECT schema_name, table_name FROM duckdb_tables() "
                        "WHERE database_name <> 'system'"
                    ).fetchall(),
                    cur.execute(
                        "SELECT view_name FROM duckdb_views() WHERE NOT internal"
                    ).fetchall(),
                    cur.execute("SELECT abs(-1), lower('A')").fetchall(),
                ]
            )
        finally:
            cur.close()
    return out


def _planted_files(places: Places) -> list[str]:
    """Files the fuzzer's statements name (anywhere), and anything new in $HOME (where
    INSTALL and persistent secrets would write)."""
    found = []
    for top in (places.root, places.spill):
        for dirpath, _, files in os.walk(top):
            inside_home = Path(dirpath).is_relative_to(places.home)
            found += [os.path.join(dirpath, f) for f in files if ESCAPE_MARK in f or inside_home]
    return sorted(found)


def _leaks(text: str, places: Places, sql: str) -> list[str]:
    """Markers in ``text`` that the statement itself did not contain (an error message may
    quote the statement, paths and all)."""
    marks = [SECRET_MARK, HOME_MARK, os.path.basename(places.spill)]
    return [m for m in marks if m in text and m not in sql]


@dataclass
class Outcome:
    sql: str
    dialect: str
    ran: bool
    escapes: list[str]


def try_statement(b: Box, sql: str, dialect: str) -> Outcome:
    """Run one statement through the public ``lh.sql`` and judge it."""
    lh, places = b.lh, b.places
    before = _inventory(lh)
    escapes: list[str] = []
    ran = False
    try:
        res = lh.sql(sql, dialect=dialect)
        text = repr(res.to_arrow().to_pylist())
        ran = True
        escapes += [f"result shows {m}" for m in _leaks(text, places, sql)]
    except MatrixOSError as e:
        escapes += [f"error message shows {m}" for m in _leaks(str(e), places, sql)]
    except Exception as e:
        escapes.append(f"raw {type(e).__module__}.{type(e).__name__}: {str(e)[:200]}")
    files = _planted_files(places)
    if files:
        escapes.append(f"files written: {files}")
        for f in files:
            Path(f).unlink(missing_ok=True)
    after = _inventory(lh)
    if after != before:
        escapes.append(f"engine connections changed: {before} -> {after}")
    # Tables the statement created in the catalog are legitimate; drop them to stay small.
    for name in lh.tables():
        if name not in b.tables:
            lh.drop_table(name)
    return Outcome(sql, dialect, ran, escapes)
