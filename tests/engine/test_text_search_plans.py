"""Repeated SQL text and hybrid searches (``engine.sql.search_plans``): the same statement with
another query text runs from its kept plan, in DuckDB's, PostgreSQL's and Snowflake's dialects,
also when the search is joined with other tables, and answers exactly as planning it again
would; another process's writes to the searched or the joined table, a row filter and a revoke
are seen by the next statement; errors keep their place in the text."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.accounts import Accounts
from matrixos.engine.sql.search_plans import search_key
from matrixos.errors import AccessDenied, SQLError

try:
    from tests.engine._searchers import as_bob, other_process
except ModuleNotFoundError:
    from _searchers import as_bob, other_process  # type: ignore[no-redef]

WAREHOUSES = ("local",)
ROWS = 60
WORDS = ["vacuum", "optimize", "merge", "checkpoint", "partition", "zorder"]


def _texts(lo: int, hi: int) -> list[str]:
    return [f"word{i} {WORDS[i % len(WORDS)]} files and rows" for i in range(lo, hi)]


@pytest.fixture
def docs(lh: mx.Lakehouse) -> mx.Lakehouse:
    rows = pa.table(
        {
            "id": pa.array(range(ROWS), pa.int64()),
            "text": _texts(0, ROWS),
            "bucket": pa.array([i % 4 for i in range(ROWS)], pa.int64()),
        }
    )
    lh.create_table("kb.docs", rows, format="lance").set_embedding("text", embedder="hash")  # type: ignore[attr-defined]
    lh.create_table(
        "kb.labels",
        pa.table({"bucket": pa.array(range(4), pa.int64()), "label": ["a", "b", "c", "d"]}),
    )
    return lh


def cached(result: mx.Result) -> bool:
    return result.stats.get("plan") == "cached"


def quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# (statement of a quoted query text, dialect)
SHAPES: list[tuple[Callable[[str], str], str]] = [
    (lambda q: f"SELECT id, text FROM text_search(kb.docs, {q}, k => 5)", "duckdb"),
    (
        lambda q: (
            f"SELECT id, _score FROM hybrid_search(kb.docs, {q}, k => 6) AS r "
            "WHERE r.bucket < 3 ORDER BY _score DESC, id"
        ),
        "duckdb",
    ),
    (
        lambda q: (
            f"SELECT r.id, l.label FROM text_search(kb.docs, {q}, k => 8, "
            "filter => 'bucket > 0') AS r JOIN kb.labels AS l ON l.bucket = r.bucket ORDER BY r.id"
        ),
        "duckdb",
    ),
    (
        lambda q: (
            f"SELECT l.label, count(*) AS n FROM hybrid_search(kb.docs, {q}, k => 10) AS r "
            "JOIN kb.labels AS l ON l.bucket = r.bucket GROUP BY l.label ORDER BY l.label"
        ),
        "postgres",
    ),
    (
        lambda q: f"SELECT id, text FROM text_search(kb.docs, {q}, 4) ORDER BY id LIMIT 3",
        "postgres",
    ),
    (
        lambda q: (
            f"SELECT r.id, l.label FROM text_search(kb.docs, {q}, k => 5) AS r "
            "LEFT JOIN kb.labels AS l ON l.bucket = r.bucket ORDER BY r.id"
        ),
        "snowflake",
    ),
]
QUERIES = ["word3 merge", "it's zorder", "word17 word40 vacuum", "checkpoint"]


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_a_kept_text_search_plan_answers_as_planning_again_would(
    docs: mx.Lakehouse, shape: int
) -> None:
    statement, dialect = SHAPES[shape]
    for i, text in enumerate(QUERIES):
        kept = docs.sql(statement(quoted(text)), dialect=dialect)
        # Another text (a comment): a plan of its own, made from scratch.
        fresh = docs.sql(statement(quoted(text)) + f" -- {i}", dialect=dialect)
        assert not cached(fresh)
        want = fresh.to_arrow()
        got = kept.to_arrow()
        assert got.equals(want), (i, got.to_pylist(), want.to_pylist())
        assert want.num_rows > 0
        assert cached(kept) is (i > 0)


def test_the_kept_plan_searches_the_new_text(docs: mx.Lakehouse) -> None:
    for dialect in ("duckdb", "postgres", "snowflake"):
        for i, row in enumerate((5, 31, 47, 12)):
            got = docs.sql(
                f"SELECT id FROM text_search(kb.docs, 'word{row}', k => 1)", dialect=dialect
            )
            assert got.scalar() == row
            assert cached(got) is (i > 0)


def test_only_a_string_literal_standing_as_the_query_is_left_out_of_the_key() -> None:
    def key(sql: str, dialect: str = "duckdb") -> object:
        found = search_key(sql, dialect, "auto", None)
        return None if found is None else found[0]

    one = key("SELECT * FROM text_search(kb.docs, 'a', k => 3)")
    assert one is not None and one == key("SELECT * FROM text_search(kb.docs, 'it''s b', k => 3)")
    assert one != key("SELECT * FROM text_search(kb.docs, 'a', k => 4)")
    assert one != key("SELECT * FROM hybrid_search(kb.docs, 'a', k => 3)")
    assert one != key("SELECT * FROM text_search(kb.docs, 'a', k => 3)", "postgres")
    # an expression, two searches, no search: planned each time
    assert key("SELECT * FROM text_search(kb.docs, 'a' || 'b')") is None
    assert key("SELECT * FROM text_search(t, 'a') JOIN text_search(t, 'b') USING (id)") is None
    assert key("SELECT 'text_search(t, ''a'')'") is None
    assert search_key("SELECT * FROM text_search(t, 'a')", "duckdb", "ray", None) is None
    found = search_key("SELECT * FROM text_search(t, 'it''s')", "snowflake", "auto", None)
    assert found is not None and found[1] == "it's"


def test_an_expression_as_the_query_is_planned_each_time(docs: mx.Lakehouse) -> None:
    for row in (5, 31):
        sql = f"SELECT id FROM text_search(kb.docs, 'word' || '{row}', k => 1)"
        assert docs.sql(sql).scalar() == row
        assert not cached(docs.sql(sql.replace("'word'", "'word' ")))


def test_another_process_writes_to_the_searched_and_the_joined_table_are_seen(
    docs: mx.Lakehouse,
) -> None:
    statement = (
        "SELECT r.id, l.label FROM text_search(kb.docs, '{}', k => 3) AS r "
        "JOIN kb.labels AS l ON l.bucket = r.bucket ORDER BY r.id"
    )
    assert docs.sql(statement.format("word5")).fetchall()[0] == (5, "b")
    assert cached(docs.sql(statement.format("word6")))
    other_process(docs, "lh.sql(\"UPDATE kb.labels SET label = 'B' WHERE bucket = 1\")")
    after = docs.sql(statement.format("word9"))
    assert not cached(after) and after.fetchall()[0] == (9, "B")
    assert cached(again := docs.sql(statement.format("word13"))) and again.fetchall()[0] == (
        13,
        "B",
    )
    other_process(
        docs,
        "lh.table('kb.docs').append(pa.table({'id': pa.array([1000], pa.int64()), "
        "'text': ['quokkaframe'], 'bucket': pa.array([1], pa.int64())}))",
    )
    found = docs.sql(statement.format("quokkaframe"))
    assert found.fetchall() == [(1000, "B")]
    other_process(docs, "lh.table('kb.docs').delete('id = 1000')")
    assert docs.sql(statement.format("quokkaframe")).fetchall() == []


def test_a_row_filter_on_the_joined_table_and_a_revoke_are_seen(docs: mx.Lakehouse) -> None:
    as_bob(docs)

    def labels(text: str) -> tuple[set[str], mx.Result]:
        bob = docs.with_principal(Accounts(docs.catalog).principal("bob"))
        res = bob.sql(
            f"SELECT l.label FROM hybrid_search(kb.docs, '{text}', k => 12) AS r "
            "JOIN kb.labels AS l ON l.bucket = r.bucket",
            dialect="postgres",
        )
        return set(res.to_arrow().column(0).to_pylist()), res

    assert len(labels("merge files")[0]) > 1
    assert cached(labels("vacuum rows")[1])
    docs.sql("ALTER TABLE kb.labels SET ROW FILTER 'bucket = 2' FOR bob")
    for text in ("merge", "partition files"):  # words of rows in bucket 2, among others
        seen, res = labels(text)
        assert seen == {"c"}
    assert cached(res)
    other_process(docs, "lh.sql('REVOKE SELECT ON SCHEMA main.kb FROM bob')")
    with pytest.raises(AccessDenied):
        labels("merge")


def test_errors_keep_their_place_and_match_planning(docs: mx.Lakehouse) -> None:
    wrong = "SELECT\n  nosuch FROM text_search(kb.docs, '{}', k => 3)"
    for text in ("merge", "vacuum"):  # a statement that fails is never kept
        with pytest.raises(SQLError, match="nosuch") as err:
            docs.sql(wrong.format(text))
        assert (err.value.line, err.value.col) == (2, 3)
    statement = "SELECT id FROM text_search(kb.docs, '{}', k => 3, filter => 'nope > 1')"
    for text in ("merge", "vacuum"):
        with pytest.raises(SQLError) as kept_err:
            docs.sql(statement.format(text))
        with pytest.raises(SQLError) as fresh_err:
            docs.sql(statement.format(text) + " -- fresh")
        assert kept_err.value.message == fresh_err.value.message
