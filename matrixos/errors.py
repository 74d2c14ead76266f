"""The one error hierarchy every public MatrixOS call raises.

Leaves also subclass the natural builtin (``TableNotFound`` is a ``LookupError``) so existing
``except`` clauses keep working. SQL errors carry a ``sqlstate`` plus ``line``/``col`` so the CLI,
HTTP and PostgreSQL-wire front ends can map them in one place.
"""

from __future__ import annotations

from decimal import Decimal


class MatrixOSError(Exception):
    """Root of every error raised by the public API."""

    sqlstate: str = "XX000"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\nHint: {self.hint}" if self.hint else self.message


class ConfigError(MatrixOSError, ValueError):
    """Invalid configuration: a bad warehouse URI, catalog URL or option."""

    sqlstate = "F0000"


class SQLError(MatrixOSError, ValueError):
    """Invalid SQL: it does not parse, or the engine rejected it.

    ``line`` and ``col`` are 1-based positions in the statement text when known.
    """

    sqlstate = "42601"

    def __init__(
        self,
        message: str,
        *,
        sql: str | None = None,
        line: int | None = None,
        col: int | None = None,
        hint: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        where = f" (line {line}, column {col})" if line is not None and col is not None else ""
        super().__init__(message + where, hint=hint)
        self.sql = sql
        self.line = line
        self.col = col
        if sqlstate:
            self.sqlstate = sqlstate


class AccessDenied(SQLError, PermissionError):
    """The statement tried something a user's SQL may not do (files, settings, extensions)."""

    sqlstate = "42501"


class NotSupported(SQLError, NotImplementedError):
    """A statement or table feature MatrixOS cannot honour (yet); nothing was done."""

    sqlstate = "0A000"


class TableNotFound(MatrixOSError, LookupError):
    """No such catalog, schema or table."""

    sqlstate = "42P01"


class SchemaNotFound(TableNotFound):
    """No such schema (or catalog)."""

    sqlstate = "3F000"


class VolumeNotFound(TableNotFound):
    """No such volume."""


class FileNotFound(MatrixOSError, FileNotFoundError):
    """No such file in a volume."""

    sqlstate = "58P01"


class TableExists(MatrixOSError, FileExistsError):
    """A table (or schema) of that name already exists."""

    sqlstate = "42P07"


class AccountNotFound(MatrixOSError, LookupError):
    """No such account (user, group or service principal) or API token."""

    sqlstate = "42704"


class AccountExists(MatrixOSError, FileExistsError):
    """An account of that name already exists."""

    sqlstate = "42710"


class SchemaMismatch(MatrixOSError, TypeError):
    """Data does not fit the table's schema; nothing was written."""

    sqlstate = "42804"


class ConcurrentWriteError(MatrixOSError, RuntimeError):
    """A write kept conflicting with concurrent writers and gave up; nothing was written."""

    sqlstate = "40001"


class IngestError(MatrixOSError, ValueError):
    """A source file could not be read; names the file and, when known, its line and column."""

    sqlstate = "22P04"

    def __init__(
        self,
        message: str,
        *,
        path: str,
        line: int | None = None,
        col: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = path
        if line is not None:
            where += f", line {line}"
        if col is not None:
            where += f", column {col}"
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = path
        self.line = line
        self.col = col


class PointsRejected(IngestError):
    """IoT points (line protocol, JSON, a dropped file) were refused; nothing of the batch was
    acknowledged unless the writer asked for partial writes.

    ``rejected`` lists every refused line: ``{"line", "column", "field", "message"}`` (1-based
    line and column of the source text; ``field`` when one field is at fault).
    """

    sqlstate = "22P02"

    def __init__(
        self, message: str, *, path: str, rejected: list[dict[str, object]], hint: str | None = None
    ) -> None:
        first = rejected[0] if rejected else {}
        line = first.get("line")
        col = first.get("column")
        super().__init__(
            message,
            path=path,
            line=line if isinstance(line, int) else None,
            col=col if isinstance(col, int) else None,
            hint=hint,
        )
        self.rejected = rejected


class IngestBusy(MatrixOSError, RuntimeError):
    """The ingest write-ahead log is at capacity (or cannot be written): the points were not
    acknowledged; retry after ``retry_after`` seconds."""

    sqlstate = "53000"  # insufficient_resources

    def __init__(
        self,
        message: str,
        *,
        retry_after: float = 1.0,
        hint: str | None = None,
        storage_failure: bool = False,
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after
        self.storage_failure = storage_failure  # the log's disk refused the write (503)


class WarehouseNotFound(MatrixOSError, LookupError):
    """No warehouse at the given location (reading commands never create one)."""

    sqlstate = "3D000"


class VersionNotFound(TableNotFound):
    """A table has no such version, or none as of a time (time travel past its history)."""

    sqlstate = "22023"


class ResultConsumed(MatrixOSError, RuntimeError):
    """A result streamed without keeping its rows was read again."""

    sqlstate = "24000"


class StorageError(MatrixOSError, OSError):
    """The warehouse's storage could not be reached or read.

    Carries what was being done (``operation``), where (``location``, ``bucket``,
    ``endpoint``) when known; ``detail`` is the storage library's message on one line (the
    library's error itself is the ``__cause__``).
    """

    sqlstate = "58030"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        operation: str | None = None,
        location: str | None = None,
        bucket: str | None = None,
        endpoint: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.detail = detail
        self.operation = operation
        self.location = location
        self.bucket = bucket
        self.endpoint = endpoint


class BatchError(MatrixOSError, RuntimeError):
    """A batch UDF (``lh.map_batches``) failed; names the batch and its rows.

    ``batch`` is the batch's index in the job and ``rows`` its ``(first, end)`` row range of the
    source; batches committed before it stay committed, and a rerun resumes after them.
    """

    sqlstate = "38000"  # external routine exception

    def __init__(
        self,
        message: str,
        *,
        batch: int | None = None,
        rows: tuple[int, int] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.batch = batch
        self.rows = rows


class ComputeError(MatrixOSError, RuntimeError):
    """The compute pool could not be started or reached, or a task on it failed."""

    sqlstate = "58000"


class StatementCanceled(MatrixOSError, RuntimeError):
    """A running statement was stopped on request (a server client's cancel); nothing it
    would have written was committed."""

    sqlstate = "57014"  # query_canceled


class ServerUnavailable(MatrixOSError, RuntimeError):
    """The server is shutting down (draining) and takes no new statements; retry elsewhere or
    after it restarts."""

    sqlstate = "57P03"  # cannot_connect_now


class TooManyStatements(MatrixOSError, RuntimeError):
    """A principal has as many statements running on the server as it may; retry shortly."""

    sqlstate = "53000"  # insufficient_resources


class StatementNotFound(MatrixOSError, LookupError):
    """No statement of that id on this server (never submitted, expired, or another user's)."""

    sqlstate = "26000"  # invalid_sql_statement_name


class OutOfCredit(MatrixOSError, RuntimeError):
    """An account's prepaid credit cannot pay for the work asked: a job refused at submit, or
    stopped when its account reached zero. ``balance`` and ``asked`` are in degrees (1 degree =
    312 TFLOPS x 1 hour), as ``Decimal``; ``account`` names the account (all three are None
    in an error a remote client rebuilt from a server's answer: its message has them)."""

    sqlstate = "53400"  # configuration_limit_exceeded

    def __init__(
        self,
        message: str,
        *,
        account: str | None = None,
        balance: Decimal | None = None,
        asked: Decimal | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.account = account
        self.balance = balance
        self.asked = asked


class JobError(MatrixOSError, ValueError):
    """A job request or a reservation is invalid or cannot be met on this cluster.

    ``field`` names the request field at fault (``"gpus"``, ``"accelerators"``, ``"nodes"``…);
    a refused reservation carries ``earliest``, the earliest start (epoch seconds) that would fit.
    """

    sqlstate = "22023"  # invalid_parameter_value

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        earliest: float | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.field = field
        self.earliest = earliest


class JobNotFound(JobError, LookupError):
    """No such job, or not one the principal may see (``field`` is ``"id"``)."""

    sqlstate = "42704"  # undefined_object


class TpchError(MatrixOSError, RuntimeError):
    """The TPC-H sample data could not be generated (``matrixos demo``, the benchmarks)."""


__all__ = [
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
]
