"""JSON input that crashed the process, or came back wrong, from pyarrow's reader.

pyarrow 26's JSON reader segfaults on a ``null`` record that starts a block of its parse (the
first record, or one ~1 MiB in) and on nesting ~16,000 levels deep, and builds an invalid list
when a list's first values are null. Each is refused with an error naming the file (and the
line and column where known) or read right. The crash shapes run in a child process, so that a
regression fails this test instead of killing the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import matrixos as mx
from matrixos.connectors.files import read_files
from matrixos.errors import IngestError

WAREHOUSES = ("local",)

# name, content, expected error text (or "" for a read that succeeds): each crashed the
# process before.
_CRASHES: list[tuple[str, bytes, str]] = [
    ("null.json", b"null", "line 1, column 1: expected a JSON object per record, got null"),
    ("null.ndjson", b"\n  null\n", "line 2, column 3: expected a JSON object per record, got null"),
    (
        "block.ndjson",  # 8-byte lines: the null starts pyarrow's second 1 MiB block
        b'{"a":1}\n' * (1 << 17) + b'null\n{"a":2}\n',
        f"line {(1 << 17) + 1}, column 1: expected a JSON object per record, got null",
    ),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply to read"),
    ("deep.ndjson", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "JSON nested too deeply"),
]

_CHILD = """
import json, sys
from matrixos.connectors.files import read_files
from matrixos.errors import IngestError
for path in sys.argv[1:]:
    try:
        result = "rows: %d" % read_files(path).num_rows
    except IngestError as err:
        result = str(err)
    print(json.dumps(result), flush=True)
"""


def test_inputs_that_crashed_pyarrow_are_refused(tmp_path: Path) -> None:
    paths = []
    for name, content, _ in _CRASHES:
        (tmp_path / name).write_bytes(content)
        paths.append(str(tmp_path / name))
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, *paths], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-2000:]
    results = [json.loads(line) for line in child.stdout.splitlines()]
    assert len(results) == len(_CRASHES)
    for path, (_, _, expected), result in zip(paths, _CRASHES, results, strict=True):
        assert result.startswith(path), result
        assert expected in result, result


def _assert_refused(path: Path, content: bytes, where: tuple[int, int], message: str) -> None:
    path.write_bytes(content)
    with pytest.raises(IngestError) as err:
        read_files(str(path))
    assert (err.value.path, err.value.line, err.value.col) == (str(path), *where)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("name", "content", "line", "col"),
    [
        # Read as a row of nulls before, where it did not crash.
        ("mid.ndjson", b'{"a":1}\nnull\n{"a":2}\n', 2, 1),
        ("same-line.ndjson", b'{"a":1} null\n', 1, 9),
        ("stream.json", b'{\n  "a": 1\n}\nnull\n', 4, 1),
        ("bom.ndjson", b'\xef\xbb\xbf{"a":1}\r\nnull\r\n', 2, 1),
    ],
)
def test_a_null_record_is_refused(
    tmp_path: Path, name: str, content: bytes, line: int, col: int
) -> None:
    _assert_refused(
        tmp_path / name, content, (line, col), "expected a JSON object per record, got null"
    )


def test_null_values_inside_records_are_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.ndjson"
    path.write_text(
        '{"a": null, "b": [1, null], "s": "null"}\n'
        '{"a":null,"b":[null],"s":"x null"}\n'
        '{"a": 2, "b": [ null, 3], "s": "nullable"}\n'
    )
    assert read_files(str(path)).to_pylist() == [
        {"a": None, "b": [1, None], "s": "null"},
        {"a": None, "b": [None], "s": "x null"},
        {"a": 2, "b": [None, 3], "s": "nullable"},
    ]


@pytest.mark.parametrize("decoy", ["", "]", '\\"}', "\\\\"])
def test_nesting_depth_counts_structure_only(tmp_path: Path, decoy: str) -> None:
    # Brackets and escaped quotes inside strings do not hide the depth, nor add to it.
    def document(depth: int) -> str:
        opening = '{"x":"' + decoy + '","a":' if decoy else '{"a":'
        return opening * depth + "1" + "}" * depth + "\n"

    deep = tmp_path / "deep.ndjson"
    deep.write_text(document(1001))
    with pytest.raises(IngestError, match=r"nested too deeply to read \(more than 1000 levels\)"):
        read_files(str(deep))
    ok = tmp_path / "ok.ndjson"
    ok.write_text(document(40))
    assert read_files(str(ok)).num_rows == 1


def test_brackets_in_strings_are_not_nesting(tmp_path: Path) -> None:
    path = tmp_path / "text.ndjson"
    path.write_text(json.dumps({"s": "[" * 5000 + '"{' * 100}) + "\n")
    assert read_files(str(path)).column("s").to_pylist() == ["[" * 5000 + '"{' * 100]


def test_lists_whose_first_values_are_null(tmp_path: Path) -> None:
    # pyarrow built these with offsets past the list values: an invalid table that failed in
    # the write with a raw ArrowInvalid.
    rows = [
        {"id": 1, "a": [None, 1], "s": {"l": [None, "x"]}},
        {"id": 2, "a": [None, None, 3], "s": {"l": []}},
    ]
    lines = tmp_path / "lists.ndjson"
    lines.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    array = tmp_path / "lists.json"
    array.write_text(json.dumps(rows))
    for path in (lines, array):
        table = read_files(str(path))
        table.validate(full=True)
        assert table.to_pylist() == rows
    with mx.connect(str(tmp_path / "wh")) as lh:
        lh.ingest(str(lines), "s.lists")
        got = lh.sql("SELECT id, a FROM s.lists ORDER BY id").fetchall()
    assert got == [(1, [None, 1]), (2, [None, None, 3])]


def test_records_side_by_side_on_a_line_are_located(tmp_path: Path) -> None:
    # pyarrow reads two objects on one line; locating a bad value raised a raw JSONDecodeError.
    path = tmp_path / "pair.ndjson"
    path.write_text('{"a": 1}{"a": 2.5}\n{"a": 3}\n')
    with pytest.raises(IngestError) as err:
        read_files(str(path), schema=pa.schema([("a", pa.int64())]))
    assert (err.value.line, err.value.col) == (1, 15)
    assert "invalid value 2.5 in column 'a'" in str(err.value)


@pytest.mark.parametrize(
    ("name", "content", "line", "col"),
    [
        # A value: stored as invalid UTF-8 strings before; a member name, top-level or nested:
        # a raw UnicodeDecodeError when the name was used.
        ("value.ndjson", b'{"a": "ok"}\n{"a": "caf\xe9"}\n', 2, 11),
        ("name.ndjson", b'{"\xff": 1}\n', 1, 3),
        ("nested.json", b'[{"a": {"b\xff": 1}}]', 1, 11),
        ("after-text.ndjson", '{"a": "é"}\n{"a": "é'.encode() + b'\xff"}\n', 2, 9),
    ],
)
def test_json_not_utf8(tmp_path: Path, name: str, content: bytes, line: int, col: int) -> None:
    _assert_refused(tmp_path / name, content, (line, col), "not valid UTF-8 text")


_TEXT = st.lists(st.sampled_from([*'ab é"\\[]{}:,\n', "null"]), max_size=8).map("".join)
_RECORD = st.fixed_dictionaries(
    {
        "n": st.none() | st.integers(-(2**53), 2**53),
        "s": st.none() | _TEXT,
        "l": st.none() | st.lists(st.none() | st.integers(0, 9), max_size=4),
    }
)


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(_RECORD, min_size=1, max_size=6),
    layout=st.sampled_from(["ndjson", "array", "pretty"]),
    null_at=st.none() | st.integers(0, 6),
)
def test_json_records_come_back_as_written(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[dict[str, object]],
    layout: str,
    null_at: int | None,
) -> None:
    # Every file pyarrow reads is read right (leading nulls in lists, "null" and brackets in
    # strings), and a null record is refused, wherever it is.
    written: list[object] = list(records)
    if null_at is not None:
        written.insert(min(null_at, len(written)), None)
    if layout == "ndjson":
        name, text = "f.ndjson", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in written)
    elif layout == "array":
        name, text = "f.json", json.dumps(written, ensure_ascii=False)
    else:
        name, text = "f.json", "\n".join(json.dumps(r, indent=2) for r in written)
    path = tmp_path_factory.mktemp("json") / name
    path.write_text(text, encoding="utf-8")
    if null_at is None:
        assert read_files(str(path)).to_pylist() == records
        return
    with pytest.raises(IngestError, match="got null"):
        read_files(str(path))
