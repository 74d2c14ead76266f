"""Repeated SQL searches (``engine.sql.search_plans``): the same statement with another query
vector runs from its kept plan (the search, then DuckDB or an Arrow program over its rows), and
answers exactly as planning it again would; a policy, a grant, another process's append or
delete is seen by the next statement; errors keep their place in the text."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.accounts import Accounts
from matrixos.engine import search
from matrixos.errors import AccessDenied, MatrixOSError, SQLError
from matrixos.lance_table import lance_table_or_error

try:
    from tests.engine._searchers import as_bob, other_process
except ModuleNotFoundError:
    from _searchers import as_bob, other_process  # type: ignore[no-redef]

WAREHOUSES = ("local",)
DIM = 16  # the shortest list read as a query vector before the parse
ROWS = 300


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    search.clear_cache()
    yield
    search.clear_cache()


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _rows(lo: int, hi: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(np.arange(lo, hi, dtype=np.int64)),
            "text": pa.array([f"passage {i}" for i in range(lo, hi)]),
            "bucket": pa.array(np.arange(lo, hi, dtype=np.int64) % 10),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(_vectors(hi - lo, 7).ravel()), DIM
            ),
        }
    )


@pytest.fixture
def docs(lh: mx.Lakehouse) -> mx.Lakehouse:
    t = lance_table_or_error(lh.create_table("kb.vecs", _rows(0, ROWS), format="lance"))
    t.create_index("vector", index_type="flat", metric="cosine")
    deadline = time.monotonic() + 120
    while search.cache_info()["building"]:
        assert time.monotonic() < deadline, "the background cache build did not finish"
        time.sleep(0.05)
    return lh


def literal(v: np.ndarray | list[float]) -> str:
    return "[" + ", ".join(repr(float(x)) for x in v) + "]"


# Shapes the Arrow program runs (True) and shapes left to DuckDB (False).
SHAPES: list[tuple[Callable[[str], str], bool]] = [
    (lambda v: f"SELECT id, text FROM vector_search(kb.vecs, {v}, k => 10)", True),
    (
        lambda v: (
            f"SELECT * FROM vector_search('kb.vecs', {v}, k => 12) AS r "
            "WHERE r.bucket < 5 AND NOT text IS NULL ORDER BY _score DESC, id"
        ),
        True,
    ),
    (
        lambda v: (
            f"SELECT id AS i, _score FROM vector_search(kb.vecs, {v}, k => 8, "
            "filter => 'bucket = 3') WHERE _score > 0.1 OR id = 7 LIMIT 3 OFFSET 1"
        ),
        True,
    ),
    (lambda v: f"SELECT id FROM vector_search(kb.vecs, {v}, 5) WHERE -1 < _score", True),
    (
        lambda v: (
            f"SELECT bucket, count(*) AS n FROM vector_search(kb.vecs, {v}, k => 30) "
            "GROUP BY bucket ORDER BY bucket"
        ),
        False,
    ),
    (
        lambda v: (
            f"SELECT upper(text) AS t FROM vector_search(kb.vecs, {v}, k => 4) "
            "WHERE text LIKE 'passage%'"
        ),
        False,
    ),
]


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_a_kept_search_plan_answers_as_planning_again_would(docs: mx.Lakehouse, shape: int) -> None:
    statement, arrow = SHAPES[shape]
    queries = _vectors(4, 100 + shape)
    for i, q in enumerate(queries):
        kept = docs.sql(statement(literal(q)))
        # Another text (a comment): a plan of its own, made from scratch.
        fresh = docs.sql(statement(literal(q)) + f" -- {i}")
        assert fresh.stats.get("plan") != "cached"
        want = fresh.to_arrow()
        got = kept.to_arrow()
        assert got.equals(want), (i, got.to_pylist(), want.to_pylist())
        assert want.num_rows > 0
        if i > 0:
            assert kept.stats["plan"] == "cached"
        if i > 1:  # the first run of the plan compared the Arrow program with DuckDB
            assert (kept.stats.get("executor") == "arrow") is arrow


def test_the_kept_plan_searches_the_new_vector(docs: mx.Lakehouse) -> None:
    rows = _rows(0, ROWS)
    for i in (5, 77, 150, 299):
        q = rows.column("vector")[i].as_py()
        got = docs.sql(f"SELECT id FROM vector_search(kb.vecs, {literal(q)}, k => 1)")
        assert got.scalar() == i


def test_a_new_row_filter_and_a_revoke_are_seen_by_the_next_statement(
    docs: mx.Lakehouse,
) -> None:
    as_bob(docs)

    def buckets(q: np.ndarray) -> tuple[set[int], mx.Result]:
        # A principal holds the grants it was made with: a new one per statement, as a server
        # makes per request.
        bob = docs.with_principal(Accounts(docs.catalog).principal("bob"))
        res = bob.sql(f"SELECT bucket FROM vector_search(kb.vecs, {literal(q)}, k => 10)")
        return set(res.to_arrow().column(0).to_pylist()), res

    queries = _vectors(6, 3)
    assert len(buckets(queries[0])[0]) > 1
    assert buckets(queries[1])[1].stats["plan"] == "cached"
    docs.sql("ALTER TABLE kb.vecs SET ROW FILTER 'bucket = 4' FOR bob")
    for q in queries[2:4]:  # planned again under the filter, then kept with it
        seen, res = buckets(q)
        assert seen == {4}
    assert res.stats["plan"] == "cached"
    bob = docs.with_principal(Accounts(docs.catalog).principal("bob"))
    text = f"SELECT id, _score FROM vector_search(kb.vecs, {literal(queries[3])}, k => 10)"
    bob.sql(text + " -- 1")  # kept (DuckDB over the hits: the row filter wraps them)
    kept = bob.sql(text + " -- 1")
    assert kept.stats["plan"] == "cached" and "executor" not in kept.stats
    assert kept.to_arrow().equals(bob.sql(text + " -- 2").to_arrow())
    other_process(docs, "lh.sql('REVOKE SELECT ON SCHEMA main.kb FROM bob')")
    with pytest.raises(AccessDenied):
        buckets(queries[4])


def test_another_process_append_and_delete_are_seen(docs: mx.Lakehouse) -> None:
    q = _vectors(1, 99)[0]
    statement = f"SELECT id, text FROM vector_search(kb.vecs, {literal(q)}, k => 3)"
    assert 1000 not in docs.sql(statement).to_arrow().column("id").to_pylist()
    assert docs.sql(statement).stats["plan"] == "cached"
    other_process(
        docs,
        "lh.table('kb.vecs').append(pa.table({'id': pa.array([1000], pa.int64()), "
        "'text': ['new'], 'bucket': pa.array([0], pa.int64()), "
        f"'vector': pa.FixedSizeListArray.from_arrays(pa.array({q.tolist()!r}, pa.float32()), "
        f"{DIM})}}))",
    )
    got = docs.sql(statement)
    assert got.to_arrow().column("id").to_pylist()[0] == 1000
    assert got.stats["plan"] == "cached"
    other_process(docs, "lh.table('kb.vecs').delete('id = 1000')")
    assert 1000 not in docs.sql(statement).to_arrow().column("id").to_pylist()


def test_errors_keep_their_place_and_match_planning(docs: mx.Lakehouse) -> None:
    q = _vectors(2, 5)
    wrong = f"SELECT\n  nosuch FROM vector_search(kb.vecs, {literal(q[0])}, k => 3)"
    for _ in range(2):  # a statement that fails is never kept
        with pytest.raises(SQLError, match="nosuch") as err:
            docs.sql(wrong)
        assert (err.value.line, err.value.col) == (2, 3)
    statement = "SELECT id FROM vector_search(kb.vecs, {}, k => 3)"
    docs.sql(statement.format(literal(q[0])))
    assert docs.sql(statement.format(literal(q[1]))).stats["plan"] == "cached"
    short = statement.format(literal([0.5] * (DIM + 1)))  # another dimension: same shape
    with pytest.raises(MatrixOSError, match="holds 16-d vectors") as kept_err:
        docs.sql(short)
    with pytest.raises(MatrixOSError) as fresh_err:
        docs.sql(short + " -- fresh")
    assert type(kept_err.value) is type(fresh_err.value)
    assert kept_err.value.message == fresh_err.value.message
    assert docs.sql(statement.format(literal(q[0]))).scalar() is not None


def test_every_spelling_of_a_number_reads_alike_and_a_list_that_is_not_numbers_fails(
    docs: mx.Lakehouse,
) -> None:
    q = _vectors(1, 11)[0].astype(np.float64)
    q[:4] = [0.5, -0.25, 3.0, 0.001]
    statement = "SELECT id, _score FROM vector_search(kb.vecs, [{}], k => 5)"
    plain = docs.sql(statement.format(", ".join(repr(float(x)) for x in q))).to_arrow()
    # The same numbers spelled as SQL allows: a leading dot, a trailing dot, a sign, exponents.
    spelled = ["+.5", "-2.5e-1", "3.", "1E-3", *(repr(float(x)) for x in q[4:])]
    for text in (", ".join(spelled), " , ".join(spelled) + "  "):
        got = docs.sql(statement.format(text))
        assert got.to_arrow().equals(plain)
    assert got.stats["plan"] == "cached"
    # An item that is not a number: the parser's error, at its place, kept plan or not.
    broken = ", ".join(spelled[:-1]) + ", 1 2"
    for suffix in ("", " -- fresh"):
        with pytest.raises(SQLError) as err:
            docs.sql(statement.format(broken) + suffix)
        assert err.value.line == 1 and err.value.col is not None
        assert err.value.col > len("SELECT id, _score FROM vector_search(kb.vecs, [")


@pytest.mark.parametrize("dialect", ["postgres", "snowflake"])
def test_a_vector_in_another_dialect_is_kept_as_a_bracket_list_or_an_array(
    docs: mx.Lakehouse, dialect: str
) -> None:
    rows = _rows(0, ROWS)
    statement = "SELECT id, _score FROM vector_search(kb.vecs, {}, k => 3) ORDER BY _score DESC"
    for i, row in enumerate((5, 77, 150, 299)):
        q = rows.column("vector")[row].as_py()
        for j, spelled in enumerate((literal(q), "ARRAY" + literal(q))):
            kept = docs.sql(statement.format(spelled), dialect=dialect)
            fresh = docs.sql(statement.format(spelled) + f" -- {i}.{j}", dialect=dialect)
            assert not cached(fresh)
            got, want = kept.to_arrow(), fresh.to_arrow()
            assert got.equals(want) and got.column("id")[0].as_py() == row
            assert cached(kept) is (i > 0 or j > 0)  # [..] and ARRAY[..]: one plan
    # A list that is no query vector (an expression, numbers of another kind) is planned.
    sum_list = "SELECT id FROM vector_search(kb.vecs, {} || [], k => 1)"
    for row in (5, 77):
        q = rows.column("vector")[row].as_py()
        got = docs.sql(sum_list.format(literal(q)), dialect="duckdb")
        assert got.scalar() == row and not cached(got)


def cached(result: mx.Result) -> bool:
    return result.stats.get("plan") == "cached"
