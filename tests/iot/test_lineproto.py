"""The line-protocol parser: syntax, types, precisions, errors that name line/column/field,
and the vectorised path agreeing with the per-line scanner."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrixos.errors import PointsRejected
from matrixos.iot.lineproto import parse


def rows(body: bytes | str, **kw: object) -> list[dict]:
    batch = parse(body, **kw)  # type: ignore[arg-type]
    return [r for t in batch.tables.values() for r in t.to_pylist()]


def test_types_tags_and_timestamps() -> None:
    out = rows(b'cpu,host=a,region=eu usage=0.5,n=3i,u=7u,ok=t,msg="x y" 1700000000000000000')
    assert out == [
        {
            "host": "a",
            "region": "eu",
            "usage": 0.5,
            "n": 3,
            "u": 7,
            "ok": True,
            "msg": "x y",
            "time": 1700000000000000000,
            "_line": 1,
        }
    ]


def test_escapes_quotes_comments_and_blank_lines() -> None:
    body = (
        "# a comment\n"
        "\n"
        'wea\\ ther,lo\\,c=San\\ Jose temp=1.5,note="said \\"hi\\"" 10\r\n'
        "weather,loc=x temp=2 20\n"
    )
    batch = parse(body)
    assert set(batch.tables) == {"wea ther", "weather"}
    assert batch.tables["wea ther"].to_pylist()[0] == {
        "lo,c": "San Jose",
        "temp": 1.5,
        "note": 'said "hi"',
        "time": 10,
        "_line": 3,
    }
    assert batch.tables["weather"].column("_line").to_pylist() == [4]


@pytest.mark.parametrize(
    ("precision", "factor"), [("ns", 1), ("us", 1000), ("ms", 10**6), ("s", 10**9)]
)
def test_precisions(precision: str, factor: int) -> None:
    assert rows(b"m v=1 17", precision=precision)[0]["time"] == 17 * factor


def test_missing_timestamp_is_the_write_time() -> None:
    assert rows(b"m v=1", now_ns=123)[0]["time"] == 123


def test_a_bad_line_refuses_the_batch_naming_line_column_and_field() -> None:
    with pytest.raises(PointsRejected) as e:
        parse(b"m v=1\nm v=2\nm v=abc\nm v=4\nm w=\n")
    rejected = e.value.rejected
    assert [(r["line"], r["column"], r["field"]) for r in rejected] == [(3, 5, "v"), (5, 5, "w")]
    assert "line 3, column 5, field 'v'" in str(e.value)
    assert e.value.line == 3


def test_partial_keeps_good_lines_and_lists_bad_ones() -> None:
    batch = parse(b"m v=1\nm v=abc\nm v=3", partial=True)
    assert batch.tables["m"].column("v").to_pylist() == [1.0, 3.0]
    assert [r["line"] for r in batch.rejected] == [2]


@pytest.mark.parametrize(
    ("body", "line", "field"),
    [
        (b'm x=1i\nm x="s"', 2, "x"),  # integer then string (the string line is scanned)
        (b"m x=1i\nm x=1.5", 2, "x"),  # integer then float, both vectorised
        (b"m x=1i\nm x=2i\nm x=T\nm x=3i", 3, "x"),
    ],
)
def test_type_conflict_names_line_and_field(body: bytes, line: int, field: str) -> None:
    with pytest.raises(PointsRejected) as e:
        parse(body)
    first = e.value.rejected[0]
    assert (first["line"], first["field"]) == (line, field)
    assert "type conflict" in first["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"m,time=1 x=1",
        b"m day=1",
        b"m x=1 12a",
        b"m",
        b"m x=1 1 2",
        b"m,t x=1",
        b",t=a x=1",
        b"m x=abc\nm x=1",  # the first value of a column invalid
    ],
)
def test_malformed_lines_are_refused(body: bytes) -> None:
    with pytest.raises(PointsRejected) as e:
        parse(body)
    assert e.value.rejected[0]["line"] == 1
    assert e.value.rejected[0]["column"] >= 1


def test_unknown_precision() -> None:
    with pytest.raises(PointsRejected, match="unknown precision"):
        parse(b"m v=1", "minutes")


_tag = st.text(alphabet="abc", min_size=1, max_size=4)
_field = st.text(alphabet="xyz", min_size=1, max_size=4)
_line = st.tuples(
    st.dictionaries(_tag, _tag, max_size=3),
    st.dictionaries(_field, st.integers(-(2**40), 2**40), min_size=1, max_size=3),
    st.integers(0, 2**60),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_line, min_size=1, max_size=12), st.booleans())
def test_vectorised_and_scanner_agree(points: list, quoted: bool) -> None:
    """The same points, once on the fast path and once forced through the scanner (a string
    field with a quote sends a line there), give the same rows."""
    plain, scanned = [], []
    for tags, fields, ts in points:
        tagset = "".join(f",{k}={v}" for k, v in sorted(tags.items()))
        fs = ",".join(f"{k}={v}i" for k, v in fields.items())
        plain.append(f"m{tagset} {fs} {ts}")
        scanned.append(f'm{tagset} {fs},q="{int(quoted)}" {ts}')
    a = parse("\n".join(plain)).tables["m"]
    b = parse("\n".join(scanned)).tables["m"].drop_columns(["q"])
    assert sorted(a.to_pylist(), key=lambda r: r["_line"]) == sorted(
        b.select(a.column_names).to_pylist(), key=lambda r: r["_line"]
    )


_kinds = {
    "i": st.integers(-(2**40), 2**40).map(lambda v: f"{v}i"),
    "u": st.integers(0, 2**40).map(lambda v: f"{v}u"),
    "f": st.floats(-1e9, 1e9, allow_nan=False).map(repr),
    "b": st.sampled_from(["t", "false", "T", "FALSE", "true"]),
}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["host", "rack", "dc"]), unique=True, max_size=3),
    st.dictionaries(st.sampled_from("abcd"), st.sampled_from("iufb"), min_size=1),
    st.integers(1, 8),
    st.booleans(),
    st.data(),
)
def test_one_shape_bodies_agree_with_the_general_parser(
    tag_keys: list, field_kinds: dict, n: int, stamped: bool, data: st.DataObject
) -> None:
    """A body whose lines share one shape takes the CSV reader's path; a trailing comment
    line sends the same body through the general parser: the same rows and types."""
    lines = []
    for i in range(n):
        tags = "".join(f",{k}={data.draw(_tag)}" for k in tag_keys)
        fields = ",".join(f"{k}={data.draw(_kinds[kind])}" for k, kind in field_kinds.items())
        stamp = f" {1_700_000_000 + i}" if stamped else ""
        lines.append(f"m{tags} {fields}{stamp}")
    body = "\n".join(lines)
    a = parse(body, "s", now_ns=5)
    b = parse(body + "\n# end", "s", now_ns=5)
    assert a.tags == b.tags == {"m": tag_keys}
    assert a.tables["m"].schema == b.tables["m"].schema
    assert a.tables["m"].to_pylist() == b.tables["m"].to_pylist()
    assert a.tables["m"].column("time").to_pylist() == [
        (1_700_000_000 + i) * 10**9 if stamped else 5 for i in range(n)
    ]


@pytest.mark.parametrize(
    ("body", "line", "field"),
    [
        (b"m,h=a x=1i,y=2i 1\nm,h=b x=3i,y=4i 2\nm,h=c x=5i,y=abc 3", 3, "y"),
        (b"m,h=a x=1i 1\nm,h=b x=2.5 2", 2, "x"),  # integer then float: a type conflict
        (b"m,h=a x=1i 1\nm,h= x=2i 2", 2, None),  # an empty tag value
        (b"m,h=a x=1i 1\nm,h=b x=2i 12a", 2, None),  # a bad timestamp
        (b"m,h=a x=1i 1\nm,h=b x=2i 99999999999999999999", 2, None),  # out of range
        (b"m,h=a x=1i 1\nm,time=b x=2i 2", 2, "time"),  # same shape, a reserved key
    ],
)
def test_one_shape_bodies_with_a_bad_line_name_it(
    body: bytes, line: int, field: str | None
) -> None:
    with pytest.raises(PointsRejected) as e:
        parse(body)
    first = e.value.rejected[0]
    assert first["line"] == line
    if field:
        assert first["field"] == field


def test_lines_of_the_same_width_but_another_shape_are_not_mixed_up() -> None:
    """As many separators on every line, but other keys or another tag/field split: each line
    keeps its own columns (the CSV reader's path must not take such a body)."""
    rows = parse(b"m,a=1 x=2i 1\nm,b=1 x=3i 2").tables["m"].to_pylist()
    assert [(r["a"], r["b"], r["x"]) for r in rows] == [("1", None, 2), (None, "1", 3)]
    rows = parse(b"m,a=1 x=2i,y=3i 1\nm,a=1,b=2 x=3i 2").tables["m"].to_pylist()
    assert [(r["a"], r["b"], r["x"], r["y"]) for r in rows] == [
        ("1", None, 2, 3),
        ("1", "2", 3, None),
    ]
    two = parse(b"m,a=1 x=2i 1\nn,a=1 x=2i 2")  # another measurement
    assert set(two.tables) == {"m", "n"}
