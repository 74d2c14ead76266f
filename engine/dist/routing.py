"""Routing: whether a query runs locally or on the Ray pool, and the two consumers of the
distributed plan (EXPLAIN renders it, the runtime runs it)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from matrixos.engine.dist.execute import run_fragments, run_stages
from matrixos.engine.dist.explain import format_size, render
from matrixos.engine.dist.planner import fragment_plan, local_sql_types, staged_plan
from matrixos.engine.filecache import query_report
from matrixos.engine.result import Result
from matrixos.engine.scan import PrunedScan
from matrixos.errors import ConfigError

if TYPE_CHECKING:
    from matrixos.engine.context import QueryContext

Engine = Literal["auto", "local", "ray"]
# Compressed Parquet bytes DuckDB scans per millisecond and core (TPC-H SF1 Q1 and Q6 on this
# project's 2-core machine: ~300 MB/s): engine="auto"'s estimate of a query's local time.
SCAN_BYTES_PER_MS_PER_CPU = 150_000


def local_estimate_ms(scanned: int, cpus: int) -> float:
    """About how long this process takes to scan ``scanned`` bytes of Parquet on ``cpus``."""
    return scanned / (SCAN_BYTES_PER_MS_PER_CPU * max(1, cpus))


@dataclass
class Routing:
    """What ``route`` decided: a result (it ran on Ray), or notes for a local run's EXPLAIN."""

    result: Result | None = None
    notes: list[str] = field(default_factory=list)


def route(query: QueryContext, *, engine: str, explain: bool, analyze: bool = False) -> Routing:
    """Run the query on the Ray pool when ``engine`` asks for it and the query allows it.

    ``engine="ray"`` distributes whatever can be; ``"auto"`` only when the pool is Ray, the
    scans hold at least ``Settings.distributed_min_bytes`` and scanning them here would take
    longer than one Ray stage costs (``Settings.ray_stage_ms``). A query that cannot be distributed
    runs locally (the returned notes say why, for EXPLAIN). ``explain`` plans without running
    anything; with ``analyze`` (``EXPLAIN ANALYZE``) the query runs and the plan shows what
    each stage measured.
    """
    session = query.session
    settings = session.settings
    if engine not in ("auto", "local", "ray"):
        raise ConfigError(f"engine={engine!r}: use 'auto', 'local' or 'ray'")
    if engine == "local" or (engine == "auto" and not session.is_ray):
        return Routing()
    if not session.is_ray:
        raise ConfigError(
            "engine='ray' needs a Ray compute pool",
            hint="connect with compute='ray' (or 'ray://host:port'), or set MATRIXOS_COMPUTE",
        )
    scanned = sum(
        sum(f.size for f in scan.files) for _, scan in query.bound if isinstance(scan, PrunedScan)
    )
    if engine == "auto" and scanned < settings.distributed_min_bytes:
        return Routing(
            notes=[
                f"Engine: local (engine=auto: {format_size(scanned)} scanned, below "
                f"distributed_min_bytes={format_size(settings.distributed_min_bytes)})"
            ]
        )
    if engine == "auto":
        # Small work never pays a Ray stage: distributed only when running it here would
        # take longer than a stage's own cost.
        here = local_estimate_ms(scanned, settings.duckdb_threads or os.cpu_count() or 1)
        if here < settings.ray_stage_ms:
            return Routing(
                notes=[
                    f"Engine: local (engine=auto: {format_size(scanned)} scanned, about "
                    f"{here:.0f} ms here, below ray_stage_ms={settings.ray_stage_ms:g})"
                ]
            )
    cpus = cache(session.num_cpus)  # a call to Ray's GCS: at most once per query
    frag = fragment_plan(query, cpus)
    if isinstance(frag, str):  # joins, subqueries, other aggregates: stages
        if explain and not analyze:
            planned = staged_plan(query, cpus())
            if isinstance(planned, str):
                return Routing(notes=[f"Engine: local (not distributed: {planned})"])
            return _explained(render(planned))
        with query_report() as report:
            staged = run_stages(query, cpus())
        if isinstance(staged, str):
            return Routing(notes=[f"Engine: local (not distributed: {staged})"])
        table, ran = staged
        if explain:
            return _explained(render(ran))
        result = _typed(query, Result.from_table(table, statement="SELECT"))
        result.stats = {"engine": "ray", **report.as_dict()}
        return Routing(result=result)
    assert frag.fragments is not None
    if explain:
        lines = render(frag)
        if analyze:
            t0 = time.perf_counter()
            rows = run_fragments(query, frag.fragments).num_rows
            lines.append(f"Ran: {rows} rows, {(time.perf_counter() - t0) * 1000:.0f} ms")
        return _explained(lines)
    with query_report() as report:
        result = Result.from_table(run_fragments(query, frag.fragments), statement="SELECT")
    result = _typed(query, result)
    result.stats = {"engine": "ray", **report.as_dict()}
    return Routing(result=result)


def _typed(query: QueryContext, result: Result) -> Result:
    """``result`` (rows the pool computed) with its columns' DuckDB type names, as a local
    run's has them (``Result.sql_types``): what Arrow holds as strings (UUID, JSON) then goes
    over the PostgreSQL wire as its own type. Only looked up when a column is text or a list."""
    if not any(_textual(f.type) for f in result.schema):
        return result
    types = local_sql_types(query)
    if types is not None and len(types) == len(result.schema):
        result.sql_types = types
    return result


def _textual(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _textual(t.value_type)
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _explained(lines: list[str]) -> Routing:
    return Routing(result=Result.from_table(pa.table({"plan": lines}), statement="EXPLAIN"))
