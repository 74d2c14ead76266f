"""The ``matrixos`` command line, run as a real subprocess over a warehouse in ``tmp_path``."""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import matrixos as mx

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    """An empty warehouse (reading commands refuse a location that holds none)."""
    path = tmp_path / "wh"
    mx.connect(str(path)).close()
    return path


@pytest.fixture
def cli(tmp_path: Path, home: Path, warehouse: Path) -> Run:
    """``cli("sql", "SELECT 1", input=None)`` → the finished ``matrixos`` process."""

    def run(
        *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MATRIXOS_")}
        environ.update(MATRIXOS_HOME=str(home), PYTHONIOENCODING="utf-8", **(env or {}))
        return subprocess.run(
            [sys.executable, "-m", "matrixos.cli", "--warehouse", str(warehouse), *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=environ,
            cwd=tmp_path,
            timeout=120,
        )

    return run


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert "Traceback" not in p.stderr
    return p.stdout


def fails(p: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The process exited ``code`` with a one-paragraph error and no traceback; its stderr."""
    assert p.returncode == code, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    return p.stderr


ORDERS = """
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id INT, city VARCHAR, day DATE, amount DECIMAL(10, 2));
INSERT INTO sales.orders VALUES
  (1, 'Lisbon', DATE '2024-05-01', 12.50),
  (2, 'Porto', DATE '2024-05-02', 7.25),
  (3, 'Lisbon, Centro', DATE '2024-05-03', NULL);
"""


@pytest.fixture
def orders(cli: Run) -> None:
    assert ok(cli("sql", ORDERS)).strip() == "INSERT 0 3"


def version_of(cli: Run, table: str) -> int:
    rows = json.loads(ok(cli("history", table, "--format", "json")))
    return max(r["version"] for r in rows)


# -- sql ---------------------------------------------------------------------------------------
def test_sql_json(cli: Run, orders: None) -> None:
    out = ok(cli("sql", "SELECT * FROM sales.orders ORDER BY id", "--format", "json"))
    assert json.loads(out) == [
        {"id": 1, "city": "Lisbon", "day": "2024-05-01", "amount": "12.50"},
        {"id": 2, "city": "Porto", "day": "2024-05-02", "amount": "7.25"},
        {"id": 3, "city": "Lisbon, Centro", "day": "2024-05-03", "amount": None},
    ]
    assert json.loads(ok(cli("sql", "SELECT * FROM sales.orders WHERE id < 0", "-f", "json"))) == []


def test_sql_csv(cli: Run, orders: None) -> None:
    out = ok(cli("sql", "SELECT id, city, day, amount FROM sales.orders ORDER BY id", "-f", "csv"))
    rows = list(csv.reader(io.StringIO(out)))
    assert rows == [
        ["id", "city", "day", "amount"],
        ["1", "Lisbon", "2024-05-01", "12.50"],
        ["2", "Porto", "2024-05-02", "7.25"],
        ["3", "Lisbon, Centro", "2024-05-03", ""],
    ]
    # No rows: the header alone.
    empty = ok(cli("sql", "SELECT id, city FROM sales.orders WHERE false", "-f", "csv"))
    assert list(csv.reader(io.StringIO(empty))) == [["id", "city"]]


def test_sql_table(cli: Run, orders: None) -> None:
    out = ok(cli("sql", "SELECT id, city FROM sales.orders ORDER BY id"))
    assert "city" in out and "Lisbon, Centro" in out and "Porto" in out
    assert "(3 rows)" in out
    # Bounded: the first --limit rows, and how many more there are.
    out = ok(cli("sql", "SELECT id, city FROM sales.orders ORDER BY id", "--limit", "1"))
    assert "Lisbon" in out and "Porto" not in out
    assert "3 rows" in out and "2 more" in out


def test_sql_status_of_ddl_and_dml(cli: Run, orders: None) -> None:
    assert ok(cli("sql", "DELETE FROM sales.orders WHERE id = 2")).strip() == "DELETE 1"
    status = json.loads(
        ok(cli("sql", "UPDATE sales.orders SET amount = 1 WHERE id = 1", "-f", "json"))
    )
    assert status[0]["status"].startswith("UPDATE")
    assert ok(cli("sql", "SELECT count(*) AS n FROM sales.orders", "-f", "csv")).split() == [
        "n",
        "2",
    ]


def test_sql_postgres_dialect(cli: Run) -> None:
    q = "SELECT to_char(DATE '2024-01-02', 'YYYY/MM/DD') AS s, 'ab'::text || 'c' AS t"
    out = ok(cli("sql", q, "--dialect", "postgres", "--format", "json"))
    assert json.loads(out) == [{"s": "2024/01/02", "t": "abc"}]


def test_sql_from_stdin(cli: Run, orders: None) -> None:
    script = "SELECT 1 AS x;\nSELECT city FROM sales.orders WHERE id = 2;\n"
    assert json.loads(ok(cli("sql", "-", "-f", "json", input=script))) == [{"city": "Porto"}]
    # No argument at all, SQL piped in.
    assert json.loads(ok(cli("sql", "-f", "json", input=script))) == [{"city": "Porto"}]
    err = fails(cli("sql", "-", input="   \n"), code=2)
    assert "no SQL" in err


def test_sql_bad_sql(cli: Run) -> None:
    p = cli("sql", "SELEC 1 FROM nowhere")
    err = fails(p)
    assert err.startswith("error:")
    assert "unknown statement 'SELEC' (line 1, column 1)" in err and "did you mean SELECT?" in err
    assert p.stdout == ""
    err = fails(cli("sql", "SELECT * FROM t\nWHERE x = = 1"))
    assert "syntax error at or near '=' (line 2, column 11)" in err and "sqlglot" not in err
    err = fails(cli("sql", "SELECT * FROM no_such_table"))
    assert "no_such_table" in err and "does not exist" in err


def test_sql_sandbox_refuses_files(cli: Run) -> None:
    p = cli("sql", "SELECT * FROM read_csv('/etc/passwd')", "-f", "csv")
    err = fails(p)
    assert "not allowed" in err
    assert "root:" not in p.stdout + p.stderr


def test_usage_errors_exit_2(cli: Run) -> None:
    fails(cli("sql", "SELECT 1", "--format", "xml"), code=2)
    fails(cli("nonsense"), code=2)
    err = fails(cli("serve", "--port", "http"), code=2)
    assert "--port" in err
    fails(cli("serve", "--port", "70000"), code=2)


# Every command, in the order `matrixos --help` lists them.
COMMANDS = (
    "sql",
    "ingest",
    "tables",
    "history",
    "describe",
    "demo",
    "serve",
    "search",
    "reserve",
    "usage",
    "lineage",  # commands come before groups in Typer's order
    "rag",
    "compute",
    "jobs",
    "cluster",
    "accounts",
    "tokens",
)


def test_help_and_version(cli: Run) -> None:
    out = ok(cli("--help"))
    for command in COMMANDS:
        assert command in out
    assert ok(cli("--version")).startswith("matrixos ")


def test_warehouse_from_environment(cli: Run, tmp_path: Path) -> None:
    env = {"MATRIXOS_WAREHOUSE": str(tmp_path / "from-env"), "MATRIXOS_HOME": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, "-m", "matrixos.cli", "sql", "CREATE TABLE t AS SELECT 1 AS x"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=tmp_path,
        timeout=120,
    )
    ok(p)
    (table,) = (tmp_path / "from-env" / "main" / "default").glob("t-*")
    assert (table / "_delta_log").is_dir()


def test_catalog_password_is_never_printed(cli: Run) -> None:
    p = cli("--catalog-url", "postgresql://bob:s3cr3t-pw@127.0.0.1:1/cat", "tables")
    fails(p)
    assert "s3cr3t-pw" not in p.stdout + p.stderr


# -- ingest -----------------------------------------------------------------------------------
def test_ingest_csv_ndjson_parquet(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,name,score\n1,ana,1.5\n2,bo,2.5\n")
    (tmp_path / "b.ndjson").write_text(
        '{"id": 3, "name": "cy", "score": 3.5}\n{"id": 4, "name": "di", "score": 4.5}\n'
    )
    pq.write_table(pa.table({"id": [5], "name": ["ed"], "score": [5.5]}), tmp_path / "c.parquet")
    out = ok(cli("ingest", str(tmp_path / "a.csv"), "--table", "raw.people"))
    assert "2 rows" in out and "main.raw.people" in out
    ok(cli("ingest", str(tmp_path / "b.ndjson"), "--table", "raw.people", "--format", "ndjson"))
    ok(cli("ingest", str(tmp_path / "c.parquet"), "--table", "raw.people", "--mode", "append"))
    rows = json.loads(
        ok(cli("sql", "SELECT id, name, score FROM raw.people ORDER BY id", "-f", "json"))
    )
    assert [r["name"] for r in rows] == ["ana", "bo", "cy", "di", "ed"]
    assert rows[-1] == {"id": 5, "name": "ed", "score": 5.5}

    # merge: id 1 updated, id 6 inserted.
    (tmp_path / "upd.csv").write_text("id,name,score\n1,ana,9.0\n6,fa,6.5\n")
    out = ok(
        cli(
            "ingest", str(tmp_path / "upd.csv"), "-t", "raw.people", "--mode", "merge", "--on", "id"
        )
    )
    assert "merge" in out
    rows = json.loads(ok(cli("sql", "SELECT id, score FROM raw.people ORDER BY id", "-f", "json")))
    assert [(r["id"], r["score"]) for r in rows] == [
        (1, 9.0), (2, 2.5), (3, 3.5), (4, 4.5), (5, 5.5), (6, 6.5),
    ]  # fmt: skip
    err = fails(cli("ingest", str(tmp_path / "upd.csv"), "-t", "raw.people", "--mode", "merge"))
    assert "--on" in err


def test_ingest_malformed_csv_changes_nothing(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "good.csv").write_text("id,name,score\n1,ana,1.5\n2,bo,2.5\n")
    ok(cli("ingest", str(tmp_path / "good.csv"), "--table", "raw.scores"))
    before = version_of(cli, "raw.scores")

    bad = tmp_path / "bad.csv"
    bad.write_text("id,name,score\n3,cy,3.5\n4,di,not-a-number\n")
    p = cli("ingest", str(tmp_path / "good.csv"), str(bad), "--table", "raw.scores")
    err = fails(p)
    assert err.startswith("error:")
    assert "bad.csv" in err and "line 3" in err and "column 3" in err
    assert version_of(cli, "raw.scores") == before
    count = ok(cli("sql", "SELECT count(*) AS n FROM raw.scores", "-f", "csv"))
    assert count.split() == ["n", "2"]


def test_ingest_missing_file(cli: Run, tmp_path: Path) -> None:
    err = fails(cli("ingest", str(tmp_path / "nope.csv"), "--table", "raw.x"))
    assert "nope.csv" in err


# -- catalog listings --------------------------------------------------------------------------
def test_tables_listing(cli: Run, orders: None, warehouse: Path) -> None:
    ok(cli("sql", "CREATE TABLE plain AS SELECT 1 AS x"))
    out = ok(cli("tables"))
    assert "main.sales.orders" in out and "main.default.plain" in out and "delta" in out

    rows = json.loads(ok(cli("tables", "sales", "--format", "json")))
    location = rows[0].pop("location")
    assert rows == [{"name": "main.sales.orders", "format": "delta", "external": False}]
    assert Path(location).parent == warehouse / "main" / "sales"
    assert Path(location).name.startswith("orders-")
    assert "no tables" in ok(cli("tables", "nothing_here"))


def test_describe_and_history(cli: Run, orders: None) -> None:
    out = ok(cli("describe", "sales.orders"))
    assert "main.sales.orders" in out and "amount" in out and "decimal128(10, 2)" in out
    cols = json.loads(ok(cli("describe", "sales.orders", "-f", "json")))
    assert [c["column"] for c in cols] == ["id", "city", "day", "amount"]

    history = json.loads(ok(cli("history", "sales.orders", "-f", "json")))
    assert [h["version"] for h in history] == [1, 0]
    assert "WRITE" in ok(cli("history", "sales.orders"))
    err = fails(cli("history", "sales.missing"))
    assert "does not exist" in err


# -- a new user's mistakes -----------------------------------------------------------------------
def test_reading_commands_never_create_a_warehouse(cli: Run, tmp_path: Path) -> None:
    typo = tmp_path / "wharehouse"
    for args in (
        ["tables"],
        ["sql", "SELECT 1"],
        ["describe", "s.t"],
        ["history", "s.t"],
        ["search", "kb.chunks", "dead tuples"],
        ["rag", "eval", "--table", "kb.chunks", "--queries", "q.jsonl"],
        ["usage"],
    ):
        err = fails(cli(*args, "--warehouse", str(typo)))
        assert f"no warehouse at {typo}" in err and "hint:" in err, args
        assert "(no tables)" not in err
    assert not typo.exists()
    # a statement that creates does create it, with the option before or after the command
    ok(cli("sql", "CREATE TABLE s.t AS SELECT 1 AS x", "-w", str(typo)))
    assert "main.s.t" in ok(cli("tables", "--warehouse", str(typo)))
    assert "main.s.t" in ok(cli("--warehouse", str(typo), "tables"))


def test_global_options_after_the_command_win(cli: Run, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ok(cli("sql", "CREATE TABLE here AS SELECT 1 AS x"))  # the fixture's --warehouse
    ok(cli("sql", "CREATE TABLE there AS SELECT 2 AS x", "--warehouse", str(other)))
    assert "main.default.there" in ok(cli("tables", "--warehouse", str(other)))
    listed = ok(cli("tables", "-f", "json", f"--warehouse={other}"))
    assert [r["name"] for r in json.loads(listed)] == ["main.default.there"]
    # `--` ends the options: what follows is positional even when it looks like one
    assert "--warehouse" in ok(cli("sql", "-f", "csv", "--", "SELECT '--warehouse' AS w"))


def test_rag_errors_name_the_path(cli: Run, tmp_path: Path) -> None:
    err = fails(cli("rag", "index", "./nonexistent", "--table", "kb.chunks"))
    assert f"no such folder or file {tmp_path / 'nonexistent'}" in err
    assert "invalid table name" not in err
    err = fails(cli("rag", "eval", "--table", "kb.chunks", "--queries", "missing.jsonl"))
    assert f"cannot read the queries file {tmp_path / 'missing.jsonl'}" in err
    assert "internal error" not in err


# -- the package ------------------------------------------------------------------------------
CLI_PACKAGE = Path(mx.__file__).parent / "cli"
SHARED = {"matrixos.cli.common", "matrixos.cli.output"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in ``path``, in functions and TYPE_CHECKING too."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
    return found


def test_commands_register_without_an_import_loop() -> None:
    # The command modules import only the shared modules of the package, never the package
    # (whose __init__ imports them); output is the bottom, common sits on it.
    modules = sorted(p for p in CLI_PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert {p.stem for p in modules} >= {"common", "output", "sql", "tables", "ai", "compute"}
    for path in modules:
        own = f"matrixos.cli.{path.stem}"
        allowed = {"output": set(), "common": {"matrixos.cli.output"}}.get(path.stem, SHARED)
        for module, names in _imports(path):
            if module == "matrixos.cli":  # `from matrixos.cli import common` names modules
                assert {f"matrixos.cli.{n}" for n in names} <= allowed, (own, names)
            elif module.startswith("matrixos.cli."):
                assert module in allowed, (own, module)
            # no private name of another module (a private module's public names are fine)
            private = [n for n in names if n.startswith("_") and not n.endswith("__")]
            assert not private, (own, module, private)


def test_every_command_is_registered_once_in_help_order() -> None:
    import typer.main

    from matrixos.cli import app

    group = typer.main.get_group(app)
    assert list(group.commands) == list(COMMANDS)
    assert sorted(group.commands["rag"].commands) == ["eval", "index"]  # type: ignore[attr-defined]
    compute = group.commands["compute"]
    assert sorted(compute.commands) == ["start", "status", "stop"]  # type: ignore[attr-defined]


def test_start_up_loads_no_heavy_module() -> None:
    # `matrixos --help` must stay quick: the app and its commands are importable without the
    # engine, Arrow, rich or Ray (each command imports what it needs when it runs).
    heavy = ("pyarrow", "duckdb", "sqlglot", "rich", "ray", "lance", "sqlalchemy", "pydantic")
    code = f"import sys, matrixos.cli; print([m for m in {heavy!r} if m in sys.modules])"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert ok(p).strip() == "[]"
