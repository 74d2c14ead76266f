"""The HTTP API's request and response bodies (pydantic models: validation and OpenAPI).

Shaped like Databricks' SQL Statement Execution API; ``dialect`` is MatrixOS's addition (any
sqlglot dialect, default the server's).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class ParameterIn(BaseModel):
    """A named parameter ``:name``: its value as text (null is SQL NULL) and its SQL type."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=_IDENT)
    value: str | None = None
    type: str | None = Field(None, max_length=64)


class StatementIn(BaseModel):
    """``POST /api/2.0/sql/statements``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    statement: str = Field(min_length=1, max_length=1_000_000)
    parameters: list[ParameterIn] = Field(default_factory=list, max_length=1000)
    catalog: str | None = Field(None, pattern=_IDENT)
    schema_name: str | None = Field(None, alias="schema", pattern=_IDENT)
    wait_timeout: str = Field(
        "10s",
        pattern=r"^[0-9]{1,2}s$",
        description="0s (return at once) or 5s to 50s: how long the call waits for the result",
    )
    on_wait_timeout: Literal["CONTINUE", "CANCEL"] = "CONTINUE"
    format: Literal["JSON_ARRAY", "ARROW_STREAM", "CSV"] = "JSON_ARRAY"
    disposition: Literal["INLINE", "EXTERNAL_LINKS"] | None = None
    row_limit: int | None = Field(None, ge=0, le=2**62)
    byte_limit: int | None = Field(None, ge=0, le=2**62)
    dialect: str | None = Field(None, pattern=r"^[a-z0-9_]{1,32}$")
    warehouse_id: str | None = Field(None, max_length=128, description="accepted and ignored")


class ErrorOut(BaseModel):
    error_code: str
    message: str
    sqlstate: str | None = None
    hint: str | None = None
    line: int | None = None
    column: int | None = None


class StatusOut(BaseModel):
    state: Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "CLOSED"]
    error: ErrorOut | None = None


class ColumnOut(BaseModel):
    name: str
    position: int
    type_name: str
    type_text: str
    nullable: bool


class SchemaOut(BaseModel):
    column_count: int
    columns: list[ColumnOut]


class ChunkInfo(BaseModel):
    chunk_index: int
    row_offset: int
    row_count: int
    byte_count: int | None = None


class ManifestOut(BaseModel):
    """A result's manifest; while the statement runs, only the chunks final so far (the
    totals and ``truncated`` come once it SUCCEEDED)."""

    format: str
    schema_: SchemaOut = Field(alias="schema")
    total_chunk_count: int | None = None
    chunks: list[ChunkInfo]
    total_row_count: int | None = None
    truncated: bool | None = None


class ExternalLink(ChunkInfo):
    external_link: str
    next_chunk_index: int | None = None
    next_chunk_internal_link: str | None = None


class ResultOut(BaseModel):
    """One chunk: its rows inline (JSON_ARRAY) or a link to its bytes (ARROW_STREAM, CSV)."""

    chunk_index: int
    row_offset: int
    row_count: int
    data_array: list[list[Any]] | None = None
    external_links: list[ExternalLink] | None = None
    next_chunk_index: int | None = None
    next_chunk_internal_link: str | None = None


class StatementOut(BaseModel):
    statement_id: str
    status: StatusOut
    manifest: ManifestOut | None = None
    result: ResultOut | None = None


class TablesOut(BaseModel):
    tables: list[str]


class SearchIn(BaseModel):
    """``POST /api/2.0/matrixos/search``: ``lh.search`` over HTTP; answers Arrow IPC bytes."""

    model_config = ConfigDict(extra="forbid")
    table: str = Field(min_length=1, max_length=400)
    query: str | list[float]
    k: int = Field(10, ge=1, le=10_000)
    mode: Literal["vector", "text", "hybrid"] = "vector"
    filter: str | None = Field(None, max_length=100_000)
    columns: list[str] | None = None
