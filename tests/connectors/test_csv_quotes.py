"""A quote that opens a CSV field and never closes is refused, never read as fewer rows.

pyarrow reads such a quote as one field running to the end of the file: one row where there
were many, or a value cut short, and no error. Whatever the line endings, the field the quote is
in, or the quotes elsewhere in the file, ingest names the file, the line and the field where the
quote opened, and writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import matrixos as mx
from matrixos.connectors.files import read_files
from matrixos.errors import IngestError, TableNotFound

WAREHOUSES = ("local",)  # the refusal comes before any write: storage plays no part

GOOD = b"id,name,city\n1,ann,oslo\n2,bob,rome\n"

# (file content, line, field) of the quote that never closes.
OPEN_QUOTES = [
    # The shapes: the quote in the last field, with and without a final newline.
    pytest.param(b'id,name\n1,"ann\n2,bob', 2, 2, id="last-field-no-final-newline"),
    pytest.param(b'id,name\n1,"ann\n2,bob\n', 2, 2, id="last-field-final-newline"),
    pytest.param(b'a,b\n1,"x', 2, 2, id="last-line-no-final-newline"),
    pytest.param(b'a,b\n1,"x\n', 2, 2, id="last-line-final-newline"),
    # The quote in a middle field: the rest of the file runs into it.
    pytest.param(b'a,b,c\n1,"x,3\n2,y,4', 2, 2, id="middle-field-no-final-newline"),
    pytest.param(b'a,b,c\n1,"x,3\n2,y,4\n', 2, 2, id="middle-field-final-newline"),
    pytest.param(b'a,b,c\n1,x,3\n"2,y,4', 3, 1, id="first-field"),
    # Windows line endings.
    pytest.param(b'id,name\r\n1,"ann\r\n2,bob', 2, 2, id="crlf-last-field"),
    pytest.param(b'a,b,c\r\n1,"x,3\r\n2,y,4\r\n', 2, 2, id="crlf-middle-field"),
    pytest.param(b'a,b\r\n1,x\r\n2,"y', 3, 2, id="crlf-last-line"),
    # An even number of quote characters: a quote ending a bare field (``1"``, text to
    # pyarrow) or doubled quotes in one balance the open one. These were stored silently:
    # ``,1"\n1,"`` as two rows with an empty last value, ``x",1\n2,"y`` with "y" for "y.
    pytest.param(b'h1,h2\n,1"\n1,"', 3, 2, id="even-count-bare-quote"),
    pytest.param(b'a,b\nx",1\n2,"y', 3, 2, id="even-count-bare-quote-last-line"),
    pytest.param(b'h1,h2\naa""""","1""', 2, 2, id="even-count-doubled-quotes"),
    pytest.param(b'a,b\r\nx",1\r\n2,"y\r\n3,z\r\n', 3, 2, id="even-count-crlf"),
    # Closed quoted fields (holding delimiters, line breaks and "") before the open one.
    pytest.param(b'a,b\n"1,\n2","x ""y"""\n3,"z', 4, 2, id="after-closed-quotes"),
    pytest.param(b'\xef\xbb\xbfa,b\n1,"x', 2, 2, id="byte-order-mark"),
]


def _write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def _assert_refused(err: IngestError, path: str, line: int, field: int) -> None:
    assert (err.path, err.line, err.col) == (path, line, field)
    assert str(err).startswith(f"{path}, line {line}, column {field}: unterminated quoted field")
    assert err.hint is not None and '""' in err.hint


@pytest.mark.parametrize(("content", "line", "field"), OPEN_QUOTES)
def test_ingest_refuses_an_open_quote_and_writes_nothing(
    lh: mx.Lakehouse, tmp_path: Path, content: bytes, line: int, field: int
) -> None:
    bad = _write(tmp_path, "bad.csv", content)
    with pytest.raises(IngestError) as err:
        lh.ingest(bad, "s.new")
    _assert_refused(err.value, bad, line, field)
    with pytest.raises(TableNotFound):
        lh.table("s.new")

    lh.ingest(_write(tmp_path, "good.csv", GOOD), "s.t")
    version = lh.table("s.t").version
    for mode in ("append", "overwrite"):
        with pytest.raises(IngestError) as err:
            lh.ingest(bad, "s.t", mode=mode)
        _assert_refused(err.value, bad, line, field)
    assert lh.table("s.t").version == version
    assert lh.sql("SELECT id, name FROM s.t ORDER BY id").fetchall() == [(1, "ann"), (2, "bob")]


@pytest.mark.parametrize(("content", "line", "field"), OPEN_QUOTES)
def test_tsv_open_quote(tmp_path: Path, content: bytes, line: int, field: int) -> None:
    path = _write(tmp_path, "bad.tsv", content.replace(b",", b"\t"))
    with pytest.raises(IngestError) as err:
        read_files(path)
    _assert_refused(err.value, path, line, field)


def test_an_earlier_problem_is_named_first(tmp_path: Path) -> None:
    # Line 2 has too few fields; the quote that never closes comes after it.
    path = _write(tmp_path, "two.csv", b'a,b\n1\n2,"x')
    with pytest.raises(IngestError) as err:
        read_files(path)
    assert (err.value.line, err.value.col) == (2, 2)
    assert "too few fields: expected 2, got 1" in str(err.value)


@pytest.mark.parametrize(
    ("content", "rows"),
    [
        # Quotes that all close, or are text (not at the start of a field), in every shape
        # the refusals above use: read as written.
        (b'a,b\n1,"x"', [{"a": 1, "b": "x"}]),
        (b'a,b\r\n1,"x\r\ny"\r\n2,5"3', [{"a": 1, "b": "x\r\ny"}, {"a": 2, "b": '5"3'}]),
        (b'h1,h2\n,1"\n1,""', [{"h1": None, "h2": '1"'}, {"h1": 1, "h2": ""}]),
        (b'a,b\nx",1\n2,"y"', [{"a": 'x"', "b": "1"}, {"a": "2", "b": "y"}]),
        (b'a,b\n1,"x ""y"""', [{"a": 1, "b": 'x "y"'}]),
    ],
)
def test_quotes_that_close_are_read(tmp_path: Path, content: bytes, rows: list[dict]) -> None:
    assert read_files(_write(tmp_path, "ok.csv", content)).to_pylist() == rows


def _pyarrow_rows(body: bytes) -> int | None:
    try:
        table = pa_csv.read_csv(
            pa.BufferReader(body), parse_options=pa_csv.ParseOptions(newlines_in_values=True)
        )
    except pa.ArrowInvalid:
        return None
    return table.num_rows


_PIECES = st.sampled_from(["a", "1", ",", '"', '""', "\n", "\r\n", " "])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=14).map("".join))
def test_no_open_quote_is_read_as_rows(tmp_path_factory: pytest.TempPathFactory, body: str) -> None:
    # pyarrow itself tells an open quote: a row added after it is swallowed into the quoted
    # field, so the row count does not grow. Such a file must be refused; any other must not
    # be refused for an open quote.
    content = ("h1,h2\n" + body).encode()
    before = _pyarrow_rows(content)
    after = _pyarrow_rows(content + b"\nx,y\n")
    path = _write(tmp_path_factory.mktemp("q"), "f.csv", content)
    try:
        read_files(path)
        refused = False
    except IngestError as err:
        refused = "unterminated quoted field" in str(err)
    if before is not None and after is not None:
        assert refused == (after == before), content
