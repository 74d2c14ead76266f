"""Answer checking: a result against DuckDB's reference CSV answers or another engine's result.

Rows are compared in order (every TPC-H query orders its output or returns one row). Cells:
integers and strings exactly (strings with surrounding blanks stripped), DECIMAL values after
rounding both sides to 2 places (one cent of slack for the rounding itself), floating-point
values to a relative 1e-6, dates and timestamps by their ISO text.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pyarrow as pa

REL_TOL = 1e-6
CENT = Decimal("0.01")
_MAX_PROBLEMS = 5


def read_answer(path: Path) -> tuple[list[str], list[list[str]]]:
    """Column names and rows (as text) of a reference answer: pipe-separated, with a header.

    An empty line is a row of one NULL where the answer has one column (Q17 at SF 0.01 is
    ``avg_yearly`` over no rows); the file's final newline ends the last row."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE))
    names, body = rows[0], rows[1:]
    return names, [r if r else [""] * len(names) for r in body if r or len(names) == 1]


def rows_of(table: pa.Table) -> list[list[Any]]:
    cols = [c.to_pylist() for c in table.columns]
    return [list(r) for r in zip(*cols, strict=True)] if cols else []


def compare(
    got: pa.Table,
    want_names: Sequence[str],
    want_rows: Sequence[Sequence[Any]],
    *,
    check_names: bool = True,
) -> list[str]:
    """What differs between ``got`` and the expected names and rows (empty: they match)."""
    problems: list[str] = []
    names = [n.lower() for n in got.column_names]
    if len(names) != len(want_names) or (check_names and names != [n.lower() for n in want_names]):
        problems.append(f"columns {got.column_names} != expected {list(want_names)}")
    rows = rows_of(got)
    if len(rows) != len(want_rows):
        problems.append(f"{len(rows)} rows != expected {len(want_rows)}")
    for i, (g, w) in enumerate(zip(rows, want_rows, strict=False)):
        if len(g) != len(w):
            problems.append(f"row {i}: {len(g)} values != expected {len(w)}")
            continue
        for j, (a, b) in enumerate(zip(g, w, strict=True)):
            if not cells_match(a, b):
                col = got.column_names[j] if j < got.num_columns else str(j)
                problems.append(f"row {i} column {col}: {a!r} != expected {b!r}")
                break
        if len(problems) >= _MAX_PROBLEMS:
            problems.append("…")
            break
    return problems


def compare_answer(got: pa.Table, answer: Path) -> list[str]:
    """Against a reference CSV. Only the number of columns is checked, not their names: the
    answers were written by an older DuckDB that named Q18's ``sum(l_quantity)`` ``sum``
    (names are checked against DuckDB on the raw Parquet instead)."""
    names, rows = read_answer(answer)
    return compare(got, names, rows, check_names=False)


def compare_tables(got: pa.Table, want: pa.Table) -> list[str]:
    return compare(got, want.column_names, rows_of(want))


def cells_match(got: Any, want: Any) -> bool:
    """Whether one value of a result matches the expected one (a value, or text from a CSV)."""
    if got is None or want is None:
        return (got is None or got == "") and (want is None or want in ("", "NULL"))
    if isinstance(got, bool):
        return str(got).lower() == str(want).strip().lower()
    if isinstance(got, Decimal) or isinstance(want, Decimal):
        a, b = _decimal(got), _decimal(want)
        return a is not None and b is not None and abs(round(a, 2) - round(b, 2)) <= CENT
    if isinstance(got, float) or isinstance(want, float):
        x, y = _float(got), _float(want)
        if x is None or y is None:
            return False
        return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=1e-9)
    if isinstance(got, int) and isinstance(want, str):
        try:
            return got == int(want)
        except ValueError:
            return False
    if isinstance(got, dt.datetime | dt.date):
        text = want.isoformat() if isinstance(want, dt.date) else str(want)
        return got.isoformat() == text.replace(" ", "T") or str(got) == text
    if isinstance(got, str) and isinstance(want, str):
        return got.strip() == want.strip()
    return bool(got == want)


def _decimal(v: Any) -> Decimal | None:
    if isinstance(v, Decimal):
        return v
    try:
        return Decimal(str(v).strip())
    except (InvalidOperation, ValueError):
        return None


def _float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
