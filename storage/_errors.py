"""One ``StorageError`` for every object-store failure: what, where, why, and what to do.

delta-rs, lance, s3fs and pyarrow each report a failed request in their own words (a
``Generic S3 error`` with an indented chain of causes, a ``LanceError(IO)``, a botocore
exception); users see one message that names the operation, the location, the bucket and the
endpoint, says which of the usual causes it is (no or refused credentials, no such bucket, an
unreachable or silent endpoint) and gives a hint. The library's error stays the ``__cause__``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

from matrixos.errors import MatrixOSError, StorageError, VersionNotFound
from matrixos.storage.options import StorageOptions

# Words only a storage client's error contains (a predicate's "403" must not count).
_STORAGE_MARKERS = (
    "s3 error",
    "object store",
    "objectstore",
    "failed to get aws credentials",
    "error sending request",
    "169.254.169.254",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RUST_LOCATION = re.compile(r",\s*/\S+\.rs:\d+:\d+")

# (substrings of the lower-cased message, reason, hint); the first match wins, so the most
# specific causes come first.
_CAUSES: list[tuple[tuple[str, ...], str, str]] = [
    (
        (
            "169.254.169.254",
            "/latest/api/token",  # the instance metadata service, asked for credentials
            "/latest/meta-data",
            "failed to get aws credentials",
            "unable to locate credentials",
            "no credentials",
            "failedtoloadtoken",
            "credentials provider",
            "missing credentials",
        ),
        "no S3 credentials were found",
        "pass AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in storage_options or the "
        "environment (or run where an instance role provides them)",
    ),
    (
        ("nosuchbucket", "bucket does not exist", "specified bucket does not exist"),
        "the bucket does not exist",
        "create the bucket, or check the warehouse URI and AWS_ENDPOINT_URL",
    ),
    (
        (
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "accessdenied",
            "access denied",
            "403 forbidden",  # not a bare "403": request ids are random letters and digits
            "forbidden",
            "expiredtoken",
        ),
        "the endpoint refused the credentials",
        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) and the "
        "bucket's permissions",
    ),
    (
        ("timed out", "timeout", "deadline has elapsed"),
        "the endpoint did not answer in time",
        "check that the endpoint is up and reachable; the limits are the settings "
        "MATRIXOS_STORAGE_CONNECT_TIMEOUT, MATRIXOS_STORAGE_REQUEST_TIMEOUT and "
        "MATRIXOS_STORAGE_MAX_RETRIES",
    ),
    (
        (
            "connection refused",
            "error sending request",
            "failed to lookup address",
            "dns error",
            "could not connect",
            "connect error",
            "connection reset",
            "name or service not known",
        ),
        "the endpoint could not be reached or did not answer",
        "check AWS_ENDPOINT_URL (or the region) and that the server is up; the limits are "
        "the settings MATRIXOS_STORAGE_CONNECT_TIMEOUT, MATRIXOS_STORAGE_REQUEST_TIMEOUT and "
        "MATRIXOS_STORAGE_MAX_RETRIES",
    ),
]


def is_storage_failure(e: BaseException) -> bool:
    """True for an error of the object store (not of the data or the request's logic)."""
    if isinstance(e, OSError):
        return True
    low = str(e).lower()
    return any(n in low for n in _STORAGE_MARKERS)


@contextmanager
def storage_errors(
    operation: str, location: str, options: StorageOptions | None = None
) -> Iterator[None]:
    """Turn an object-store client's error raised inside into a ``StorageError`` (s3fs and
    botocore raise their own types: ``NoCredentialsError`` is not even an ``OSError``).

    Example:
        >>> with storage_errors("cannot list s3://b/in", "s3://b/in"):
        ...     raise OSError("Unable to locate credentials")
        Traceback (most recent call last):
        ...
        matrixos.errors.StorageError: cannot list s3://b/in: no S3 credentials were found (bucket 'b' at AWS S3)
        Hint: pass AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in storage_options or the environment (or run where an instance role provides them)
    """  # noqa: E501
    try:
        yield
    except MatrixOSError:
        raise
    except Exception as e:
        client = type(e).__module__.split(".", 1)[0] in ("botocore", "aiobotocore", "s3fs")
        if client or is_storage_failure(e):
            raise storage_error(e, operation, location, options=options) from e
        raise


def source_errors(
    paths: str | Sequence[str], options: StorageOptions
) -> AbstractContextManager[None]:
    """``storage_errors`` for reading sources (files to ingest) of which some may be remote:
    failures are named after the first remote one."""
    remote = [str(p) for p in ([paths] if isinstance(paths, str) else paths) if "://" in str(p)]
    remote = [p for p in remote if not p.startswith("file://")]
    if not remote:
        return nullcontext()
    return storage_errors(f"cannot ingest {remote[0]}", remote[0], options)


def describe_cause(e: BaseException) -> str:
    """The library's message on one line, without colour codes or Rust source locations."""
    text = _RUST_LOCATION.sub("", _ANSI.sub("", str(e)))
    parts = [p.strip(" ↳\t") for p in text.splitlines()]
    return ": ".join(p for p in parts if p) or type(e).__name__


def storage_error(
    e: BaseException,
    operation: str,
    location: str,
    *,
    endpoint: str | None = None,
    options: StorageOptions | None = None,
) -> StorageError:
    """A ``StorageError`` for ``e``, raised while doing ``operation`` (a phrase naming the
    location: ``"cannot open Delta table at s3://…"``, ``"append to s3://… failed"``).

    Example:
        >>> print(storage_error(OSError("Error performing GET: operation timed out"),
        ...     "cannot open s3://b/wh/t", "s3://b/wh/t", endpoint="http://127.0.0.1:9000"))
        cannot open s3://b/wh/t: the endpoint did not answer in time (bucket 'b' at http://127.0.0.1:9000)
        Hint: check that the endpoint is up and reachable; the limits are the settings MATRIXOS_STORAGE_CONNECT_TIMEOUT, MATRIXOS_STORAGE_REQUEST_TIMEOUT and MATRIXOS_STORAGE_MAX_RETRIES
    """  # noqa: E501
    if isinstance(e, StorageError):
        return e
    if endpoint is None and options is not None:
        endpoint = options.endpoint_url
    detail = describe_cause(e)
    low = detail.lower()
    bucket = None
    if "://" in location and not location.startswith("file://"):
        bucket = location.split("://", 1)[1].split("/", 1)[0]
    where_parts = []
    if bucket:
        where_parts.append(f"bucket {bucket!r}")
    if endpoint or bucket:
        where_parts.append(f"at {endpoint or 'AWS S3'}")
    where = f" ({' '.join(where_parts)})" if where_parts else ""
    cause = next((c for c in _CAUSES if any(n in low for n in c[0])), None)
    if cause is not None:
        message, hint = f"{operation}: {cause[1]}{where}", cause[2]
    else:
        message = f"{operation}{where}: {detail}"
        hint = "check the warehouse URI, the endpoint and the credentials"
    return StorageError(
        message,
        hint=hint,
        operation=operation,
        location=location,
        bucket=bucket,
        endpoint=endpoint,
        detail=detail,
    )


def version_not_found(what: str, version: int, earliest: int, latest: int) -> VersionNotFound:
    """``what`` (a table) has no ``version``: past its latest, or older than its history keeps.

    Example:
        >>> print(version_not_found("table raw.events", 99, 0, 3))
        table raw.events has versions 0 to 3; there is no version 99
        Hint: time travel to a version from 0 to 3 (DESCRIBE HISTORY lists them)
    """
    have = f"version {earliest}" if earliest == latest else f"versions {earliest} to {latest}"
    if 0 <= version < earliest:
        message = f"{what} has {have}; version {version} is no longer kept (its log was cleaned up)"
    else:
        message = f"{what} has {have}; there is no version {version}"
    return VersionNotFound(
        message,
        hint=f"time travel to a version from {earliest} to {latest} (DESCRIBE HISTORY lists them)",
    )
