"""Binary result format over the MatrixOS wire: psycopg binary cursors (``cursor(binary=True)``)
against a real ``matrixos serve`` get the same values as text cursors, for numeric, date/time,
timestamp(tz), interval (with months), uuid and json (their own types: DuckDB's type names
travel with the result), bytea, arrays of them and multi-dimensional arrays."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.adapt import Loader

from matrixos.server.pg_encode import encode_binary
from matrixos.server.pg_types import INTERVAL, TIMESTAMP, PgInfinity, PgInterval

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse
except ModuleNotFoundError:
    from _serve import MatrixOSServer, ServedWarehouse  # type: ignore[no-redef]

UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
# expression -> (the value psycopg gives, the type OID the column is sent as)
CASES: dict[str, tuple[Any, int]] = {
    "CAST(12.345 AS NUMERIC(10,3))": (Decimal("12.345"), 1700),
    "CAST(-0.00012 AS NUMERIC(18,6))": (Decimal("-0.000120"), 1700),
    "CAST(12345678901234567890.12 AS NUMERIC(38,2))": (Decimal("12345678901234567890.12"), 1700),
    "CAST(3 AS HUGEINT)": (Decimal(3), 1700),
    "DATE '2024-02-29'": (date(2024, 2, 29), 1082),
    "DATE '1900-03-01'": (date(1900, 3, 1), 1082),
    "TIME '12:34:56.789'": (time(12, 34, 56, 789000), 1083),
    "TIMESTAMP '2024-02-29 12:34:56.123456'": (datetime(2024, 2, 29, 12, 34, 56, 123456), 1114),
    "TIMESTAMP '1900-01-01 00:00:00'": (datetime(1900, 1, 1), 1114),
    "CAST('2024-01-01 00:00:00.123456789' AS TIMESTAMP_NS)": (
        datetime(2024, 1, 1, 0, 0, 0, 123456),
        1114,
    ),
    "TIMESTAMPTZ '2024-02-29 12:34:56+02'": (datetime(2024, 2, 29, 10, 34, 56, tzinfo=UTC), 1184),
    # psycopg reads an interval as a timedelta (a month as 30 days, a year as 365)
    "INTERVAL '1 year 2 months 3 days 04:05:06.7'": (
        timedelta(days=365 + 60 + 3, hours=4, minutes=5, seconds=6.7),
        1186,
    ),
    "INTERVAL '-3 days'": (timedelta(days=-3), 1186),
    "INTERVAL '3 days' - INTERVAL '1 second'": (timedelta(days=3, seconds=-1), 1186),
    "TIMESTAMP '2024-01-02' - TIMESTAMP '2024-01-01 12:00'": (timedelta(hours=12), 1186),
    f"CAST('{UUID}' AS UUID)": (uuid.UUID(UUID), 2950),
    """CAST('{"a": [1, 2]}' AS JSON)""": ({"a": [1, 2]}, 114),
    f"ARRAY[CAST('{UUID}' AS UUID), NULL]": ([uuid.UUID(UUID), None], 2951),
    """[CAST('{"b": null}' AS JSON)]""": ([{"b": None}], 199),
    "[[1, 2], [3, NULL]]": ([[1, 2], [3, None]], 1007),
    "[[['x'], ['y']]]": ([[["x"], ["y"]]], 1009),
    "[[DATE '2024-01-01'], [NULL]]": ([[date(2024, 1, 1)], [None]], 1182),
    "CAST('\\xDE\\xAD\\xBE\\xEF' AS BYTEA)": (b"\xde\xad\xbe\xef", 17),
    "{'a': 1, 'b': 'x'}": ({"a": 1, "b": "x"}, 114),
    "ARRAY[CAST(1.5 AS NUMERIC(4,2)), NULL]": ([Decimal("1.50"), None], 1231),
    "ARRAY[DATE '2024-01-01']": ([date(2024, 1, 1)], 1182),
    "ARRAY[TIME '01:02:03']": ([time(1, 2, 3)], 1183),
    "ARRAY[TIMESTAMP '2024-01-01 00:00:01']": ([datetime(2024, 1, 1, 0, 0, 1)], 1115),
    "ARRAY[TIMESTAMPTZ '2024-01-01 00:00:00+00']": ([datetime(2024, 1, 1, tzinfo=UTC)], 1185),
    "ARRAY[INTERVAL '1 month', INTERVAL '36 hours']": (
        [timedelta(days=30), timedelta(hours=36)],
        1187,
    ),
    "ARRAY[CAST('\\xDE\\xAD' AS BYTEA)]": ([b"\xde\xad"], 1001),
    "ARRAY['a', NULL, 'c']": (["a", None, "c"], 1009),
    "ARRAY[true, false]": ([True, False], 1000),
    "CAST([] AS INTEGER[])": ([], 1007),
}


@pytest.fixture(scope="module")
def conn(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> psycopg.Connection[Any]:
    with psycopg.connect(
        host="127.0.0.1", port=matrixos_server.pg_port, dbname="main", user="admin",
        password=served_warehouse.passwords["admin"], autocommit=True,
    ) as c:  # fmt: skip
        yield c


@pytest.mark.parametrize("expr", list(CASES))
def test_binary_and_text_cursors_read_the_same_values(
    conn: psycopg.Connection[Any], expr: str
) -> None:
    want, oid = CASES[expr]
    for binary in (True, False):
        with conn.cursor(binary=binary) as cur:
            # a parameter: the extended protocol, where psycopg asks for binary results
            cur.execute(f"SELECT {expr} AS v WHERE %s", (True,))
            (got,) = cur.fetchone() or (None,)
            assert cur.description is not None and cur.description[0].type_code == oid
            assert got == want, (binary, got)


def test_many_rows_stream_in_binary(conn: psycopg.Connection[Any]) -> None:
    # past the small-result path: rows come in batches from a worker thread
    sql = (
        "SELECT n, CAST(n AS NUMERIC(12,2)) / 4 AS q, DATE '2024-01-01' + CAST(n AS INTEGER) AS d,"
        " INTERVAL '1 month' * CAST(n %% 3 AS INTEGER) AS i, [n, NULL] AS a"
        " FROM big.nums WHERE n < %s ORDER BY n"
    )
    with conn.cursor(binary=True) as cur:
        got = cur.execute(sql, (5000,)).fetchall()
    with conn.cursor() as cur:
        assert got == cur.execute(sql, (5000,)).fetchall()
    assert len(got) == 5000
    assert got[4999] == (
        4999, Decimal("1249.75"), date(2024, 1, 1) + timedelta(days=4999), timedelta(days=30),
        [4999, None],
    )  # fmt: skip


class _RawText(Loader):
    def load(self, data: Any) -> bytes:
        return bytes(data)


class _RawBinary(_RawText):
    format = psycopg.pq.Format.BINARY


def _raw_rows(conn: psycopg.Connection[Any], sql: str, oids: tuple[int, ...]) -> list[Any]:
    """The first row of ``sql`` by a binary, then a text cursor, the columns of types ``oids``
    as the bytes sent (psycopg refuses infinity by default)."""
    got = []
    for binary, loader in ((True, _RawBinary), (False, _RawText)):
        with conn.cursor(binary=binary) as cur:
            for oid in oids:
                cur.adapters.register_loader(oid, loader)
            got.append(cur.execute(sql, (True,)).fetchone())
    return got


def test_infinite_dates_and_timestamps_are_postgresql_infinity(
    conn: psycopg.Connection[Any],
) -> None:
    sql = (
        "SELECT CAST('infinity' AS TIMESTAMP), CAST('-infinity' AS TIMESTAMP),"
        " CAST('infinity' AS DATE), TIMESTAMP '2024-01-01' WHERE %s"
    )
    got = _raw_rows(conn, sql, (1114, 1082))
    assert got[0] == (
        struct.pack("!q", 2**63 - 1), struct.pack("!q", -(2**63)), struct.pack("!i", 2**31 - 1),
        struct.pack("!q", 757_382_400_000_000),  # 2024-01-01 in microseconds since 2000
    )  # fmt: skip
    assert got[1] == (b"infinity", b"-infinity", b"infinity", b"2024-01-01 00:00:00")


def test_infinity_inside_arrays(conn: psycopg.Connection[Any]) -> None:
    sql = (
        "SELECT [CAST('infinity' AS DATE), DATE '2000-01-01'],"
        " [[CAST('-infinity' AS TIMESTAMP)], [NULL]] WHERE %s"
    )
    got = _raw_rows(conn, sql, (1182, 1115))
    # binary: dimensions, has-null flag, element type, (size, lower bound) per dimension,
    # then each element's length and value
    dates = struct.pack("!iiIii", 1, 0, 1082, 2, 1)
    dates += struct.pack("!ii", 4, 2**31 - 1) + struct.pack("!ii", 4, 0)  # 2000-01-01 is day 0
    stamps = struct.pack("!iiIiiii", 2, 1, 1114, 2, 1, 1, 1)
    stamps += struct.pack("!iq", 8, -(2**63)) + struct.pack("!i", -1)
    assert got[0] == (dates, stamps)
    assert got[1] == (b"{infinity,2000-01-01}", b"{{-infinity},{NULL}}")


def test_a_ragged_array_is_a_clear_error(conn: psycopg.Connection[Any]) -> None:
    for binary in (True, False):
        with conn.cursor(binary=binary) as cur, pytest.raises(psycopg.Error) as e:
            cur.execute("SELECT [[1, 2], [3]] AS v WHERE %s", (True,)).fetchall()
        assert "rectangular" in str(e.value) or "ragged" in str(e.value), (binary, e.value)
    # the connection goes on
    assert conn.execute("SELECT [[1], [2]] AS v").fetchone() == ([[1], [2]],)


def test_interval_text_and_binary_forms() -> None:
    assert str(PgInterval(14, 3, 14_706_700_000)) == "1 year 2 mons 3 days 04:05:06.7"
    assert str(PgInterval(-1, 0, 0)) == "-1 mons"
    assert str(PgInterval(0, -1, 3_600_000_000)) == "-1 days +01:00:00"
    assert str(PgInterval(0, 0, -1)) == "-00:00:00.000001"
    assert str(PgInterval(0, 0, 0)) == "00:00:00"
    assert encode_binary(INTERVAL, PgInterval(14, 3, 5)) == struct.pack("!qii", 5, 3, 14)
    assert encode_binary(TIMESTAMP, PgInfinity(False)) == struct.pack("!q", -(2**63))
    with pytest.raises(ValueError, match="rectangular"):
        encode_binary(1016, [[1, 2], [3]])
