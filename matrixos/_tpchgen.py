"""TPC-H generator script, run by ``matrixos.tpch`` in the generator's own venv.

Usage: ``python _tpchgen.py OUT_DIR SCALE``. It imports nothing but the standard library and
DuckDB 1.4.4 (whose ``tpch`` extension binary comes from the ``duckdb-ext-tpch`` wheel and is
loaded from disk, never downloaded), so it must not import ``matrixos``. It writes::

    OUT_DIR/parquet/<table>/part-0.parquet   (zstd, 122,880-row row groups)
    OUT_DIR/queries/qNN.sql                  (the 22 query texts, unqualified table names)
    OUT_DIR/answers_sf<SCALE>/qNN.csv        (DuckDB's reference answers, pipe-separated CSV;
                                              only for the scales DuckDB ships: 0.01, 0.1, 1)

and prints one line per phase on standard output.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

TABLES = ("lineitem", "orders", "partsupp", "part", "customer", "supplier", "nation", "region")
ROW_GROUP_SIZE = 122_880


def extension_dir() -> Path:
    """The ``extensions`` folder the ``duckdb-ext-tpch`` wheel installs into site-packages."""
    for entry in sys.path:
        candidate = Path(entry or ".") / "duckdb_ext" / "extensions"
        if any(candidate.glob("v*/*/tpch.duckdb_extension")):
            return candidate
    raise SystemExit("the duckdb-ext-tpch wheel is not installed in this environment")


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: _tpchgen.py OUT_DIR SCALE", file=sys.stderr)
        return 2
    import duckdb

    out, scale = Path(argv[1]), float(argv[2])
    con = duckdb.connect()
    # Offline: the extension is the wheel's file; DuckDB must not try to fetch one.
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute(f"SET extension_directory = {_sql_string(str(extension_dir()))}")
    con.execute("LOAD tpch")

    t0 = time.perf_counter()
    con.execute("CALL dbgen(sf = ?)", [scale])
    print(f"dbgen sf={scale:g}: {time.perf_counter() - t0:.1f}s", flush=True)

    for table in TABLES:
        target = out / "parquet" / table / "part-0.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        con.execute(
            f"COPY {table} TO {_sql_string(str(target))} "
            f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_SIZE})"
        )
        rows = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        print(f"{table}: {rows[0] if rows else 0:,} rows", flush=True)

    queries = out / "queries"
    queries.mkdir(parents=True, exist_ok=True)
    for nr, text in con.execute("SELECT query_nr, query FROM tpch_queries()").fetchall():
        (queries / f"q{nr:02d}.sql").write_text(text)

    answers = con.execute(
        "SELECT query_nr, answer FROM tpch_answers() WHERE abs(scale_factor - ?) < 1e-9",
        [scale],
    ).fetchall()
    if answers:
        folder = out / f"answers_sf{scale:g}"
        folder.mkdir(parents=True, exist_ok=True)
        for nr, answer in answers:
            (folder / f"q{nr:02d}.csv").write_text(answer)
    print(f"22 queries, {len(answers)} reference answers", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
