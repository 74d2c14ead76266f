"""A folder of small objects with create-if-absent: what the object-store catalog's log needs.

Three places hold one: S3 (``PutObject`` with ``If-None-Match: *``, the conditional write
delta-rs commits with), a local folder (``link(2)`` of a finished temporary file, which fails if
the name exists) and fsspec's in-process ``memory://`` (a lock). Listings return each object's
tag (S3's ETag; inode and mtime locally): a tag that changed under a name means the object was
written again, i.e. the log was deleted and started afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from matrixos.errors import ConfigError, StorageError
from matrixos.storage._errors import storage_error
from matrixos.storage.options import StorageOptions


class Objects(ABC):
    """Objects under one root, named by relative keys such as ``log/00000000000000000007.json``."""

    uri: str

    @abstractmethod
    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        """The objects' bytes; keys that do not exist are left out."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> str | None:
        """Write ``key`` unless it exists and return its tag; None when it existed (someone
        else wrote it first)."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Write ``key``, replacing what is there."""

    @abstractmethod
    def list(self, folder: str, start_after: str = "") -> list[tuple[str, str]]:
        """``(key, tag)`` of the objects in ``folder`` whose names sort after ``start_after``,
        in name order."""

    def read(self, key: str) -> bytes | None:
        return self.read_many([key]).get(key)


def objects_at(uri: str, options: StorageOptions) -> Objects:
    """The objects under ``uri`` (``s3://``, ``memory://`` or ``file://``)."""
    if uri.startswith(("s3://", "s3a://")):
        return _S3Objects(uri, options)
    if uri.startswith("memory://"):
        return _MemoryObjects(uri)
    if uri.startswith("file://"):
        return _LocalObjects(uri)
    raise ConfigError(
        f"cannot keep a catalog at {uri!r}",
        hint="use s3://bucket/prefix/_catalog, file:///path/_catalog or a database URL",
    )


class _S3Objects(Objects):
    def __init__(self, uri: str, options: StorageOptions) -> None:
        from matrixos.storage.warehouse import filesystem_for

        self.uri = "s3://" + uri.split("://", 1)[1].rstrip("/")
        self.bucket, _, prefix = self.uri[len("s3://") :].partition("/")
        self.prefix = prefix + "/" if prefix else ""
        self.endpoint = options.endpoint_url or "AWS S3"
        self.fs: Any = filesystem_for(self.uri, options)

    def _path(self, key: str) -> str:
        return f"{self.bucket}/{self.prefix}{key}"

    def _error(self, what: str, e: Exception) -> StorageError:
        if isinstance(e, FileNotFoundError):
            return StorageError(
                f"cannot {what} the catalog at {self.uri}: bucket {self.bucket!r} does not exist "
                f"at {self.endpoint}",
                hint="create the bucket, or check the warehouse URI and AWS_ENDPOINT_URL",
            )
        if isinstance(e, PermissionError):
            return StorageError(
                f"cannot {what} the catalog at {self.uri}: access denied by {self.endpoint}",
                hint="check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
            )
        # Missing credentials, a silent endpoint…: named and hinted as for tables.
        return storage_error(
            e, f"cannot {what} the catalog at {self.uri}", self.uri, endpoint=self.endpoint
        )

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        from fsspec.asyn import sync

        async def get(key: str) -> bytes:
            # max_concurrency=1: one GET, without the HEAD s3fs sends first to split big files
            return await self.fs._cat_file(self._path(key), max_concurrency=1)

        async def get_all() -> list[Any]:
            return await asyncio.gather(*(get(k) for k in keys), return_exceptions=True)

        out: dict[str, bytes] = {}
        try:
            got = sync(self.fs.loop, get_all)
        except Exception as e:
            raise self._error("read", e) from e
        for key, value in zip(keys, got, strict=True):
            if isinstance(value, FileNotFoundError):
                continue
            if isinstance(value, Exception):
                raise self._error("read", value) from value
            if isinstance(value, BaseException):
                raise value
            out[key] = value
        return out

    def create(self, key: str, data: bytes) -> str | None:
        try:
            out = self.fs.pipe_file(self._path(key), data, mode="create")
        except FileExistsError:
            return None
        except OSError as e:
            # S3 answers 409 ConditionalRequestConflict while another conditional write of the
            # same key is in flight: that writer wins or fails; either way, read and retry.
            if _s3_code(e) in ("ConditionalRequestConflict", "PreconditionFailed"):
                return None
            raise self._error("write", e) from e
        return str(out["ETag"])

    def write(self, key: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._path(key), data)
        except Exception as e:
            raise self._error("write", e) from e

    def list(self, folder: str, start_after: str = "") -> list[tuple[str, str]]:
        prefix = f"{self.prefix}{folder.rstrip('/')}/"
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            args["StartAfter"] = prefix + start_after
        out: list[tuple[str, str]] = []
        try:
            while True:
                page = self.fs.call_s3("list_objects_v2", **args)
                for item in page.get("Contents", []):
                    out.append((item["Key"][len(self.prefix) :], item["ETag"]))
                if not page.get("IsTruncated"):
                    return out
                args["ContinuationToken"] = page["NextContinuationToken"]
        except Exception as e:
            raise self._error("list", e) from e


def _s3_code(e: BaseException) -> str | None:
    """The S3 error code behind an exception s3fs translated (it keeps botocore's as cause)."""
    seen: BaseException | None = e
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code"))
        seen = seen.__cause__ or seen.__context__
    return None


class _LocalObjects(Objects):
    def __init__(self, uri: str) -> None:
        self.root = Path(uri[len("file://") :]).expanduser().resolve()
        self.uri = f"file://{self.root}"

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                out[key] = (self.root / key).read_bytes()
        return out

    def _temp(self, key: str, data: bytes) -> Path:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        return tmp

    def create(self, key: str, data: bytes) -> str | None:
        tmp = self._temp(key, data)
        try:
            os.link(tmp, self.root / key)  # atomic, and fails if the name exists
        except FileExistsError:
            return None
        finally:
            tmp.unlink()
        return self._tag(self.root / key)

    @staticmethod
    def _tag(path: Path) -> str:
        st = path.stat()
        return f"{st.st_ino}-{st.st_mtime_ns}"

    def write(self, key: str, data: bytes) -> None:
        os.replace(self._temp(key, data), self.root / key)

    def list(self, folder: str, start_after: str = "") -> list[tuple[str, str]]:
        base = self.root / folder
        try:
            names = sorted(n for n in os.listdir(base) if not n.startswith("."))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name <= start_after:
                continue
            try:
                out.append((f"{folder.rstrip('/')}/{name}", self._tag(base / name)))
            except FileNotFoundError:
                continue
        return out


class _MemoryObjects(Objects):
    # fsspec's memory filesystem lives in this process only, so a lock makes create atomic.
    _lock = threading.Lock()

    def __init__(self, uri: str) -> None:
        import fsspec

        self.uri = uri.rstrip("/")
        self.fs = fsspec.filesystem("memory")

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        out = {}
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                out[key] = self.fs.cat_file(f"{self.uri}/{key}")
        return out

    def create(self, key: str, data: bytes) -> str | None:
        with self._lock:
            if self.fs.exists(f"{self.uri}/{key}"):
                return None
            self.fs.pipe_file(f"{self.uri}/{key}", data)
        return self._tag(self.fs.info(f"{self.uri}/{key}"))

    def _tag(self, info: dict[str, Any]) -> str:
        return f"{id(self.fs.store.get(info['name']))}-{info.get('created')}"

    def write(self, key: str, data: bytes) -> None:
        with self._lock:
            self.fs.pipe_file(f"{self.uri}/{key}", data)

    def list(self, folder: str, start_after: str = "") -> list[tuple[str, str]]:
        base = f"{self.uri}/{folder.rstrip('/')}"
        try:
            infos = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for info in infos:
            name = info["name"].rsplit("/", 1)[-1]
            if name > start_after:
                out.append((f"{folder.rstrip('/')}/{name}", self._tag(info)))
        return sorted(out)
