"""The public surface is a decision: renames must show up here."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos import errors
from matrixos.ai.rag import RAG, IndexSummary
from matrixos.batch import MapBatchesSummary
from matrixos.config import Settings
from matrixos.connectors.ingest import IngestSummary
from matrixos.connectors.media import MediaIngestSummary
from matrixos.delta_table import DeltaLakeTable
from matrixos.engine.result import Result
from matrixos.errors import (
    AccessDenied,
    MatrixOSError,
    SQLError,
    TableNotFound,
)
from matrixos.lance_table import LanceTable
from matrixos.session import Lakehouse, connect
from matrixos.storage.delta import WriteResult
from matrixos.storage.options import StorageOptions
from matrixos.storage.volume import FileInfo, Volume
from matrixos.table import Table


def _public(cls: type) -> set[str]:
    """A class's public attributes: methods, properties and class attributes, inherited ones too."""
    return {n for n in dir(cls) if not n.startswith("_")}


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_surface() -> None:
    assert sorted(mx.__all__) == sorted(
        ["Lakehouse", "MatrixOSError", "Result", "Settings", "Table", "connect", "errors"]
    )
    # Each lazy name is the object it stands for, not merely something.
    assert mx.Lakehouse is Lakehouse and mx.Table is Table and mx.Result is Result
    assert mx.MatrixOSError is MatrixOSError and mx.errors is errors
    assert mx.Settings is Settings and mx.connect is connect


def test_errors_surface() -> None:
    assert set(errors.__all__) == {
        "AccessDenied",
        "AccountExists",
        "AccountNotFound",
        "BatchError",
        "ComputeError",
        "ConcurrentWriteError",
        "ConfigError",
        "FileNotFound",
        "IngestBusy",
        "IngestError",
        "JobError",
        "JobNotFound",
        "MatrixOSError",
        "NotSupported",
        "OutOfCredit",
        "PointsRejected",
        "ResultConsumed",
        "SQLError",
        "SchemaMismatch",
        "SchemaNotFound",
        "ServerUnavailable",
        "StatementCanceled",
        "StatementNotFound",
        "StorageError",
        "TableExists",
        "TableNotFound",
        "TooManyStatements",
        "TpchError",
        "VersionNotFound",
        "VolumeNotFound",
        "WarehouseNotFound",
    }
    exported = {getattr(errors, n) for n in errors.__all__}
    assert all(issubclass(c, MatrixOSError) for c in exported)
    # Every error class the module defines is exported: none is public by accident.
    defined = {
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, MatrixOSError) and c.__module__ == errors.__name__
    }
    assert defined == exported


def test_lakehouse_surface() -> None:
    assert _public(Lakehouse) == {
        "accounts",
        "close",
        "compute",
        "create_schema",
        "create_table",
        "create_volume",
        "drop_schema",
        "drop_table",
        "drop_volume",
        "ingest",
        "ingest_media",
        "jobs",
        "lineage",
        "maintenance",
        "map_batches",
        "open_uri",
        "rag",
        "register_table",
        "schemas",
        "search",
        "sql",
        "start_maintenance",
        "table",
        "tables",
        "usage",
        "volume",
        "volumes",
        "with_principal",
    }
    # The types users receive, tied to the calls that return them.
    returns = {
        "create_table": "Table",
        "table": "Table",
        "sql": "Result",
        "search": "Result",
        "volume": "Volume",
        "create_volume": "Volume",
        "ingest": "IngestSummary",
        "ingest_media": "MediaIngestSummary",
        "map_batches": "MapBatchesSummary",
        "usage": "pa.Table",
    }
    for name, annotation in returns.items():
        assert getattr(Lakehouse, name).__annotations__["return"] == annotation, name
    assert vars(Lakehouse)["rag"].fget.__annotations__["return"] == "RAG"


_TABLE = {
    "append",
    "count",
    "delete",
    "describe",
    "history",
    "location",
    "merge",
    "drop_mask",
    "drop_row_filter",
    "name",
    "optimize",
    "overwrite",
    "partition_by",
    "policies",
    "schema",
    "set_mask",
    "set_row_filter",
    "store",
    "to_arrow",
    "to_pandas",
    "to_polars",
    "update",
    "vacuum",
    "version",
}


def test_table_surfaces() -> None:
    # Table is the abstract base; each format's table is a sibling under it.
    assert inspect.isabstract(Table)
    assert {c.__name__ for c in Table.__subclasses__()} >= {
        "DeltaLakeTable",
        "LanceTable",
        "StoreTable",
    }
    assert _public(Table) == _TABLE
    assert _public(DeltaLakeTable) == _TABLE
    assert _public(LanceTable) == _TABLE | {
        "create_index",
        "create_text_index",
        "dataset",
        "embed_query",
        "embedding",
        "indexes",
        "search",
        "set_embedding",
    }
    assert _fields(WriteResult) == ["version", "metrics"]


def test_result_surface() -> None:
    assert _public(Result) == {
        "column",
        "columns",
        "fetchall",
        "fetchone",
        "from_table",
        "num_rows",
        "on_end",
        "scalar",
        "to_arrow",
        "to_arrow_reader",
        "to_pandas",
        "to_polars",
        "to_pylist",
    }


def test_volume_surface() -> None:
    assert _public(Volume) == {
        "delete",
        "exists",
        "is_remote",
        "list",
        "name",
        "name_of",
        "open",
        "open_uri",
        "put",
        "put_folder",
        "read_bytes",
        "uri_of",
    }
    assert _fields(FileInfo) == ["name", "uri", "size", "modified"]


def test_summary_surfaces() -> None:
    assert _fields(IngestSummary) == ["table", "mode", "files", "rows", "version", "seconds"]
    assert _fields(MediaIngestSummary) == [
        "table",
        "volume",
        "files",
        "added",
        "changed",
        "unchanged",
        "failed",
        "version",
        "seconds",
        "errors",
    ]
    assert _fields(MapBatchesSummary) == [
        "output",
        "source",
        "job",
        "run",
        "source_version",
        "resumed",
        "batches",
        "batches_run",
        "batches_skipped",
        "rows_in",
        "rows_out",
        "commits",
        "seconds",
        "executor",
        "num_gpus",
        "gpu_utilization",
        "gpu_note",
        "max_in_flight",
        "peak_in_flight",
        "notes",
    ]
    assert _public(MapBatchesSummary) - set(_fields(MapBatchesSummary)) == {
        "gpu_text",
        "rows_per_s",
    }
    assert _public(RAG) == {"eval", "index"}
    assert RAG.index.__annotations__["return"] == "IndexSummary"
    assert _fields(IndexSummary) == [
        "table",
        "documents",
        "unchanged",
        "added",
        "changed",
        "deleted",
        "failed",
        "chunks_written",
        "chunks_deleted",
        "seconds",
        "embed_seconds",
        "compute",
        "errors",
        "indexes",
    ]
    assert _public(IndexSummary) - set(_fields(IndexSummary)) == {"chunks_per_s", "docs_per_s"}


def test_error_hierarchy() -> None:
    assert issubclass(TableNotFound, MatrixOSError) and issubclass(TableNotFound, LookupError)
    assert issubclass(AccessDenied, SQLError) and issubclass(AccessDenied, PermissionError)
    e = SQLError("bad", line=2, col=5)
    assert (e.line, e.col, e.sqlstate) == (2, 5, "42601")
    assert "line 2, column 5" in str(e)


def test_import_is_light() -> None:
    # Heavy engines load on first use, not on import.
    code = (
        "import sys, matrixos; "
        "print(','.join(m for m in ('duckdb', 'deltalake', 'polars', 'pandas', 'sqlglot') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_point_query_in_a_fresh_process_loads_neither_pandas_nor_ray(tmp_path) -> None:
    # Pruning compares the literals with file statistics without making pyarrow scalars
    # (making one imports pandas: ~0.2 s of a process's first statement).
    wh = str(tmp_path / "wh")
    with mx.connect(wh) as lh:
        lh.create_table(
            "t", pa.table({"id": [1, 5, 9], "s": ["a", "b", "c"], "v": [0.5, 1.5, 9.0]})
        )
    code = (
        "import sys, matrixos as mx; lh = mx.connect(sys.argv[1]); "
        "got = [lh.sql(q).fetchall() for q in ("
        "'SELECT s FROM t WHERE id = 5', \"SELECT id FROM t WHERE s = 'c'\", "
        "'SELECT id FROM t WHERE v < 1', 'SELECT id FROM t WHERE id = 2147483648', "
        "'SELECT id FROM t WHERE v = 9')]; "
        "print(got, [m for m in ('pandas', 'ray') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, wh], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[[('b',)], [(9,)], [(1,)], [], [(9,)]] []"


def test_connect_defaults_to_env_warehouse(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MATRIXOS_WAREHOUSE", str(tmp_path / "wh"))
    lh = mx.connect()
    assert lh.warehouse.uri == str(tmp_path / "wh")
    assert (tmp_path / "wh" / "_catalog.db").exists()
    lh.create_table("t", pa.table({"a": [1]}))
    # A second session (e.g. another process later) sees the same catalog.
    assert mx.connect().tables() == ["main.default.t"]


def test_storage_options_render_and_hide_secrets() -> None:
    o = StorageOptions.from_mapping(
        {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
            "aws_access_key_id": "AKIA",
            "AWS_SECRET_ACCESS_KEY": "s3cr3t",
            "region": "eu-west-1",
        },
        env={},
    )
    assert o.to_delta() == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "AWS_ALLOW_HTTP": "true",
        "timeout": "30000ms",
        "connect_timeout": "5000ms",
        "max_retries": "3",
        "retry_timeout": "60000ms",
    }
    assert o.to_lance()["aws_secret_access_key"] == "s3cr3t"
    assert o.to_lance()["client_retry_timeout"] == "60"
    # what deltalake and lance are given reads back as the same options
    assert StorageOptions.from_mapping(o.to_delta(), env={}) == o
    assert StorageOptions.from_mapping(o.to_lance(), env={}) == o
    s3fs = o.to_s3fs()
    assert s3fs["client_kwargs"] == {
        "endpoint_url": "http://127.0.0.1:9000",
        "region_name": "eu-west-1",
    }
    assert "s3cr3t" not in repr(o) and "s3cr3t" not in str(o)


def test_storage_options_fall_back_to_env() -> None:
    o = StorageOptions.from_mapping({}, env={"AWS_REGION": "us-west-2", "AWS_ACCESS_KEY_ID": "k"})
    assert o.to_delta()["AWS_REGION"] == "us-west-2"
    assert o.to_delta()["AWS_ACCESS_KEY_ID"] == "k"
    assert "AWS_ENDPOINT_URL" not in o.to_delta()
    with pytest.raises(MatrixOSError, match="unknown storage option"):
        StorageOptions.from_mapping({"AWS_NOPE": "x"}, env={})


def test_connect_names_an_unknown_argument(tmp_path, monkeypatch) -> None:
    from matrixos.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown argument 'catalog'; did you mean 'catalog_url'"):
        mx.connect(str(tmp_path), catalog=f"sqlite:///{tmp_path}/c.db")
    with pytest.raises(ConfigError, match="did you mean 'storage_options'") as err:
        mx.connect(str(tmp_path), storage_option={})
    assert err.value.hint is not None and "catalog_url" in err.value.hint
    # a bad value names the setting and its environment variable, not pydantic
    with pytest.raises(ConfigError, match="storage_request_timeout") as err:
        mx.connect(str(tmp_path), storage_request_timeout=-1)
    assert "MATRIXOS_STORAGE_REQUEST_TIMEOUT" in str(err.value)
    monkeypatch.setenv("MATRIXOS_STORAGE_MAX_RETRIES", "many")
    with pytest.raises(ConfigError, match="MATRIXOS_STORAGE_MAX_RETRIES"):
        mx.connect(str(tmp_path))


def test_storage_limits_reach_every_client(tmp_path) -> None:
    lh = mx.connect(
        str(tmp_path), storage_request_timeout=7, storage_connect_timeout=2, storage_max_retries=1
    )
    o = lh.warehouse.options
    assert (o.request_timeout, o.connect_timeout, o.max_retries) == (7, 2, 1)
    assert o.to_delta()["timeout"] == "7000ms" and o.to_delta()["max_retries"] == "1"
    assert o.to_lance()["connect_timeout"] == "2000ms" and o.to_lance()["client_max_retries"] == "1"
    cfg = o.to_s3fs()["config_kwargs"]
    assert (cfg["read_timeout"], cfg["retries"]["max_attempts"]) == (7, 2)
    lh.close()


def test_connect_without_create_refuses_a_missing_warehouse(tmp_path) -> None:
    from matrixos.errors import WarehouseNotFound

    with pytest.raises(WarehouseNotFound, match="no warehouse at"):
        mx.connect(str(tmp_path / "typo"), create=False)
    assert not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()  # a folder is not a warehouse until it holds a catalog
    with pytest.raises(WarehouseNotFound):
        mx.connect(str(tmp_path / "empty"), create=False)
    mx.connect(str(tmp_path / "wh")).close()
    with mx.connect(str(tmp_path / "wh"), create=False) as lh:
        assert lh.tables() == []
