"""Lance datasets opened by URI for search (storage/lance_datasets.py): the shared handle follows
new versions, old versions are pinned, writers get their own handle, and failures are
MatrixOSErrors, on a local folder and on S3 (moto)."""

from __future__ import annotations

import lance
import pyarrow as pa
import pytest

from matrixos.errors import ConfigError, StorageError, TableNotFound
from matrixos.storage.lance_datasets import open_dataset, open_for_write

try:  # tests/ imported as a package
    from tests._servers import S3Server, WarehouseTarget
except ModuleNotFoundError:  # pytest's default "prepend" import mode
    from _servers import S3Server, WarehouseTarget  # type: ignore[no-redef]


def _lance_options(target: WarehouseTarget) -> dict[str, str] | None:
    return dict(target.storage_options) if target.storage_options else None


def test_the_shared_handle_follows_new_versions(warehouse_root: WarehouseTarget) -> None:
    uri = f"{warehouse_root.uri}/docs.lance"
    so = _lance_options(warehouse_root)
    lance.write_dataset(pa.table({"id": [1, 2]}), uri, storage_options=so)
    first = open_dataset(uri, so)
    assert (first.version, first.count_rows()) == (1, 2)
    lance.write_dataset(pa.table({"id": [3]}), uri, mode="append", storage_options=so)
    latest = open_dataset(uri, so)
    assert (latest.version, latest.count_rows()) == (2, 3)
    assert open_dataset(uri, so) is latest  # kept while no new version appears
    old = open_dataset(uri, so, version=1)
    assert (old.version, old.count_rows()) == (1, 2)
    assert open_dataset(uri, so).version == 2  # pinning an old version left the shared one
    with pytest.raises(ConfigError, match="no version 7") as missing:
        open_dataset(uri, so, version=7)
    assert "latest version is 2" in str(missing.value)


def test_a_writer_gets_a_handle_of_its_own(warehouse_root: WarehouseTarget) -> None:
    uri = f"{warehouse_root.uri}/docs.lance"
    so = _lance_options(warehouse_root)
    lance.write_dataset(pa.table({"id": [1, 2], "text": ["a", "b"]}), uri, storage_options=so)
    reader = open_dataset(uri, so)
    writer = open_for_write(uri, so)
    assert writer is not reader
    writer.create_scalar_index("text", "INVERTED")  # moves the writer to version 2
    assert writer.version == 2 and reader.version == 1  # searches under it saw nothing move
    assert open_dataset(uri, so).version == 2


def test_missing_datasets_and_buckets(warehouse_root: WarehouseTarget) -> None:
    so = _lance_options(warehouse_root)
    for open_ in (open_dataset, open_for_write):
        with pytest.raises(TableNotFound, match="no Lance dataset at"):
            open_(f"{warehouse_root.uri}/missing.lance", so)


def test_an_object_store_failure_says_which(s3_server: S3Server) -> None:
    uri = "s3://no-such-bucket-for-search/wh/docs.lance"
    with pytest.raises(StorageError, match="the bucket does not exist") as failed:
        open_dataset(uri, s3_server.storage_options)
    assert failed.value.bucket == "no-such-bucket-for-search"
    assert failed.value.endpoint == s3_server.endpoint_url
