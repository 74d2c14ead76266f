"""``%load_ext matrixos`` and the ``%sql`` / ``%%sql`` magics in a real IPython shell."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import matrixos as mx
from matrixos import magic
from matrixos.errors import SQLError, TableNotFound


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    sh = InteractiveShell.instance()
    result = sh.run_cell("%load_ext matrixos")
    assert result.success, result.error_in_exec
    yield sh
    InteractiveShell.clear_instance()


@pytest.fixture
def shell_lh(shell: InteractiveShell, tmp_path: Path) -> Iterator[mx.Lakehouse]:
    with mx.connect(str(tmp_path / "wh")) as lakehouse:
        shell.user_ns["lh"] = lakehouse
        yield lakehouse
        shell.user_ns.pop("lh", None)


def run(shell: InteractiveShell, source: str) -> Any:
    """Run a cell; its value (the magic's Result), or raise what the cell raised."""
    result = shell.run_cell(source, silent=False, store_history=False)
    if not result.success:
        err = result.error_in_exec or result.error_before_exec
        assert err is not None
        raise err
    return result.result


def test_cell_magic_returns_result(shell: InteractiveShell, shell_lh: mx.Lakehouse) -> None:
    shell_lh.create_table("sales.orders", [{"id": 1, "city": "Lisbon"}, {"id": 2, "city": "Porto"}])
    res = run(shell, "%%sql\nSELECT city FROM sales.orders\nORDER BY id DESC\n")
    assert isinstance(res, mx.Result)
    assert res.fetchall() == [("Porto",), ("Lisbon",)]
    assert "<table>" in res._repr_html_() and "Porto" in res._repr_html_()


def test_cell_magic_dialect_and_out(shell: InteractiveShell, shell_lh: mx.Lakehouse) -> None:
    res = run(
        shell,
        "%%sql --dialect postgres --out answer\n"
        "SELECT to_char(DATE '2024-01-02', 'YYYY/MM/DD') AS day, 'a'::text || 'b' AS ab\n",
    )
    assert shell.user_ns["answer"] is res
    assert res.fetchall() == [("2024/01/02", "ab")]
    # The stored Result stays readable after it was displayed.
    assert run(shell, "answer.to_pylist()") == [{"day": "2024/01/02", "ab": "ab"}]


def test_cell_magic_runs_ddl_and_dml(shell: InteractiveShell, shell_lh: mx.Lakehouse) -> None:
    res = run(
        shell,
        "%%sql\nCREATE TABLE t (id INT, note VARCHAR);\nINSERT INTO t VALUES (1, 'x'), (2, 'y');\n",
    )
    assert res.message == "INSERT 0 2"
    assert shell_lh.table("t").count() == 2


def test_line_magic_keeps_sql_verbatim(shell: InteractiveShell, shell_lh: mx.Lakehouse) -> None:
    # Quotes, `$` and braces reach the engine as written (no shlex, no variable expansion).
    res = run(shell, "%sql SELECT 'it''s' AS a, '$HOME {x}' AS b")
    assert res.fetchall() == [("it's", "$HOME {x}")]
    res = run(shell, "%sql -d postgres -o line_out SELECT 'a'::text AS a")
    assert shell.user_ns["line_out"] is res and res.scalar() == "a"


def test_without_lh_uses_default_connection(
    shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shell.user_ns.pop("lh", None)
    shell.user_ns["lh"] = "not a lakehouse"  # ignored: only a Lakehouse is used
    monkeypatch.setenv("MATRIXOS_WAREHOUSE", str(tmp_path / "default-wh"))
    monkeypatch.setattr(magic, "_default", None)
    try:
        assert run(shell, "%%sql\nCREATE TABLE d AS SELECT 42 AS x").message == "CREATE TABLE"
        assert run(shell, "%sql SELECT x FROM d").scalar() == 42
        assert magic._default is not None
        assert [p.name[:2] for p in (tmp_path / "default-wh" / "main" / "default").iterdir()] == [
            "d-"
        ]
    finally:
        if magic._default is not None:
            magic._default.close()
        shell.user_ns.pop("lh", None)


def test_errors(shell: InteractiveShell, shell_lh: mx.Lakehouse) -> None:
    with pytest.raises(SQLError, match=r"unknown statement .SELEC. \(line 1, column 1\)"):
        run(shell, "%%sql\nSELEC 1\n")
    with pytest.raises(TableNotFound):
        run(shell, "%sql SELECT * FROM missing")
    with pytest.raises(UsageError):
        run(shell, "%%sql\n   \n")
    with pytest.raises(UsageError):
        run(shell, "%%sql --out 1bad\nSELECT 1\n")
