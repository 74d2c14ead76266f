"""MatrixOS errors as HTTP answers: one status code and one JSON body per error class.

The body is Databricks-shaped (``error_code``, ``message``) with what a MatrixOS error knows
besides: ``sqlstate``, ``hint`` and, for SQL, ``line``/``column``. User mistakes are 4xx
(400 invalid, 403 refused, 404 missing, 409 conflicting, 429 over a limit); only a
server-side failure is 5xx.

Example:
    >>> from matrixos.errors import AccessDenied, SQLError
    >>> http_status(AccessDenied("no")), http_status(SQLError("bad", line=1, col=8))
    (403, 400)
    >>> error_body(SQLError("bad", line=1, col=8))["column"]
    8
"""

from __future__ import annotations

from typing import Any

from matrixos.errors import (
    AccessDenied,
    ComputeError,
    ConcurrentWriteError,
    MatrixOSError,
    NotSupported,
    OutOfCredit,
    ServerUnavailable,
    SQLError,
    StatementCanceled,
    StorageError,
    TableExists,
    TooManyStatements,
)

# (error class, HTTP status, Databricks error_code): the first class an error is wins.
_MAP: list[tuple[type[BaseException], int, str]] = [
    (AccessDenied, 403, "PERMISSION_DENIED"),
    (NotSupported, 400, "NOT_IMPLEMENTED"),
    (ServerUnavailable, 503, "TEMPORARILY_UNAVAILABLE"),
    (TooManyStatements, 429, "RESOURCE_EXHAUSTED"),
    (OutOfCredit, 402, "RESOURCE_EXHAUSTED"),
    (StorageError, 503, "TEMPORARILY_UNAVAILABLE"),
    (ComputeError, 503, "TEMPORARILY_UNAVAILABLE"),
    (TableExists, 409, "RESOURCE_ALREADY_EXISTS"),
    (ConcurrentWriteError, 409, "ABORTED"),
    (StatementCanceled, 409, "CANCELLED"),
    (LookupError, 404, "NOT_FOUND"),
    (SQLError, 400, "INVALID_PARAMETER_VALUE"),
]


def _entry(e: BaseException) -> tuple[int, str]:
    return status_of(type(e))


def status_of(cls: type[BaseException]) -> tuple[int, str]:
    """The HTTP status and Databricks ``error_code`` errors of class ``cls`` answer with."""
    for base, status, code in _MAP:
        if issubclass(cls, base):
            return status, code
    if issubclass(cls, MatrixOSError) and cls is not MatrixOSError:
        return 400, "BAD_REQUEST"  # ConfigError, SchemaMismatch, IngestError, …: the input
    return 500, "INTERNAL_ERROR"  # the bare root: "internal error" (a bug, logged)


def http_status(e: BaseException) -> int:
    """The HTTP status ``e`` answers with."""
    return _entry(e)[0]


def error_body(e: MatrixOSError) -> dict[str, Any]:
    """The JSON describing ``e`` (``status.error`` of a statement, or a whole error answer)."""
    body: dict[str, Any] = {
        "error_code": _entry(e)[1],
        "message": e.message,
        "sqlstate": e.sqlstate,
    }
    if e.hint:
        body["hint"] = e.hint
    line, col = getattr(e, "line", None), getattr(e, "col", None)
    if line is not None:
        body["line"] = line
    if col is not None:
        body["column"] = col
    for name in ("field", "earliest"):  # a refused job request: what to change
        value = getattr(e, name, None)
        if value is not None:
            body[name] = value
    return body
