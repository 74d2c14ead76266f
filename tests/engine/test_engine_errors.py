"""The engine's errors in the user's terms: a memory hint naming the setting, positions in the
user's own statement text."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.errors import SQLError

# ``lh`` (tests/conftest.py) on the local folder only.
WAREHOUSES = ("local",)


def _table(lh: mx.Lakehouse) -> None:
    lh.create_table("raw.t", pa.table({"id": [1, 2], "name": ["a", "b"]}))


def test_out_of_memory_names_the_memory_setting(tmp_path: Path) -> None:
    n = 300_000
    big = pa.table({"s": [f"{i}-{'x' * 40}" for i in range(n)]})
    with mx.connect(str(tmp_path / "wh"), duckdb_memory_limit="8MB") as lh:
        lh.create_table("raw.big", big)
        with pytest.raises(SQLError, match="Out of Memory") as err:
            lh.sql("SELECT list(s) FROM raw.big").fetchall()
    assert err.value.sqlstate == "53200"
    assert err.value.hint is not None and "duckdb_memory_limit" in err.value.hint
    # DuckDB's advice is SET statements, which user SQL may not run: not repeated.
    assert "SET memory_limit" not in str(err.value)


def test_unknown_column_is_placed_in_the_users_text(lh: mx.Lakehouse) -> None:
    _table(lh)
    sql = "SELECT id,\n       nme\nFROM raw.t\nWHERE name <> 'nme' -- nme\n"
    with pytest.raises(SQLError, match='column "nme"') as err:
        lh.sql(sql)
    # The string literal and the comment are not the identifier: only one occurrence counts.
    assert (err.value.line, err.value.col, err.value.sql) == (2, 8, sql)
    assert "(line 2, column 8)" in str(err.value)
    assert "LINE " not in str(err.value)


def test_unknown_function_is_placed_and_other_errors_stay_unplaced(lh: mx.Lakehouse) -> None:
    _table(lh)
    with pytest.raises(SQLError, match="foo") as err:
        lh.sql("SELECT upper(name),\n  foo(id) FROM raw.t")
    assert (err.value.line, err.value.col) == (2, 3)
    # A name that occurs twice cannot be placed faithfully: no position rather than a guess.
    with pytest.raises(SQLError, match='column "nme"') as err:
        lh.sql("SELECT nme FROM raw.t WHERE nme > 1")
    assert (err.value.line, err.value.col) == (None, None)
    assert "(line" not in str(err.value)


def test_group_by_and_argument_type_errors_are_placed(lh: mx.Lakehouse) -> None:
    _table(lh)
    with pytest.raises(SQLError, match="GROUP BY") as err:
        lh.sql("SELECT id, name FROM raw.t GROUP BY id")
    assert (err.value.line, err.value.col) == (1, 12)
    with pytest.raises(SQLError, match="No function matches") as err:
        lh.sql("SELECT id,\n       lower(id) FROM raw.t")
    assert (err.value.line, err.value.col) == (2, 8)


def test_duckdb_excerpt_maps_only_when_it_is_the_users_text(lh: mx.Lakehouse) -> None:
    # Nothing translated: DuckDB's excerpt is the user's text, so its caret is the user's.
    with pytest.raises(SQLError, match="Could not convert string 'x'") as err:
        lh.sql("SELECT 1, CAST('x' AS INT)")
    assert (err.value.line, err.value.col) == (1, 11)
    assert "LINE " not in str(err.value)
    # Laid out differently from the text DuckDB ran (one line): no position rather than a guess.
    with pytest.raises(SQLError, match="Could not convert string 'x'") as err:
        lh.sql("SELECT 1,\n  CAST('x' AS INT)")
    assert (err.value.line, err.value.col) == (None, None)
    # A table read inlines a scan of its files: that excerpt is never shown, nor its position.
    _table(lh)
    with pytest.raises(SQLError, match="Could not convert string 'abc'") as err:
        lh.sql("SELECT * FROM raw.t WHERE id = 'abc'")
    assert (err.value.line, err.value.col) == (None, None)
    assert "LINE " not in str(err.value) and ".parquet" not in str(err.value)
