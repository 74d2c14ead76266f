"""Read CSV, TSV, JSON, NDJSON and Parquet files into one Arrow table.

``read_files`` takes files, folders (walked recursively) or glob patterns on any fsspec
filesystem (local by default, ``s3://`` with an ``s3fs.S3FileSystem``), reads each file with
pyarrow's fast C++ readers and unifies them into a single :class:`pyarrow.Table`.

Bad input raises :class:`matrixos.errors.IngestError` naming the file and, where the format has
them, the 1-based line and column. This module lists the files, picks each one's format and
combines their schemas; :mod:`~matrixos.connectors.csv_reader` and
:mod:`~matrixos.connectors.json_reader` read one file each and locate what is wrong in it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from matrixos.connectors.csv_reader import read_csv
from matrixos.connectors.file_source import ARROW_ERRORS, Source, first_bad_row
from matrixos.connectors.json_reader import read_json
from matrixos.errors import ConfigError, IngestError

__all__ = ["FORMATS", "infer_format", "list_files", "normalize_format", "read_files"]

#: The formats ``read_files`` understands (values of ``format=`` and of ``infer_format``).
FORMATS: tuple[str, ...] = ("csv", "tsv", "json", "ndjson", "parquet")

_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".parquet": "parquet",
}
_FORMAT_ALIASES: dict[str, str] = {
    "csv": "csv",
    "tsv": "tsv",
    "json": "json",
    "ndjson": "ndjson",
    "jsonl": "ndjson",
    "parquet": "parquet",
}
_COMPRESSIONS: dict[str, str] = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
_GLOB_CHARS = frozenset("*?[")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def infer_format(path: str) -> str:
    """Return the format of ``path`` from its extension: one of :data:`FORMATS`.

    A compression suffix (``.gz``, ``.bz2``, ``.zst``) is looked through, so ``x.csv.gz`` is
    ``"csv"``. Raises :class:`IngestError` naming the file for an unsupported extension.

    >>> infer_format("s3://bucket/raw/events.jsonl.gz")
    'ndjson'
    """
    stem, _ = _split_compression(posixpath.basename(path.rstrip("/")))
    ext = posixpath.splitext(stem)[1].lower()
    fmt = _EXTENSIONS.get(ext)
    if fmt is None:
        known = ", ".join(sorted(_EXTENSIONS))
        what = f"extension {ext!r}" if ext else "a file without an extension"
        raise IngestError(
            f"unsupported file type: {what}; expected one of {known} "
            "(optionally compressed .gz/.bz2/.zst), or pass format=",
            path=path,
        )
    return fmt


def list_files(paths: Sequence[str] | str, filesystem: fsspec.AbstractFileSystem) -> list[str]:
    """Expand files, folders and glob patterns into the list of files to read.

    Folders are walked recursively; files and folders whose name starts with ``.`` or ``_``
    (``.crc`` files, ``_SUCCESS``, ``_delta_log``) below a folder or matched by a glob are
    skipped. Each folder's or glob's files are sorted; duplicates are dropped. A file named
    directly is kept as given. Paths with a protocol (``s3://bucket/x``) keep it in the result.

    Raises :class:`IngestError` when a path does not exist, a glob matches nothing, or nothing
    at all is found.
    """
    if isinstance(paths, str):
        paths = [paths]
    found: list[str] = []
    seen: set[str] = set()

    def add(item: str) -> None:
        if item not in seen:
            seen.add(item)
            found.append(item)

    for path in paths:
        prefix = _protocol_prefix(path)
        if any(ch in _GLOB_CHARS for ch in path):
            matches = sorted(filesystem.glob(path))
            if not matches:
                raise IngestError("no files match this pattern", path=path)
            for match in matches:
                if _is_hidden(posixpath.basename(match.rstrip("/"))):
                    continue
                if filesystem.isdir(match):
                    for item in _walk(filesystem, match):
                        add(prefix + item)
                else:
                    add(prefix + match)
        elif filesystem.isdir(path):
            for item in _walk(filesystem, path):
                add(prefix + item)
        elif filesystem.exists(path):
            add(path)
        else:
            raise IngestError("no such file or folder", path=path)
    if not found:
        raise IngestError("no data files found", path=", ".join(paths))
    return found


def read_files(
    paths: Sequence[str] | str,
    *,
    format: str | None = None,
    filesystem: fsspec.AbstractFileSystem | None = None,
    schema: pa.Schema | None = None,
) -> pa.Table:
    """Read files and folders of CSV/TSV/JSON/NDJSON/Parquet into one Arrow table.

    ``paths`` are files, folders (walked recursively, see :func:`list_files`) or glob patterns,
    local or on ``filesystem`` (for ``s3://`` URIs pass an ``s3fs.S3FileSystem``; without one
    the filesystem is chosen from the first path's protocol). Each file's format comes from its
    extension (:func:`infer_format`) unless ``format`` is given; ``.gz``/``.bz2``/``.zst``
    compression is undone first. A ``.json`` file holds either a top-level array of objects or
    objects one after another (one per line, as NDJSON). Formats may be mixed in one call.

    Without ``schema`` the files' columns are unified by name in order of first appearance:
    integers and floats widen to float64, other conflicting types become strings, and columns
    missing from a file are null. With ``schema`` each file's columns are cast to it by name
    (missing columns are null, extra columns dropped) and the result has exactly that schema.

    Raises :class:`IngestError` naming the file, and where known the 1-based line and column
    (a CSV column is the field number, a JSON column the character), for anything unreadable.

    >>> from pathlib import Path
    >>> _ = Path("a.csv").write_text("id,name\\n1,ann\\n")
    >>> _ = Path("b.ndjson").write_text('{"id": 2.5, "city": "oslo"}\\n')
    >>> read_files(["a.csv", "b.ndjson"]).to_pylist()
    [{'id': 1.0, 'name': 'ann', 'city': None}, {'id': 2.5, 'name': None, 'city': 'oslo'}]
    >>> _ = Path("bad.csv").write_text('id,name\\n1,"ann\\n2,bob\\n')
    >>> read_files("bad.csv")
    Traceback (most recent call last):
    ...
    matrixos.errors.IngestError: bad.csv, line 2, column 2: unterminated quoted field: ...
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise IngestError("no paths given", path="")
    fs = filesystem if filesystem is not None else fsspec.core.url_to_fs(paths[0])[0]
    fixed = normalize_format(format) if format is not None else None
    files = list_files(paths, fs)
    formats = [fixed or infer_format(item) for item in files]  # fail fast, before any reading
    tables: list[pa.Table] = []
    for item, fmt in zip(files, formats, strict=True):
        source = _read_one(fs, item, fmt, schema)
        tables.append(_conform(source, schema) if schema is not None else source.table)
    if schema is not None:
        return pa.concat_tables(tables)
    return _unify(tables, files)


# --------------------------------------------------------------------------------------------
# Listing helpers
# --------------------------------------------------------------------------------------------


def _protocol_prefix(path: str) -> str:
    return path.split("://", 1)[0] + "://" if "://" in path else ""


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _walk(filesystem: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    root = filesystem._strip_protocol(folder).rstrip("/")
    out = []
    for item in filesystem.find(folder, withdirs=False):
        if item.endswith("/"):
            continue  # an S3 "folder" marker object
        rel = item[len(root) + 1 :] if item.startswith(root + "/") else posixpath.basename(item)
        if any(_is_hidden(part) for part in rel.split("/")):
            continue
        out.append(item)
    return sorted(out)


def normalize_format(fmt: str) -> str:
    """The canonical name of a ``format=`` value (``"JSONL"`` is ``"ndjson"``).

    Raises :class:`ConfigError` naming the valid formats for anything else.

    >>> normalize_format("JSONL")
    'ndjson'
    """
    key = fmt.lower().lstrip(".") if isinstance(fmt, str) else None
    if key is None or key not in _FORMAT_ALIASES:
        raise ConfigError(
            f"unknown file format {fmt!r}; expected one of {', '.join(FORMATS)}",
            hint="leave format out to infer it from each file's extension "
            f"({', '.join(sorted(_EXTENSIONS))})",
        )
    return _FORMAT_ALIASES[key]


def _split_compression(name: str) -> tuple[str, str | None]:
    stem, ext = posixpath.splitext(name)
    codec = _COMPRESSIONS.get(ext.lower())
    return (stem, codec) if codec else (name, None)


# --------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------


def _read_one(
    fs: fsspec.AbstractFileSystem, path: str, fmt: str, schema: pa.Schema | None
) -> Source:
    _, codec = _split_compression(posixpath.basename(path))
    if fmt == "parquet" and codec is None:
        return Source(path, _read_parquet(fs, path, None))
    try:
        raw = fs.cat_file(path)
    except (OSError, ValueError) as exc:
        raise IngestError(f"cannot read file: {exc}", path=path) from exc
    data = _decompress(path, raw, codec) if codec else raw
    if fmt == "parquet":
        return Source(path, _read_parquet(fs, path, data))
    if fmt in ("csv", "tsv"):
        return read_csv(path, data, "\t" if fmt == "tsv" else ",", schema)
    return read_json(path, data, fmt)


def _decompress(path: str, raw: bytes, codec: str) -> bytes:
    try:
        with pa.CompressedInputStream(pa.BufferReader(raw), codec) as stream:
            return bytes(stream.read())
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"not a valid {codec} file: {exc}", path=path) from None


def _read_parquet(fs: fsspec.AbstractFileSystem, path: str, data: bytes | None) -> pa.Table:
    try:
        if data is not None:
            return pq.ParquetFile(pa.BufferReader(data)).read()
        with fs.open(path, "rb") as handle:
            return pq.ParquetFile(handle).read()
    except FileNotFoundError as exc:
        raise IngestError(f"cannot read file: {exc}", path=path) from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise IngestError(f"not a valid Parquet file ({exc})", path=path) from None


# --------------------------------------------------------------------------------------------
# Schemas: casting to a declared schema, unifying inferred ones
# --------------------------------------------------------------------------------------------


def _conform(source: Source, schema: pa.Schema) -> pa.Table:
    table = source.table
    columns = []
    for target in schema:
        if target.name not in table.column_names:
            if not target.nullable:
                raise IngestError(f"required column {target.name!r} is missing", path=source.path)
            columns.append(pa.nulls(table.num_rows, target.type))
            continue
        column = table.column(target.name)
        if column.type == target.type:
            columns.append(column)
            continue
        try:
            columns.append(column.cast(target.type))
        except ARROW_ERRORS as exc:
            row = first_bad_row(column, target.type)
            if row is None:
                raise IngestError(
                    f"column {target.name!r} is {column.type} and cannot be converted to "
                    f"{target.type}: {exc}",
                    path=source.path,
                ) from None
            value = column[row].as_py()
            line, col = source.locate(row, target.name)
            at_row = "" if line is not None else f" (row {row + 1})"
            raise IngestError(
                f"invalid value {value!r} in column {target.name!r}{at_row}: "
                f"not a valid {target.type}",
                path=source.path,
                line=line,
                col=col,
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)


def _is_number(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype)


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _unify_types(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """Common type of two columns of the same name: null < int < float < string."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if _is_number(a) and _is_number(b):
        if pa.types.is_integer(a) and pa.types.is_integer(b):
            return pa.int64()
        return pa.float64()
    if _is_text(a) and _is_text(b):
        return pa.large_string()
    if pa.types.is_date(a) and pa.types.is_timestamp(b):
        return b
    if pa.types.is_timestamp(a) and pa.types.is_date(b):
        return a
    try:
        merged = pa.unify_schemas(
            [pa.schema([("x", a)]), pa.schema([("x", b)])], promote_options="permissive"
        )
    except ARROW_ERRORS:
        return pa.large_string() if pa.types.is_large_string(a) else pa.string()
    return merged.field("x").type


def _unify(tables: list[pa.Table], files: list[str]) -> pa.Table:
    types: dict[str, pa.DataType] = {}
    for table in tables:
        for column in table.schema:
            known = types.get(column.name)
            types[column.name] = column.type if known is None else _unify_types(known, column.type)
    schema = pa.schema(list(types.items()))
    out = []
    for table, path in zip(tables, files, strict=True):
        columns = []
        for target in schema:
            if target.name not in table.column_names:
                columns.append(pa.nulls(table.num_rows, target.type))
                continue
            column = table.column(target.name)
            if column.type == target.type:  # (pyarrow 26 casts a list<list<null>> wrong)
                columns.append(column)
                continue
            try:
                columns.append(column.cast(target.type, safe=False))
            except ARROW_ERRORS:
                raise IngestError(
                    f"column {target.name!r} is {column.type} here and cannot be combined with "
                    f"the {target.type} it is in other files",
                    path=path,
                ) from None
        out.append(pa.Table.from_arrays(columns, schema=schema))
    return pa.concat_tables(out)
