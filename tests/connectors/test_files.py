"""Tests for matrixos.connectors.files: real files in tmp_path, S3 through a moto server."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from matrixos.connectors.files import infer_format, list_files, read_files
from matrixos.errors import IngestError


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return str(path)


def ingest_error(paths: list[str] | str, **kwargs: object) -> IngestError:
    with pytest.raises(IngestError) as info:
        read_files(paths, **kwargs)
    return info.value


def assert_where(err: IngestError, path: str, line: int | None, col: int | None) -> None:
    assert err.path == path
    assert err.line == line
    assert err.col == col
    where = path + (f", line {line}" if line is not None else "")
    where += f", column {col}" if col is not None else ""
    assert str(err).startswith(where + ": "), str(err)


# ---------------------------------------------------------------------------- reading formats


def test_csv_values_and_types(tmp_path: Path) -> None:
    path = write(
        tmp_path / "people.csv",
        "id,name,score,active,born\n"
        "1,Ada,9.5,true,1815-12-10\n"
        '2,"Grace, Hopper",,false,1906-12-09\n',
    )
    table = read_files([path])
    assert table.schema == pa.schema(
        [
            ("id", pa.int64()),
            ("name", pa.string()),
            ("score", pa.float64()),
            ("active", pa.bool_()),
            ("born", pa.date32()),
        ]
    )
    assert table.to_pylist() == [
        {"id": 1, "name": "Ada", "score": 9.5, "active": True, "born": dt.date(1815, 12, 10)},
        {
            "id": 2,
            "name": "Grace, Hopper",
            "score": None,
            "active": False,
            "born": dt.date(1906, 12, 9),
        },
    ]


def test_tsv_and_quoted_newlines(tmp_path: Path) -> None:
    tsv = write(tmp_path / "a.tsv", "k\tv\nx\t1\ny\t2\n")
    assert read_files([tsv]).to_pydict() == {"k": ["x", "y"], "v": [1, 2]}
    csv_path = write(tmp_path / "b.csv", 'k,note\n1,"two\nlines"\n2,plain\n')
    assert read_files(csv_path).to_pydict() == {"k": [1, 2], "note": ["two\nlines", "plain"]}


def test_gzipped_csv(tmp_path: Path) -> None:
    path = tmp_path / "data.csv.gz"
    path.write_bytes(gzip.compress(b"a,b\n1,x\n2,y\n"))
    assert infer_format(str(path)) == "csv"
    assert read_files([str(path)]).to_pydict() == {"a": [1, 2], "b": ["x", "y"]}


def test_json_array(tmp_path: Path) -> None:
    rows = [{"a": 1, "b": "x", "c": [1, 2]}, {"a": 2, "b": None, "d": {"e": True}}]
    path = write(tmp_path / "rows.json", json.dumps(rows, indent=2))
    table = read_files([path])
    assert table.column_names == ["a", "b", "c", "d"]
    assert table.schema.field("a").type == pa.int64()
    assert table.to_pylist() == [
        {"a": 1, "b": "x", "c": [1, 2], "d": None},
        {"a": 2, "b": None, "c": None, "d": {"e": True}},
    ]


def test_empty_json_array(tmp_path: Path) -> None:
    path = write(tmp_path / "none.json", "[ ]\n")
    assert read_files([path]).num_rows == 0


@pytest.mark.parametrize("name", ["events.ndjson", "events.jsonl", "events.json"])
def test_ndjson(tmp_path: Path, name: str) -> None:
    path = write(
        tmp_path / name, '{"id": 1, "v": 1.5}\n\n{"id": 2, "v": 2, "tag": "x"}\n{"id": 3}\n'
    )
    table = read_files([path])
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("v").type == pa.float64()
    assert table.to_pydict() == {
        "id": [1, 2, 3],
        "v": [1.5, 2.0, None],
        "tag": [None, "x", None],
    }


def test_pretty_printed_json_objects(tmp_path: Path) -> None:
    path = write(tmp_path / "obj.json", '{\n  "a": 1\n}\n{\n  "a": 2\n}\n')
    assert read_files([path]).to_pydict() == {"a": [1, 2]}


def test_parquet(tmp_path: Path) -> None:
    expected = pa.table(
        {"id": pa.array([1, 2], pa.int32()), "t": pa.array([dt.datetime(2024, 1, 1), None])}
    )
    pq.write_table(expected, tmp_path / "t.parquet")
    table = read_files([str(tmp_path / "t.parquet")])
    assert table.schema == expected.schema
    assert table.equals(expected)


def test_format_override(tmp_path: Path) -> None:
    path = write(tmp_path / "export.txt", "a,b\n1,2\n")
    assert read_files([path], format="csv").to_pydict() == {"a": [1], "b": [2]}
    with pytest.raises(ValueError, match="unknown file format 'xml'"):
        read_files([path], format="xml")


# ---------------------------------------------------------------------- folders and schemas


def test_folder_is_walked_recursively_and_sorted(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write(root / "b.csv", "n\n2\n")
    write(root / "a.csv", "n\n1\n")
    write(root / "sub" / "deeper" / "c.csv", "n\n3\n")
    write(root / ".hidden.csv", "n\n99\n")
    write(root / "_SUCCESS.csv", "n\n98\n")
    write(root / "_delta_log" / "0.json", '{"n": 97}\n')
    write(root / ".cache" / "x.csv", "n\n96\n")
    files = list_files([str(root)], fsspec.filesystem("file"))
    assert files == [
        str(root / "a.csv"),
        str(root / "b.csv"),
        str(root / "sub" / "deeper" / "c.csv"),
    ]
    assert read_files([str(root)]).to_pydict() == {"n": [1, 2, 3]}


def test_glob_and_duplicates(tmp_path: Path) -> None:
    a = write(tmp_path / "a.csv", "n\n1\n")
    write(tmp_path / "b.csv", "n\n2\n")
    write(tmp_path / "c.json", '{"n": 3}\n')
    table = read_files([str(tmp_path / "*.csv"), a])
    assert table.to_pydict() == {"n": [1, 2]}


def test_mixed_formats_unify(tmp_path: Path) -> None:
    write(tmp_path / "1.csv", "id,amount,code\n1,10,7\n")
    write(tmp_path / "2.ndjson", '{"id": 2, "amount": 2.5, "code": "B7", "extra": true}\n')
    pq.write_table(pa.table({"id": pa.array([3], pa.int32()), "code": [9]}), tmp_path / "3.parquet")
    table = read_files([str(tmp_path)])
    assert table.schema == pa.schema(
        [
            ("id", pa.int64()),
            ("amount", pa.float64()),
            ("code", pa.string()),
            ("extra", pa.bool_()),
        ]
    )
    assert table.to_pydict() == {
        "id": [1, 2, 3],
        "amount": [10.0, 2.5, None],
        "code": ["7", "B7", "9"],
        "extra": [None, True, None],
    }


def test_declared_schema(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "id,amount,ignored\n1,10,x\n")
    write(tmp_path / "b.json", '[{"id": 2, "amount": 3}]')
    schema = pa.schema([("id", pa.int32()), ("amount", pa.float64()), ("note", pa.string())])
    table = read_files([str(tmp_path)], schema=schema)
    assert table.schema == schema
    assert table.to_pydict() == {"id": [1, 2], "amount": [10.0, 3.0], "note": [None, None]}


def test_infer_format() -> None:
    assert infer_format("s3://b/x/y.PARQUET") == "parquet"
    assert infer_format("a.jsonl") == "ndjson"
    assert infer_format("a.ndjson") == "ndjson"
    assert infer_format("a.json.gz") == "json"
    assert infer_format("a.tsv") == "tsv"
    with pytest.raises(IngestError) as info:
        infer_format("/data/report.xlsx")
    assert info.value.path == "/data/report.xlsx"
    assert "'.xlsx'" in str(info.value)


# ---------------------------------------------------------------------------- error reporting


def test_unsupported_extension(tmp_path: Path) -> None:
    write(tmp_path / "ok.csv", "a\n1\n")
    bad = write(tmp_path / "notes.md", "# hi\n")
    err = ingest_error([str(tmp_path)])
    assert_where(err, bad, None, None)
    assert "unsupported file type" in str(err)


def test_no_path_matches(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.csv")
    assert_where(ingest_error([missing]), missing, None, None)
    pattern = str(tmp_path / "*.parquet")
    assert_where(ingest_error([pattern]), pattern, None, None)
    empty = tmp_path / "empty"
    empty.mkdir()
    err = ingest_error([str(empty)])
    assert_where(err, str(empty), None, None)
    assert "no data files found" in str(err)


def test_csv_too_many_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "wide.csv", "a,b,c\n1,2,3\n4,5,6,7\n")
    err = ingest_error([path])
    assert_where(err, path, 3, 4)
    assert "too many fields: expected 3, got 4" in str(err)


def test_csv_too_few_fields_after_multiline_value(tmp_path: Path) -> None:
    path = write(tmp_path / "short.csv", 'a,b,c\n1,"x\ny\nz",3\n\n4,"p\nq"\n')
    err = ingest_error([path])
    assert_where(err, path, 6, 3)  # the bad record starts on line 6 and spans two lines
    assert "too few fields: expected 3, got 2" in str(err)


def test_csv_value_not_of_declared_type(tmp_path: Path) -> None:
    path = write(tmp_path / "typed.csv", 'id,note,qty\n1,"multi\nline",4\n2,x,5\n3,y,abc\n')
    schema = pa.schema([("id", pa.int64()), ("qty", pa.string())])
    assert read_files([path], schema=schema).column("qty").to_pylist() == ["4", "5", "abc"]
    schema = pa.schema([("id", pa.int64()), ("qty", pa.int64())])
    err = ingest_error([path], schema=schema)
    assert_where(err, path, 5, 3)
    assert "invalid value 'abc' in column 'qty' (field 3): not a valid int64" in str(err)


def test_csv_column_cannot_become_declared_nested_type(tmp_path: Path) -> None:
    path = write(tmp_path / "n.csv", "id,tags\n1,a\n2,x\n")
    err = ingest_error([path], schema=pa.schema([("tags", pa.list_(pa.string()))]))
    assert_where(err, path, None, None)
    assert "column 'tags' is string and cannot be converted to list<item: string>" in str(err)


def test_csv_duplicate_header(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.csv", "a,b,a\n1,2,3\n")
    err = ingest_error([path])
    assert_where(err, path, 1, 3)
    assert "duplicate column name 'a'" in str(err)


@pytest.mark.parametrize(
    ("content", "line", "col"),
    [
        ('id,s\n1,"unterminated\n2,b\n', 2, 2),  # was read as 1 row, no error
        ('id,s\n1,"closed ""quote"" inside"\n2,"open\n', 3, 2),
        ('id,s\n1,"two\nlines"\n2,x\n"3,y\n', 5, 1),
        ('"id,s\n1,a\n', 1, 1),
        ('id,s\r\n1,5"3\r\n2,"never\r\n', 3, 2),  # a quote inside a bare field is text
        ('id,s\n1,ab"\n2,"x\n', 3, 2),  # an even count: the last value holds a line break
    ],
)
def test_csv_unterminated_quote(tmp_path: Path, content: str, line: int, col: int) -> None:
    path = write(tmp_path / "open.csv", content)
    err = ingest_error([path])
    assert_where(err, path, line, col)
    assert "unterminated quoted field" in str(err)


def test_csv_quotes_that_close_are_fine(tmp_path: Path) -> None:
    # An odd number of quote characters, all of them legal: no error.
    path = write(tmp_path / "ok.csv", 'id,s\n1,5"3\n2,"a ""b"""\n')
    assert read_files([path]).column("s").to_pylist() == ['5"3', 'a "b"']


@pytest.mark.parametrize(("header", "col"), [("id,,s", 2), (",id", 1), ("id,s,", 3)])
def test_csv_empty_header_name(tmp_path: Path, header: str, col: int) -> None:
    # Once stored as a column named "", which no query could read (not even count(*)).
    row = ",".join(["1"] * (header.count(",") + 1))
    path = write(tmp_path / "noname.csv", f"{header}\n{row}\n")
    err = ingest_error([path])
    assert_where(err, path, 1, col)
    assert "no column name" in str(err)


def test_json_empty_member_name_and_deep_nesting(tmp_path: Path) -> None:
    path = write(tmp_path / "noname.ndjson", '{"id": 1, "": 2}\n')
    assert 'empty name ("")' in str(ingest_error([path]))
    deep = write(tmp_path / "deep.json", '{"a": ' + "[" * 5000 + "]" * 5000 + "}\n")
    err = ingest_error([deep])  # was a RecursionError
    assert err.path == deep
    assert "nested too deeply" in str(err)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_csv(tmp_path: Path, content: str) -> None:
    path = write(tmp_path / "empty.csv", content)
    err = ingest_error([path])
    assert_where(err, path, 1, 1)
    assert "empty file" in str(err)


def test_csv_header_only_is_empty_table(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "a,b\n")
    table = read_files([path])
    assert table.column_names == ["a", "b"]
    assert table.num_rows == 0


def test_invalid_json_array(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", '[\n  {"a": 1},\n  {"a": 2,, "b": 3}\n]\n')
    err = ingest_error([path])
    assert_where(err, path, 3, 11)
    assert "invalid JSON: Expecting property name enclosed in double quotes" in str(err)


def test_json_array_missing_comma(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", '[{"a": 1}\n {"a": 2}]')
    err = ingest_error([path])
    assert_where(err, path, 2, 2)
    assert "Expecting ',' delimiter" in str(err)


def test_json_array_element_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.json", '[\n {"a": 1},\n 42\n]')
    err = ingest_error([path])
    assert_where(err, path, 3, 2)
    assert "expected a JSON object per array element, got number" in str(err)


def test_empty_json_file(tmp_path: Path) -> None:
    path = write(tmp_path / "e.json", "")
    assert_where(ingest_error([path]), path, 1, 1)
    assert read_files([write(tmp_path / "e.ndjson", "")]).num_rows == 0


def test_invalid_ndjson_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.ndjson", '{"a": 1}\n{"a": 2}\n{"a": tru}\n{"a": 4}\n')
    err = ingest_error([path])
    assert_where(err, path, 3, 7)
    assert "invalid JSON: Expecting value" in str(err)


def test_ndjson_unterminated_object(tmp_path: Path) -> None:
    path = write(tmp_path / "cut.jsonl", '{"a": 1}\n{"a": 2\n{"a": 3}\n')
    err = ingest_error([path])
    assert_where(err, path, 2, 8)


def test_ndjson_line_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "arr.jsonl", '{"a": 1}\n  [1, 2]\n')
    err = ingest_error([path])
    assert_where(err, path, 2, 3)
    assert "expected a JSON object per record, got array" in str(err)


def test_ndjson_in_json_file_extra_data(tmp_path: Path) -> None:
    path = write(tmp_path / "lines.json", '{"a": 1}\n{"a": 2} x\n')
    err = ingest_error([path])
    assert_where(err, path, 2, 10)
    assert "Extra data" in str(err)


def test_json_column_changes_kind(tmp_path: Path) -> None:
    path = write(tmp_path / "kinds.ndjson", '{"a": 1, "b": 1}\n{"a": 2, "b": "two"}\n')
    err = ingest_error([path])
    assert_where(err, path, 2, 15)
    assert "column 'b': expected a number like in earlier records, got a string" in str(err)


def test_json_value_fails_declared_type(tmp_path: Path) -> None:
    path = write(tmp_path / "typed.ndjson", '{"id": 1}\n{"id": 2}\n{"note": 1, "id": "x3"}\n')
    err = ingest_error([path], schema=pa.schema([("id", pa.string())]))
    assert_where(err, path, 3, 19)
    assert "column 'id': expected a number like in earlier records, got a string" in str(err)
    path = write(tmp_path / "float.ndjson", '{"id": 1}\n{"id": 2.5}\n')
    err = ingest_error([path], schema=pa.schema([("id", pa.int64())]))
    assert_where(err, path, 2, 8)
    assert "invalid value 2.5 in column 'id': not a valid int64" in str(err)
    path = write(tmp_path / "arr.json", '[\n  {"id": 1},\n  {"x": 0, "id": 2.5}\n]')
    err = ingest_error([path], schema=pa.schema([("id", pa.int64())]))
    assert_where(err, path, 3, 18)


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    err = ingest_error([str(path)])
    assert_where(err, str(path), None, None)
    assert "not a valid Parquet file" in str(err)
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    assert_where(ingest_error([str(empty)]), str(empty), None, None)


def test_parquet_value_fails_declared_type(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"v": ["1", "2", "zz"]}), path)
    err = ingest_error([str(path)], schema=pa.schema([("v", pa.int64())]))
    assert_where(err, str(path), None, None)
    assert "invalid value 'zz' in column 'v' (row 3)" in str(err)


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.csv.gz"
    path.write_bytes(b"definitely not gzip")
    err = ingest_error([str(path)])
    assert_where(err, str(path), None, None)
    assert "not a valid gzip file" in str(err)


# ------------------------------------------------------------------------------------------ S3


@pytest.fixture(scope="module")
def s3() -> Iterator[fsspec.AbstractFileSystem]:
    boto3 = pytest.importorskip("boto3")
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        client.create_bucket(Bucket="lake")
        client.put_object(Bucket="lake", Key="raw/2024/a.csv", Body=b"id,v\n1,x\n")
        client.put_object(Bucket="lake", Key="raw/2025/b.ndjson", Body=b'{"id": 2, "v": "y"}\n')
        client.put_object(Bucket="lake", Key="raw/_SUCCESS", Body=b"")
        client.put_object(Bucket="lake", Key="bad/c.csv", Body=b"id,v\n1,x\n2,y,z\n")
        buf = pa.BufferOutputStream()
        pq.write_table(pa.table({"id": [3], "v": ["z"]}), buf)
        client.put_object(Bucket="lake", Key="raw/2025/c.parquet", Body=buf.getvalue().to_pybytes())
        yield s3fs.S3FileSystem(
            key="x",
            secret="x",
            client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"},
        )
    finally:
        server.stop()


def test_s3_folder(s3: fsspec.AbstractFileSystem) -> None:
    assert list_files(["s3://lake/raw"], s3) == [
        "s3://lake/raw/2024/a.csv",
        "s3://lake/raw/2025/b.ndjson",
        "s3://lake/raw/2025/c.parquet",
    ]
    table = read_files(["s3://lake/raw/"], filesystem=s3)
    assert table.to_pydict() == {"id": [1, 2, 3], "v": ["x", "y", "z"]}


def test_s3_error_names_uri(s3: fsspec.AbstractFileSystem) -> None:
    err = ingest_error(["s3://lake/bad"], filesystem=s3)
    assert_where(err, "s3://lake/bad/c.csv", 3, 3)
    err = ingest_error(["s3://lake/missing.csv"], filesystem=s3)
    assert_where(err, "s3://lake/missing.csv", None, None)


def test_csv_row_longer_than_a_parse_block(tmp_path: Path) -> None:
    # pyarrow refused a row over its 1 MiB block ("straddling object ..."): read as one block.
    big = "x" * 3_000_000
    path = write(tmp_path / "long.csv", f'id,s\n1,{big}\n2,"{big}\nmore"\n3,y\n')
    table = read_files([path])
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("s").to_pylist() == [big, big + "\nmore", "y"]


@pytest.mark.parametrize(("header", "col"), [(b"id,caf\xe9\n", 2), (b'"a,\xff",b\n', 1)])
def test_csv_header_not_utf8(tmp_path: Path, header: bytes, col: int) -> None:
    # Was a raw UnicodeDecodeError (pyarrow decodes column names when they are used).
    path = tmp_path / "latin1.csv"
    path.write_bytes(header + b"1,2\n")
    err = ingest_error([str(path)])
    assert_where(err, str(path), 1, col)
    assert "the header line is not valid UTF-8 text" in str(err)
