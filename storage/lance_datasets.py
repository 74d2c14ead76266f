"""Lance datasets opened by URI for reading and indexing (search), with their handles kept.

A handle is kept per (URI, storage options) so that Lance's session, with its index and
metadata caches, survives between queries; reopening costs a manifest read per call. Writers
that move a dataset to new versions (index builds) get a handle of their own.

Example:
    >>> import tempfile, lance, pyarrow as pa
    >>> uri = tempfile.mkdtemp() + "/docs.lance"
    >>> _ = lance.write_dataset(pa.table({"id": [1, 2]}), uri)
    >>> _ = lance.write_dataset(pa.table({"id": [3]}), uri, mode="append")
    >>> open_dataset(uri).count_rows(), open_dataset(uri, version=1).count_rows()
    (3, 2)
    >>> open_dataset(uri + "/missing")
    Traceback (most recent call last):
    ...
    matrixos.errors.TableNotFound: no Lance dataset at '.../docs.lance/missing'
    Hint: ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from matrixos._lru import LRU
from matrixos.errors import ConfigError, MatrixOSError, TableNotFound
from matrixos.storage._errors import is_storage_failure, storage_error

if TYPE_CHECKING:
    from lance.dataset import LanceDataset

__all__ = ["lance_error", "lance_message", "open_dataset", "open_for_write"]

LanceOptions = Mapping[str, str] | None  # lance's lower-case storage option keys

_ENDPOINT_KEYS = ("aws_endpoint_url", "aws_endpoint", "endpoint_url", "endpoint")
_RS_LOCATION = re.compile(r",?\s*/\S+?\.rs:\d+:\d+")
_HANDLES: LRU[tuple[str, tuple[tuple[str, str], ...]], LanceDataset] = LRU(64)


def lance_message(e: BaseException) -> str:
    """A lance error's text without the Rust source location it ends with."""
    return _RS_LOCATION.sub("", str(e)).strip()


def lance_error(e: Exception, what: str, uri: str, options: LanceOptions = None) -> MatrixOSError:
    """The MatrixOSError for a lance failure while doing ``what`` on the dataset at ``uri``: a
    missing dataset is ``TableNotFound``, an object-store failure a ``StorageError`` that says
    which of the usual causes it is."""
    if isinstance(e, MatrixOSError):
        return e
    msg = lance_message(e)
    low = msg.lower()
    if "not found" in low and ("dataset" in low or "no such file" in low):
        return TableNotFound(f"no Lance dataset at {uri!r}", hint=msg)
    if is_storage_failure(e) or "lanceerror(io)" in low:
        endpoint = next(
            (v for k, v in (options or {}).items() if k.lower() in _ENDPOINT_KEYS), None
        )
        return storage_error(e, f"{what} on {uri!r} failed", uri, endpoint=endpoint)
    return MatrixOSError(f"{what} on {uri!r} failed: {msg}")


def _options(storage_options: LanceOptions) -> dict[str, str] | None:
    return dict(storage_options or {}) or None


def open_dataset(
    uri: str, storage_options: LanceOptions = None, version: int | None = None
) -> LanceDataset:
    """The dataset at ``version`` (default: the latest, checked on every call).

    The handle is shared: callers must not move it to other versions (use ``open_for_write``).

    Raises:
        TableNotFound, StorageError, ConfigError (no such version), MatrixOSError.
    """
    import lance

    key = (uri, tuple(sorted((str(k), str(v)) for k, v in (storage_options or {}).items())))
    ds = _HANDLES.get(key)
    try:
        if ds is None:
            ds = lance.dataset(uri, storage_options=_options(storage_options))
        latest = ds.latest_version
        if ds.version != latest:
            ds = ds.checkout_version(latest)
    except Exception as e:
        raise lance_error(e, "opening the dataset", uri, storage_options) from e
    _HANDLES.put(key, ds)
    if version is None or version == ds.version:
        return ds
    try:
        return ds.checkout_version(version)
    except Exception as e:
        raise ConfigError(
            f"{uri!r} has no version {version}", hint=f"the latest version is {ds.version}"
        ) from e


def open_for_write(uri: str, storage_options: LanceOptions = None) -> LanceDataset:
    """A handle of its own at the latest version: index builds move it to new versions, which
    must not happen under searches sharing the cached handle (they rely on its version staying
    put).

    Raises:
        TableNotFound, StorageError, MatrixOSError.
    """
    import lance

    try:
        return lance.dataset(uri, storage_options=_options(storage_options))
    except Exception as e:
        raise lance_error(e, "opening the dataset", uri, storage_options) from e
