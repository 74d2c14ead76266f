"""Time-series SQL (engine/timeseries.py) on a real series table, in DuckDB's and PostgreSQL's
dialects: time_bucket, gap filling with locf/interpolate, first/last, the latest point per
series, ASOF joins, delta and rate (with a counter reset)."""

from __future__ import annotations

import datetime as dt
import math

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.errors import SQLError

WAREHOUSES = ("local",)
T0 = dt.datetime(2024, 1, 1)


def at(minute: int, second: int = 10) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minute, seconds=second)


@pytest.fixture
def cpu(lh: mx.Lakehouse) -> mx.Lakehouse:
    """Hosts a (minutes 0, 1, 4, 5, second 10) and b (0, 4, 5, second 20); usage =
    10 * minute (+1 on b); a counter ``bytes`` that resets on b at minute 5."""
    rows = []
    for host, minutes in (("a", [0, 1, 4, 5]), ("b", [0, 4, 5])):
        for m in minutes:
            counter = m * 100 if not (host == "b" and m == 5) else 30
            rows.append(
                {
                    "time": at(m, 10 if host == "a" else 20),  # no ties in time
                    "host": host,
                    "usage": float(10 * m + (host == "b")),
                    "bytes": counter,
                }
            )
    lh.create_table("iot.cpu", pa.Table.from_pylist(rows))
    return lh


GAPFILL = {
    "duckdb": """
        SELECT time_bucket_gapfill(INTERVAL '1 minute', time, TIMESTAMP '2024-01-01 00:00',
                                   TIMESTAMP '2024-01-01 00:06') AS bucket, host,
               avg(usage) AS avg, locf(avg(usage)) AS carried, interpolate(avg(usage)) AS line
        FROM iot.cpu GROUP BY bucket, host ORDER BY host, bucket""",
    "postgres": """
        SELECT time_bucket_gapfill('1 minute', time, '2024-01-01', '2024-01-01 00:06') AS bucket,
               host, avg(usage) AS avg, locf(avg(usage)) AS carried,
               interpolate(avg(usage)) AS line
        FROM iot.cpu GROUP BY 1, 2 ORDER BY 2, 1""",
}


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_gapfill_emits_every_bucket_per_group_with_locf_and_interpolate(
    cpu: mx.Lakehouse, dialect: str
) -> None:
    rows = cpu.sql(GAPFILL[dialect], dialect=dialect).to_arrow().to_pylist()
    assert [(r["host"], r["bucket"].minute) for r in rows] == [
        (h, m) for h in "ab" for m in range(6)
    ]
    a = [r for r in rows if r["host"] == "a"]
    b = [r for r in rows if r["host"] == "b"]
    assert [r["avg"] for r in a] == [0.0, 10.0, None, None, 40.0, 50.0]
    assert [r["carried"] for r in a] == [0.0, 10.0, 10.0, 10.0, 40.0, 50.0]
    assert [r["line"] for r in a] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert [r["carried"] for r in b] == [1.0, 1.0, 1.0, 1.0, 41.0, 51.0]
    assert [r["line"] for r in b] == [1.0, 11.0, 21.0, 31.0, 41.0, 51.0]


def test_gapfill_without_groups_and_default_order(cpu: mx.Lakehouse) -> None:
    rows = cpu.sql(
        "SELECT time_bucket_gapfill('1 minute', time, '2024-01-01 00:00', '2024-01-01 00:04') "
        "AS b, count(*) AS n, locf(max(usage)) FROM iot.cpu WHERE host = 'a' GROUP BY b",
        dialect="postgres",
    ).to_arrow()
    assert rows.column_names == ["b", "n", "locf"]
    # buckets 0..3 filled; the rows at minutes 4 and 5 (outside [start, finish)) still come
    assert [r.minute for r in rows.column("b").to_pylist()] == [0, 1, 2, 3, 4, 5]
    assert rows.column("n").to_pylist() == [1, 1, None, None, 1, 1]
    assert rows.column("locf").to_pylist() == [0.0, 10.0, 10.0, 10.0, 40.0, 50.0]


@pytest.mark.parametrize(
    "where",
    [
        "time >= '2024-01-01 00:00' AND time < '2024-01-01 00:06' AND host = 'b'",
        "host = 'b' AND time BETWEEN '2024-01-01 00:00' AND '2024-01-01 00:05:30'",
        "'2024-01-01 00:00' <= time AND time <= '2024-01-01 00:05:30' AND host = 'b'",
    ],
)
def test_gapfill_takes_its_range_from_where(cpu: mx.Lakehouse, where: str) -> None:
    """TimescaleDB's two-argument form: start and finish from the WHERE clause."""
    rows = cpu.sql(
        "SELECT time_bucket_gapfill('1 minute', time) AS m, locf(avg(usage)) AS u "
        f"FROM iot.cpu WHERE {where} GROUP BY m",
        dialect="postgres",
    ).fetchall()
    assert [(r[0].minute, r[1]) for r in rows] == [
        (0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0), (4, 41.0), (5, 51.0)
    ]  # fmt: skip


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_time_bucket_first_last(cpu: mx.Lakehouse, dialect: str) -> None:
    width = "'2 minutes'" if dialect == "postgres" else "INTERVAL '2 minutes'"
    rows = cpu.sql(
        f"SELECT time_bucket({width}, time) AS b, first(usage, time) AS f, "
        "last(usage, time) AS l, count(*) AS n FROM iot.cpu GROUP BY 1 ORDER BY 1",
        dialect=dialect,
    ).fetchall()
    assert [(r[0].minute, r[1], r[2], r[3]) for r in rows] == [
        (0, 0.0, 10.0, 3),  # minute 0 on a and b (first: the earliest, a's 0.0), a's minute 1
        (4, 40.0, 51.0, 4),
    ]


def test_time_bucket_with_origin(cpu: mx.Lakehouse) -> None:
    rows = cpu.sql(
        "SELECT DISTINCT time_bucket('2 minutes', time, TIMESTAMP '2000-01-01 00:01') AS b "
        "FROM iot.cpu ORDER BY 1",
        dialect="postgres",
    ).fetchall()
    assert [r[0].minute for r in rows] == [59, 1, 3, 5]  # 23:59 the day before, 00:01, …


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        (
            "postgres",
            "SELECT DISTINCT ON (host) host, time, usage FROM iot.cpu ORDER BY host, time DESC",
        ),
        (
            "duckdb",
            "SELECT host, time, usage FROM iot.cpu "
            "QUALIFY row_number() OVER (PARTITION BY host ORDER BY time DESC) = 1 ORDER BY host",
        ),
        (
            "postgres",
            "SELECT host, max(time) AS time, last(usage, time) AS usage FROM iot.cpu "
            "GROUP BY host ORDER BY host",
        ),
    ],
)
def test_latest_point_per_series(cpu: mx.Lakehouse, dialect: str, sql: str) -> None:
    rows = cpu.sql(sql, dialect=dialect).fetchall()
    assert [(r[0], r[1].minute, r[2]) for r in rows] == [("a", 5, 50.0), ("b", 5, 51.0)]


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_asof_join(cpu: mx.Lakehouse, dialect: str) -> None:
    cpu.create_table(
        "iot.deploys",
        pa.table(
            {
                "host": ["a", "a", "b"],
                "at": [at(0, 0), at(3, 0), at(4, 30)],
                "release": ["r1", "r2", "r9"],
            }
        ),
    )
    rows = cpu.sql(
        "SELECT c.host, c.time, d.release FROM iot.cpu c ASOF LEFT JOIN iot.deploys d "
        "ON c.host = d.host AND c.time >= d.at ORDER BY c.host, c.time",
        dialect=dialect,
    ).fetchall()
    assert [(r[0], r[1].minute, r[2]) for r in rows] == [
        ("a", 0, "r1"),
        ("a", 1, "r1"),
        ("a", 4, "r2"),
        ("a", 5, "r2"),
        ("b", 0, None),
        ("b", 4, None),  # 00:04:20 is before b's deploy at 00:04:30
        ("b", 5, "r9"),
    ]


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_delta_and_rate_with_counter_reset(cpu: mx.Lakehouse, dialect: str) -> None:
    rows = (
        cpu.sql(
            "SELECT host, time, delta(bytes) OVER (PARTITION BY host ORDER BY time) AS d, "
            "rate(bytes, time) OVER (PARTITION BY host) AS r FROM iot.cpu ORDER BY host, time",
            dialect=dialect,
        )
        .to_arrow()
        .to_pylist()
    )
    b = [r for r in rows if r["host"] == "b"]
    assert [r["d"] for r in b] == [None, 400, -370]  # delta is plain: it goes down
    assert b[0]["r"] is None
    assert math.isclose(b[1]["r"], 400 / 240)
    # the counter went 400 → 30: it was reset and counted 30 since, over 60 s
    assert math.isclose(b[2]["r"], 30 / 60)
    a = [r for r in rows if r["host"] == "a"]
    assert [r["d"] for r in a] == [None, 100, 300, 100]
    assert all(math.isclose(r["r"], 100 / 60) for r in a[1:])


def test_delta_and_rate_over_a_named_window(cpu: mx.Lakehouse) -> None:
    rows = cpu.sql(
        "SELECT delta(bytes) OVER w AS d, rate(bytes, time) OVER w AS r FROM iot.cpu "
        "WHERE host = 'a' WINDOW w AS (PARTITION BY host ORDER BY time) ORDER BY time",
        dialect="postgres",
    ).fetchall()
    assert [r[0] for r in rows] == [None, 100, 300, 100]
    assert rows[0][1] is None and all(math.isclose(r[1], 100 / 60) for r in rows[1:])


@pytest.mark.parametrize(
    ("sql", "message", "line", "col"),
    [
        ("SELECT locf(usage) FROM iot.cpu", "fills the gaps", 1, 8),
        ("SELECT host,\n  time_bucket('soon', time) FROM iot.cpu", "is not an interval", 2, 15),
        ("SELECT\n delta(bytes) FROM iot.cpu", "is a window function", 2, 2),
        ("SELECT delta(bytes) OVER (PARTITION BY host) FROM iot.cpu", "ordered window", 1, 8),
        ("SELECT time_bucket_gapfill('1 minute', time) AS b, count(*) FROM iot.cpu "
         "WHERE time > '2024-01-01' GROUP BY b", "takes 4 arguments", 1, 8),
        ("SELECT time_bucket_gapfill('1 minute', time, '2024-01-01', '2024-01-02') AS b "
         "FROM iot.cpu", "needs GROUP BY", 1, 8),
        ("SELECT host FROM iot.cpu WHERE time_bucket_gapfill('1 minute', time, '2024-01-01', "
         "'2024-01-02') > time", "must be an item", 1, 32),
        ("SELECT time_bucket_gapfill('1 second', time, '2000-01-01', '2024-01-01') AS b, "
         "count(*) FROM iot.cpu GROUP BY b", "757,382,400 buckets", 1, 8),
    ],
)  # fmt: skip
def test_misuse_names_the_position(
    cpu: mx.Lakehouse, sql: str, message: str, line: int, col: int
) -> None:
    with pytest.raises(SQLError, match=message) as info:
        cpu.sql(sql, dialect="postgres")
    assert (info.value.line, info.value.col) == (line, col)


def test_gapfill_in_a_cte_and_a_subquery(cpu: mx.Lakehouse) -> None:
    inner = (
        "SELECT time_bucket_gapfill('1 minute', time, '2024-01-01 00:00', '2024-01-01 00:06') "
        "AS m, host, locf(avg(usage)) AS u FROM iot.cpu GROUP BY m, host"
    )
    cte = cpu.sql(
        f"WITH filled AS ({inner}) SELECT host, count(*), sum(u) FROM filled "
        "GROUP BY host ORDER BY host",
        dialect="postgres",
    ).fetchall()
    assert cte == [("a", 6, 0 + 10 + 10 + 10 + 40 + 50.0), ("b", 6, 1 + 1 + 1 + 1 + 41 + 51.0)]
    sub = cpu.sql(f"SELECT count(*) FROM ({inner}) AS f WHERE u IS NOT NULL").scalar()
    assert sub == 12


def test_time_series_functions_stay_inside_the_sandbox(cpu: mx.Lakehouse) -> None:
    """The rewrite's own pieces (range, windows) pass the sandbox; file readers still don't."""
    with pytest.raises(mx.errors.AccessDenied):
        cpu.sql(
            "SELECT time_bucket_gapfill('1 minute', time, '2024-01-01', '2024-01-02') AS b, "
            "count(*) FROM read_parquet('/etc/passwd') GROUP BY b",
            dialect="postgres",
        )


def test_explain_and_ctas_see_the_rewrite(cpu: mx.Lakehouse) -> None:
    plan = cpu.sql(f"EXPLAIN {GAPFILL['postgres']}", dialect="postgres").to_arrow()
    assert plan.num_rows > 0
    cpu.sql(f"CREATE TABLE iot.filled AS {GAPFILL['postgres']}", dialect="postgres")
    assert cpu.table("iot.filled").to_arrow().num_rows == 12
