"""Settings: one typed object read from ``MATRIXOS_*`` variables, overridable per ``connect()``."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from matrixos.errors import ConfigError
from matrixos.storage.options import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRY_TIMEOUT,
)

# Where a node's storage zone shows to Ray's schedulers: a resource ``zone:<name>`` and a node
# label (see matrixos.compute's ``ray_start_command``; the engine's placement reads the label).
ZONE_RESOURCE_PREFIX = "zone:"
ZONE_LABEL = "matrixos.io/zone"
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})$")


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
        description="Where the catalog lives: sqlite:///path, postgresql://… or "
        "s3://bucket/prefix/_catalog. Default: SQLite inside a local warehouse "
        "(<warehouse>/_catalog.db), a commit log inside an object-store warehouse "
        "(<warehouse>/_catalog/), so every machine that reaches the bucket sees its tables.",
    )
    home: str = Field(
        default="~/.matrixos",
        description="Per-user state. Older versions kept object-store warehouses' catalogs "
        "here (catalogs/<hash>.db); they are imported into the warehouse when first opened.",
    )
    compute: Literal["local", "ray"] | str = Field(
        default="local",
        description="Where queries run: 'local' (in-process), 'ray' (a private Ray runtime, or "
        "the cluster in RAY_ADDRESS), 'ray://host:port' (Ray client) or 'host:port' (a Ray "
        "cluster's GCS address). See matrixos.compute.",
    )
    zone: str | None = Field(
        default=None, description="Storage zone of this node (MATRIXOS_ZONE), e.g. 'eu-west-1a'."
    )
    storage_zones: dict[str, str] = Field(
        default_factory=dict,
        description="Storage zone of warehouse locations: URI prefix → zone (JSON in "
        'MATRIXOS_STORAGE_ZONES), e.g. {"s3://eu-bucket/": "eu-west-1a"}. A query\'s '
        "fragments run in their files' zone when no node has them cached.",
    )
    cache_dir: str | None = Field(
        default=None,
        description="This node's cache of object-store files (MATRIXOS_CACHE_DIR); default "
        "~/.cache/matrixos/files. See matrixos.engine.filecache.",
    )
    tpch_dir: str | None = Field(
        default=None,
        description="Cache of the TPC-H sample data and its generator (MATRIXOS_TPCH_DIR); "
        "default ~/.cache/matrixos/tpch. See matrixos.demo.",
    )
    cache_max_bytes: int = Field(
        default=8 * 1024**3,
        ge=0,
        description="Bound of this node's file cache in bytes (MATRIXOS_CACHE_MAX_BYTES).",
    )
    distributed_min_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="engine='auto' runs a query on Ray when it scans at least this many bytes.",
    )
    ray_stage_ms: float = Field(
        default=40.0,
        ge=0,
        description="What one stage on the Ray pool costs besides its work (scheduling, "
        "moving results; ~40 ms measured): engine='auto' keeps a query local while its "
        "estimated local time is below it.",
    )
    broadcast_max_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=0,
        description="Distributed joins send a side of at most this many bytes (estimated from "
        "its files, or measured) to every task; larger sides are hash-partitioned.",
    )
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
    # 20: under 8 writers churning one table (benchmarks.torture) 0.9% of operations gave up
    # after 10 retries, 0.1% after 20; each retry waits up to 2 s (full jitter), so a caller
    # hears ConcurrentWriteError after at most ~31 s of waiting (~16 s on average).
    commit_retries: int = Field(
        default=20,
        ge=0,
        description="Retries of a write (MERGE/UPDATE/DELETE/overwrite/OPTIMIZE) that lost a "
        "race to a conflicting concurrent commit, each on a fresh snapshot.",
    )
    degree_table: str | None = Field(
        default=None,
        description="A JSON file {type: peak TFLOPS} (MATRIXOS_DEGREE_TABLE) whose entries "
        "replace or extend matrixos.metering.PEAK_TFLOPS (accelerators, 'CPU' per core, "
        "'MEMORY' per GB): what one second of each resource costs in degrees.",
    )
    meter_statements: bool = Field(
        default=False,
        description="Record every SQL statement's core-seconds in system.billing.usage and "
        "charge its principal's prepaid credit (MATRIXOS_METER_STATEMENTS); matrixos serve "
        "turns it on.",
    )
    duckdb_threads: int | None = None
    duckdb_memory_limit: str | None = None
    # object_store's defaults (30 s per request, 10 retries for up to 3 minutes) left a stalled
    # endpoint hanging a create_table for 3 minutes; these fail within about a minute.
    storage_connect_timeout: float = Field(
        default=DEFAULT_CONNECT_TIMEOUT,
        gt=0,
        description="Seconds to wait for a connection to the object store.",
    )
    storage_request_timeout: float = Field(
        default=DEFAULT_REQUEST_TIMEOUT,
        gt=0,
        description="Seconds one object-store request may take (a large GET included).",
    )
    storage_max_retries: int = Field(
        default=DEFAULT_MAX_RETRIES,
        ge=0,
        description="Retries of a failed object-store request.",
    )
    storage_retry_timeout: float = Field(
        default=DEFAULT_RETRY_TIMEOUT,
        gt=0,
        description="Seconds after a request's first try when no more retries start.",
    )

    def storage_limits(self) -> dict[str, Any]:
        """The timeouts and retries, as ``StorageOptions`` fields."""
        return {
            "connect_timeout": self.storage_connect_timeout,
            "request_timeout": self.storage_request_timeout,
            "max_retries": self.storage_max_retries,
            "retry_timeout": self.storage_retry_timeout,
        }


def resolve_settings(**overrides: Any) -> Settings:
    """Settings from the environment with the non-``None`` ``overrides`` applied.

    Raises:
        ConfigError: an unknown setting (naming the closest valid one) or an invalid value.
    """
    check_names(overrides, Settings.model_fields, what="setting")
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"{name} (MATRIXOS_{name.upper()}): {err['msg']}")
        raise ConfigError(
            "invalid setting " + "; ".join(problems),
            hint="fix the argument or the environment variable",
        ) from None


def check_names(given: Iterable[str], valid: Iterable[str], *, what: str) -> None:
    """Raise ``ConfigError`` for the first name in ``given`` not in ``valid``, suggesting the
    closest valid one.

    Example:
        >>> check_names(["catalog"], ["catalog_url", "compute"], what="argument")
        Traceback (most recent call last):
        ...
        matrixos.errors.ConfigError: unknown argument 'catalog'; did you mean 'catalog_url'?
        Hint: valid arguments: catalog_url, compute
    """
    names = sorted(valid)
    for name in given:
        if name in names:
            continue
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        if not close:  # "catalog" is a prefix of "catalog_url", which difflib scores low
            close = [n for n in names if n.startswith(name) or name.startswith(n)][:1]
        guess = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown {what} {name!r}{guess}", hint=f"valid {what}s: {', '.join(names)}"
        )


# -- the compute target ---------------------------------------------------------------------
@dataclass(frozen=True)
class ComputeTarget:
    """What ``Settings.compute`` names: ``local``, a private Ray runtime, or a Ray cluster."""

    kind: Literal["local", "ray"]
    address: str | None = None  # None with kind "ray": a private runtime

    @property
    def private(self) -> bool:
        return self.kind == "ray" and self.address is None

    @property
    def client(self) -> bool:
        return bool(self.address and self.address.startswith("ray://"))

    @property
    def node_ip(self) -> str | None:
        """The driver's node address when the cluster is on a loopback address.

        Ray would otherwise look for the local raylet at the machine's interface address
        (its ``resolve_ip_for_localhost``), where a loopback-only node is not.
        """
        if self.address is None or self.client:
            return None
        host = self.address.rsplit(":", 1)[0].strip("[]")
        return host if _is_loopback(host) else None


def parse_compute(value: str, env: Mapping[str, str] | None = None) -> ComputeTarget:
    """The target ``value`` names; ``ray`` reads ``RAY_ADDRESS`` from ``env`` (default
    ``os.environ``). Raises ``ConfigError`` for anything else.

    Example:
        >>> parse_compute("ray://10.0.0.5:10001", env={})
        ComputeTarget(kind='ray', address='ray://10.0.0.5:10001')
        >>> parse_compute("ray", env={}).private
        True
    """
    env = os.environ if env is None else env
    text = (value or "").strip()
    if text.lower() == "local":
        return ComputeTarget("local")
    if text.lower() == "ray":
        address = (env.get("RAY_ADDRESS") or "").strip()
        if not address or address in ("local", "auto"):
            return ComputeTarget("ray")
        return ComputeTarget("ray", _check_compute_address(address, "RAY_ADDRESS"))
    if text.startswith("ray://") or _HOST_PORT.match(text):
        return ComputeTarget("ray", _check_compute_address(text, "compute"))
    raise ConfigError(
        f"compute={value!r} is not a compute target",
        hint="use 'local', 'ray' (a private runtime, or the cluster in RAY_ADDRESS), "
        "'ray://host:port' (Ray client) or 'host:port' (a cluster's GCS address)",
    )


def _check_compute_address(address: str, what: str) -> str:
    rest = address[len("ray://") :] if address.startswith("ray://") else address
    m = _HOST_PORT.match(rest)
    if not m or not 0 < int(m.group("port")) < 65536:
        raise ConfigError(f"{what}={address!r} is not host:port or ray://host:port")
    return address


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
