"""The warehouse: a root URI (local path or ``s3://bucket/prefix``) holding every managed table."""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matrixos.errors import ConfigError
from matrixos.storage.options import StorageOptions

if TYPE_CHECKING:
    import fsspec

_REMOTE_SCHEMES = ("s3://", "s3a://", "memory://")


def is_remote(uri: str) -> bool:
    """True for object-store URIs, False for local paths."""
    return uri.startswith(_REMOTE_SCHEMES)


def normalize_uri(uri: str) -> str:
    """An absolute local path, or an object-store URI without a trailing slash."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if is_remote(uri):
        if uri.startswith("s3a://"):
            uri = "s3://" + uri[len("s3a://") :]
        if uri.rstrip("/") in ("s3:", "s3:/") or uri == "s3://":
            raise ConfigError(f"warehouse URI {uri!r} names no bucket")
        return uri.rstrip("/")
    if "://" in uri:
        raise ConfigError(
            f"unsupported warehouse URI {uri!r}", hint="use a local path or s3://bucket/prefix"
        )
    return str(Path(uri).expanduser().resolve())


class Warehouse:
    """Where table data lives, and how to reach it.

    Example:
        >>> wh = Warehouse("/tmp/wh")
        >>> wh.table_location("main", "default", "t", "0f3a9c2e51b7")
        '/tmp/wh/main/default/t-0f3a9c2e51b7'
    """

    def __init__(
        self, uri: str, storage_options: StorageOptions | Mapping[str, Any] | None = None
    ) -> None:
        self.uri = normalize_uri(uri)
        self.options = (
            storage_options
            if isinstance(storage_options, StorageOptions)
            else StorageOptions.from_mapping(storage_options)
        )
        if not self.is_remote:
            Path(self.uri).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Warehouse({self.uri!r})"

    @property
    def is_remote(self) -> bool:
        return is_remote(self.uri)

    def join(self, *parts: str) -> str:
        return posixpath.join(self.uri, *parts)

    def table_location(self, catalog: str, schema: str, table: str, tag: str | None = None) -> str:
        """Where a managed table lives: ``<warehouse>/<catalog>/<schema>/<table>-<tag>``.

        Each creation of a name gets a new random ``tag`` (the default), so a table dropped and
        created again never shares a folder with its predecessor: a process still holding the
        old table's snapshot, or files being vacuumed, cannot mix the two tables' versions.
        """
        return self.join(catalog, schema, f"{table}-{tag or uuid.uuid4().hex[:12]}")

    def delta_options(self, location: str | None = None) -> dict[str, str] | None:
        """Storage options for deltalake (None for a local location)."""
        loc = location or self.uri
        return self.options.to_delta() if is_remote(loc) else None

    def lance_options(self, location: str | None = None) -> dict[str, str] | None:
        """Storage options for lance (None for a local location)."""
        loc = location or self.uri
        return self.options.to_lance() if is_remote(loc) else None

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        """An fsspec filesystem for the warehouse."""
        return filesystem_for(self.uri, self.options)

    def remove(self, location: str) -> None:
        """Delete a folder of data (a dropped managed table)."""
        fs = filesystem_for(location, self.options)
        path = location if is_remote(location) else os.path.abspath(location)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def filesystem_for(uri: str, options: StorageOptions) -> fsspec.AbstractFileSystem:
    """An fsspec filesystem able to read ``uri``."""
    import fsspec

    if uri.startswith("s3://"):
        return options.s3fs()
    if uri.startswith("memory://"):
        return fsspec.filesystem("memory")
    return fsspec.filesystem("file")
