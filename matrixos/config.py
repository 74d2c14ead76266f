"""Settings: one typed object read from ``MATRIXOS_*`` variables, overridable per ``connect()``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a session can be configured with.

    Each field reads ``MATRIXOS_<FIELD>`` from the environment; ``connect(**overrides)`` wins.

    Example:
        >>> Settings(warehouse="/tmp/wh").auto_compact_min_files
        16
    """

    model_config = SettingsConfigDict(env_prefix="MATRIXOS_", extra="forbid")

    warehouse: str = Field(
        default="./warehouse", description="Warehouse root: a path or s3:// URI."
    )
    catalog_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the catalog database. Default: SQLite inside a local "
        "warehouse, or under MATRIXOS_HOME for an object-store warehouse.",
    )
    home: str = Field(
        default="~/.matrixos", description="Per-user state (catalogs of s3 warehouses)."
    )
    compute: Literal["local", "ray"] | str = "local"
    default_dialect: str = "duckdb"
    user: str | None = Field(default=None, description="Owner recorded on new tables.")
    # 16: a full scan late in the cycle pays for at most 15 tiny files (DuckDB's cost is per
    # file); 64 left scans of an IoT-style table ~2x slower than one written at once.
    auto_compact_min_files: int = Field(
        default=16,
        ge=0,
        description="Compact a table once it has this many small files (0: never).",
    )
    small_file_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    target_file_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    commit_retries: int = Field(
        default=10, ge=0, description="Retries of a MERGE/UPDATE/DELETE hit by concurrent commits."
    )
    duckdb_threads: int | None = None
    duckdb_memory_limit: str | None = None


def resolve_settings(**overrides: Any) -> Settings:
    """Settings from the environment with the non-``None`` ``overrides`` applied."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
