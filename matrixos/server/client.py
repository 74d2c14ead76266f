"""The remote SDK: ``mx.connect("http://host:8080", token=…)`` talks to a ``matrixos serve``.

``RemoteLakehouse`` offers the embedded session's reading verbs — ``sql``, ``tables``,
``table(n).to_arrow()``/``history()``/``describe()``, ``search`` — with the same ``Result``
type. Rows travel as Arrow IPC streams (the statement API's ARROW_STREAM chunks, fetched as the
result is read), never as JSON. Errors arrive as the same ``MatrixOSError`` classes, with their
SQLSTATE, hint and position.

Example (against a running server):
    >>> lh = mx.connect("http://127.0.0.1:8080", token=token)     # doctest: +SKIP
    >>> lh.sql("SELECT 1 AS one").to_arrow()                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

import pyarrow as pa
from sqlglot import exp

from matrixos import errors
from matrixos.catalog import TableIdent
from matrixos.catalog.policies import Policy
from matrixos.engine.result import Result
from matrixos.errors import ConfigError, MatrixOSError, SQLError
from matrixos.server.client_http import HttpResponse, HttpSession
from matrixos.server.http_errors import status_of

STATEMENTS = "/api/2.0/sql/statements"
_PREFETCH = 4  # result chunks downloading at once
ARROW_STREAM = "application/vnd.apache.arrow.stream"
_IPC_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # an Arrow IPC stream's end-of-stream marker
_ACCEPT_ARROW = {"Accept": f"{ARROW_STREAM}, application/json"}
_FINAL = ("SUCCEEDED", "FAILED", "CANCELED", "CLOSED")


def connect_remote(url: str, **options: Any) -> RemoteLakehouse:
    """``mx.connect(url, token=…, timeout=…)`` for an ``http(s)://`` URL."""
    unknown = sorted(set(options) - {"token", "timeout"})
    if unknown:
        raise ConfigError(
            f"unknown argument {unknown[0]!r} for a server connection",
            hint="a server URL takes token= (and timeout=); the server has its own settings",
        )
    if not options.get("token"):
        raise ConfigError(
            f"connecting to {url} needs a token", hint="mx.connect(url, token=…): an API token "
            "from `matrixos tokens create NAME`"
        )  # fmt: skip
    return RemoteLakehouse(url, **options)


class RemoteLakehouse:
    """A session on a MatrixOS server, acting as the token's account.

    Args:
        url: ``http://host:port`` (or https) of ``matrixos serve``.
        token: an API token (``matrixos tokens create NAME``).
        timeout: seconds one HTTP call may take.
    """

    def __init__(self, url: str, *, token: str, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        # X-MatrixOS-Client: the server records the SDK's statements as protocol "sdk"
        headers = {"Authorization": f"Bearer {token}", "X-MatrixOS-Client": "sdk"}
        self._http = HttpSession(self.url, headers, timeout)

    def __repr__(self) -> str:
        return f"RemoteLakehouse({self.url!r})"

    def __enter__(self) -> RemoteLakehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- SQL --------------------------------------------------------------------------------
    def sql(
        self,
        query: str,
        *,
        dialect: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Result:
        """Run SQL on the server (as ``Lakehouse.sql``); ``parameters`` bind ``:name``
        placeholders as literals. The rows stream in as Arrow chunks while the result is read.
        """
        body: dict[str, Any] = {
            "statement": query,
            "format": "ARROW_STREAM",
            "disposition": "EXTERNAL_LINKS",
            "wait_timeout": "50s",
        }
        if dialect:
            body["dialect"] = dialect
        if parameters:
            body["parameters"] = [
                {"name": k, "value": None if v is None else str(v)} for k, v in parameters.items()
            ]
        response = self._call("POST", STATEMENTS, json=body, headers=_ACCEPT_ARROW)
        if response.headers.get("content-type") == ARROW_STREAM:
            # Its rows began within the wait: they all came in the answer, streamed.
            return Result.from_table(self._streamed(response))
        answer = response.json()
        delay = 0.01
        while answer["status"]["state"] not in _FINAL:
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            answer = self._call("GET", f"{STATEMENTS}/{answer['statement_id']}").json()
        state = answer["status"]["state"]
        if state != "SUCCEEDED":
            raise _error(answer["status"].get("error") or {"message": f"statement {state}"})
        return self._result(answer)

    def _result(self, answer: dict[str, Any]) -> Result:
        sid = answer["statement_id"]
        return self._rows(sid, answer["manifest"]["total_chunk_count"])

    def _streamed(self, response: HttpResponse) -> pa.Table:
        """A statement's rows streamed whole in ``response`` (an Arrow IPC stream); one that
        does not end with the end-of-stream marker broke midway: the statement says why."""
        data = response.content
        if data.endswith(_IPC_END):
            with contextlib.suppress(pa.ArrowInvalid, OSError):
                return _read_ipc(data)
        sid = response.headers.get("x-matrixos-statement-id", "")
        status = self._call("GET", f"{STATEMENTS}/{sid}").json()["status"]
        raise _error(
            status.get("error")
            or {"message": f"the result broke off: the statement is {status['state']}"}
        )

    def _rows(self, sid: str, total: int) -> Result:
        """The statement's rows: chunk 0, then the rest."""
        first = _read_ipc(self._chunk(sid, 0))
        if total == 1:
            return Result.from_table(first)

        def batches() -> Iterator[pa.RecordBatch]:
            # The next chunks download while this one is read (up to _PREFETCH at once).
            assert first is not None
            yield from first.to_batches()
            with ThreadPoolExecutor(_PREFETCH, thread_name_prefix="mx-chunks") as pool:
                pending = deque(pool.submit(self._chunk, sid, i) for i in range(1, total))
                while pending:
                    data = pending.popleft().result()
                    yield from _read_ipc(data).to_batches()
            with contextlib.suppress(MatrixOSError):
                self._call("DELETE", f"{STATEMENTS}/{sid}")  # read: the server may free it

        return Result(pa.RecordBatchReader.from_batches(first.schema, batches()))

    def _chunk(self, statement_id: str, index: int) -> bytes:
        return self._call("GET", f"{STATEMENTS}/{statement_id}/result/chunks/{index}/data").content

    # -- tables -----------------------------------------------------------------------------
    def tables(self, schema: str | None = None) -> list[str]:
        """The tables this account may read (in ``[catalog.]schema`` when given)."""
        params = {"schema": schema} if schema else None
        return list(self._call("GET", "/api/2.0/matrixos/tables", params=params).json()["tables"])

    def table(self, name: str) -> RemoteTable:
        """An existing table; ``TableNotFound`` (or ``AccessDenied``) as the server says."""
        facts = self._call("GET", f"/api/2.0/matrixos/tables/{_name(name)}").json()
        return RemoteTable(self, facts["name"])

    # -- search -----------------------------------------------------------------------------
    def search(
        self,
        table: str,
        query: Any,
        *,
        k: int = 10,
        mode: Literal["vector", "text", "hybrid"] = "vector",
        filter: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> Result:
        """Top ``k`` rows of a Lance table for ``query`` plus ``_score`` (as
        ``Lakehouse.search``)."""
        if not isinstance(query, str):
            query = [float(x) for x in query]
        body = {
            "table": table,
            "query": query,
            "k": k,
            "mode": mode,
            "filter": filter,
            "columns": list(columns) if columns is not None else None,
        }
        response = self._call("POST", "/api/2.0/matrixos/search", json=body)
        return Result.from_table(self._streamed(response), statement="SEARCH")

    # -- metering ---------------------------------------------------------------------------
    @property
    def accounts(self) -> RemoteAccounts:
        """Prepaid credit on the server (as ``Lakehouse.accounts``: balance, ledger, credit)."""
        return RemoteAccounts(self)

    def usage(
        self,
        account: str | None = None,
        *,
        by: Literal["hour", "day", "job"] = "day",
        since: str | None = None,
        until: str | None = None,
    ) -> pa.Table:
        """Metered use in degrees of the accounts this token's user may see (as
        ``Lakehouse.usage``)."""
        params = {"by": by, "format": "ARROW_STREAM"}
        for key, value in (("account", account), ("since", since), ("until", until)):
            if value is not None:
                params[key] = value
        return _read_ipc(self._call("GET", "/api/2.0/billing/usage", params=params).content)

    # -- HTTP -------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> HttpResponse:
        try:
            response = self._http.request(method, path, **kwargs)
        except OSError as e:
            raise errors.StorageError(
                f"cannot reach the MatrixOS server at {self.url}: {type(e).__name__}",
                hint="is `matrixos serve` running there, and the URL right?",
                operation=f"{method} {path}",
                endpoint=self.url,
            ) from e
        if response.status >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text[:500] or f"HTTP {response.status}"}
            if response.status == 401:
                raise errors.AccessDenied(
                    body.get("message", "not authenticated"), hint=body.get("hint")
                )
            raise _error(body)
        return response


class RemoteAccounts:
    """Prepaid credit in degrees through the server's billing routes: a user reads the accounts
    it is or belongs to; an admin credits."""

    def __init__(self, lakehouse: RemoteLakehouse) -> None:
        self._lh = lakehouse

    def _path(self, account: str) -> str:
        return f"/api/2.0/billing/accounts/{quote(account, safe='')}"

    def balance(self, account: str) -> Decimal:
        """``account``'s balance."""
        return Decimal(self._lh._call("GET", self._path(account)).json()["balance"])

    def summary(self, account: str) -> dict[str, Any]:
        """``account``'s credited, consumed, balance (decimal strings) and alerts."""
        return dict(self._lh._call("GET", self._path(account)).json())

    def ledger(self, account: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """``account``'s credits and charges, oldest first (degrees as decimal strings)."""
        params = {"limit": limit} if limit else None
        answer = self._lh._call("GET", self._path(account) + "/ledger", params=params)
        return list(answer.json()["entries"])

    def credit(
        self, account: str, degrees: Decimal | float | str, *, note: str | None = None
    ) -> Decimal:
        """Add a prepaid package (admins only); the balance after."""
        body = {"degrees": str(degrees), "note": note}
        answer = self._lh._call("POST", self._path(account) + "/credit", json=body)
        return Decimal(answer.json()["balance"])


class RemoteTable:
    """A table on the server: its reads (writes go through SQL: ``lh.sql("INSERT …")``)."""

    def __init__(self, lakehouse: RemoteLakehouse, name: str) -> None:
        self._lh = lakehouse
        self.name = name

    def __repr__(self) -> str:
        return f"RemoteTable({self.name!r})"

    def describe(self) -> dict[str, Any]:
        """Catalog facts, version, files and schema (as ``Table.describe``)."""
        path = f"/api/2.0/matrixos/tables/{_name(self.name)}"
        return dict(self._lh._call("GET", path).json())

    @property
    def version(self) -> int:
        return int(self.describe()["version"])

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits, newest first (timestamps as ISO text)."""
        params = {"limit": limit} if limit else None
        path = f"/api/2.0/matrixos/tables/{_name(self.name)}/history"
        return list(self._lh._call("GET", path, params=params).json()["history"])

    def to_arrow(
        self,
        version: int | None = None,
        timestamp: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """The rows (at ``version`` or ``timestamp`` when given)."""
        params: dict[str, Any] = {}
        if version is not None:
            params["version"] = version
        if timestamp is not None:
            params["timestamp"] = (
                timestamp.isoformat() if isinstance(timestamp, datetime) else timestamp
            )
        if columns is not None:
            params["columns"] = list(columns)
        path = f"/api/2.0/matrixos/tables/{_name(self.name)}/arrow"
        return self._lh._streamed(self._lh._call("GET", path, params=params))

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.to_arrow().__arrow_c_stream__(requested_schema)

    def to_polars(self, **kwargs: Any) -> Any:
        import polars as pl

        return pl.from_arrow(self.to_arrow(**kwargs))

    def to_pandas(self, **kwargs: Any) -> Any:
        return self.to_arrow(**kwargs).to_pandas()

    # -- row filters and column masks (the same calls as ``Table``'s) -------------------------
    def set_row_filter(self, predicate: str, *, account: str) -> None:
        """Show ``account`` (a user, or a group's members) only the rows where the SQL
        ``predicate`` holds (the table's owner, an admin or a holder of MANAGE only)."""
        self._lh._call("PUT", f"{self._path}/row-filters/{quote(account, safe='')}",
                       json={"predicate": predicate})  # fmt: skip

    def drop_row_filter(self, *, account: str) -> bool:
        """Remove ``account``'s row filter; whether there was one."""
        path = f"{self._path}/row-filters/{quote(account, safe='')}"
        return bool(self._lh._call("DELETE", path).json()["dropped"])

    def set_mask(self, column: str, expression: str, *, account: str) -> None:
        """Show ``account`` the SQL ``expression`` instead of ``column``'s value."""
        path = f"{self._path}/masks/{quote(column, safe='')}/{quote(account, safe='')}"
        self._lh._call("PUT", path, json={"expression": expression})

    def drop_mask(self, column: str, *, account: str) -> bool:
        """Remove ``account``'s mask of ``column``; whether there was one."""
        path = f"{self._path}/masks/{quote(column, safe='')}/{quote(account, safe='')}"
        return bool(self._lh._call("DELETE", path).json()["dropped"])

    def policies(self) -> list[Policy]:
        """The table's row filters and masks (all of them to who may manage the table, else
        those that apply to the caller)."""
        found = self._lh._call("GET", f"{self._path}/policies").json()["policies"]
        return [
            Policy(**{**p, "created_at": datetime.fromisoformat(p["created_at"])}) for p in found
        ]

    @property
    def _path(self) -> str:
        return f"/api/2.0/matrixos/tables/{_name(self.name)}"

    def count(self) -> int:
        ident = TableIdent.parse(self.name)
        table = exp.table_(ident.name, db=ident.schema, catalog=ident.catalog, quoted=True)
        query = exp.select(exp.func("count", exp.Star())).from_(table)
        return int(self._lh.sql(query.sql("duckdb")).scalar())


def _name(name: str) -> str:
    """A table name checked for the URL path (``TableIdent`` refuses anything path-like)."""
    return str(TableIdent.parse(name))


def _read_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()  # no copy of the bytes


def _error_classes() -> dict[tuple[str, str], type[MatrixOSError]]:
    """The error classes by (SQLSTATE, error_code) as the server answers them."""
    out: dict[tuple[str, str], type[MatrixOSError]] = {}
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, MatrixOSError):
            out.setdefault((cls.sqlstate, status_of(cls)[1]), cls)
    return out


_CLASSES = _error_classes()


def _error(body: Mapping[str, Any]) -> MatrixOSError:
    """The server's error answer as the ``MatrixOSError`` class its SQLSTATE names."""
    sqlstate = str(body.get("sqlstate") or "XX000")
    code = str(body.get("error_code") or "")
    fallback = SQLError if code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST") else MatrixOSError
    cls = _CLASSES.get((sqlstate, code), fallback)
    message = str(body.get("message") or "the server refused the request")
    hint = body.get("hint")
    line, col = body.get("line"), body.get("column")
    err: MatrixOSError
    try:
        if issubclass(cls, SQLError):
            # SQLError adds " (line L, column C)" itself: give it the message without.
            where = f" (line {line}, column {col})"
            if line is not None and col is not None and message.endswith(where):
                message = message[: -len(where)]
            err = cls(message, line=line, col=col, hint=hint, sqlstate=sqlstate)
        else:
            err = cls(message, hint=hint)
    except TypeError:  # a class with more required fields (IngestError's path)
        err = MatrixOSError(message, hint=hint)
    if err.sqlstate != sqlstate:
        err.sqlstate = sqlstate
    return err
