"""The shared fixtures start real services that real clients can use."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest


def test_s3_server_binds_localhost(s3_server: Any) -> None:
    url = urlparse(s3_server.endpoint_url)
    assert url.hostname == "127.0.0.1"
    assert url.port and url.port > 0
    assert s3_server.storage_options == {
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ALLOW_HTTP": "true",
    }
    with socket.create_connection((url.hostname, url.port), timeout=5):
        pass


def test_s3_put_and_get(s3_server: Any) -> None:
    bucket = s3_server.make_bucket()
    assert bucket != s3_server.make_bucket()
    assert s3_server.make_bucket("mx-named-bucket") == "mx-named-bucket"
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello"
    assert not any(k.startswith("AWS_") and "testing" in v for k, v in os.environ.items())


def test_s3_works_with_deltalake(s3_server: Any) -> None:
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    uri = f"s3://{s3_server.make_bucket()}/wh/t"
    options = s3_server.storage_options
    write_deltalake(uri, pa.table({"x": [1, 2]}), storage_options=options)
    write_deltalake(uri, pa.table({"x": [3]}), storage_options=options, mode="append")
    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 1
    assert sorted(table.to_pyarrow_table()["x"].to_pylist()) == [1, 2, 3]


def test_postgres_select_1(postgres_server: Any) -> None:
    import psycopg

    db = postgres_server.create_database()
    assert db != postgres_server.create_database()
    url = postgres_server.url(db)
    assert url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert url.endswith(f"/{db}")
    with psycopg.connect(postgres_server.dsn(db)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_database()").fetchone() == (db,)
        assert conn.execute("SELECT inet_server_addr()::text").fetchone() == ("127.0.0.1/32",)


def test_postgres_url_works_with_sqlalchemy(postgres_server: Any) -> None:
    import sqlalchemy as sa

    name = postgres_server.create_database("mx_named_db")
    assert name == "mx_named_db"
    engine = sa.create_engine(postgres_server.url(name))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_warehouse_root(warehouse_root: Any, request: pytest.FixtureRequest) -> None:
    assert warehouse_root.kind == request.node.callspec.id
    if warehouse_root.kind == "local":
        assert warehouse_root.storage_options is None
        root = Path(warehouse_root.uri)
        assert root.is_dir() and not any(root.iterdir())
    else:
        assert warehouse_root.uri.startswith("s3://") and warehouse_root.uri.endswith("/wh")
        assert warehouse_root.storage_options["AWS_ALLOW_HTTP"] == "true"
        import fsspec

        s3: Any = request.getfixturevalue("s3_server")
        fs = fsspec.filesystem("s3", **s3.fsspec_options)
        path = warehouse_root.uri.removeprefix("s3://")
        fs.pipe(f"{path}/probe", b"x")
        assert fs.cat(f"{path}/probe") == b"x"


def test_catalog_url(catalog_url: str, request: pytest.FixtureRequest) -> None:
    import sqlalchemy as sa

    kind = request.node.callspec.id
    assert catalog_url.startswith("sqlite:///" if kind == "sqlite" else "postgresql+psycopg://")
    engine = sa.create_engine(catalog_url)
    try:
        with engine.begin() as conn:
            tables = sa.inspect(conn).get_table_names()
            assert tables == []  # fresh
            conn.execute(sa.text("CREATE TABLE t (x integer)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
            assert conn.execute(sa.text("SELECT x FROM t")).scalar_one() == 1
    finally:
        engine.dispose()


def test_matrixos_home_is_isolated() -> None:
    home = Path(os.environ["MATRIXOS_HOME"])
    assert home.is_dir()
    assert home != Path.home() / ".matrixos"
    assert "MATRIXOS_WAREHOUSE" not in os.environ
    assert "MATRIXOS_CATALOG_URL" not in os.environ
