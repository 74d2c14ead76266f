"""Golden plans of the distributed planner: SQL + table statistics in, EXPLAIN text out.

Each case in ``golden/dist_plans/*.sql`` (sqlglot's fixture style) gives the pool's CPUs, the
tables' statistics (files, rows, bytes, and per column a type, a min..max range and whether
the files are clustered on it), optional pruning predicates, the query, and the expected plan
as EXPLAIN renders it. The planner runs on synthetic scans: no Ray, no data files, the SQL
bound over empty inputs on a file-less DuckDB connection.

Regenerate the expected plans with ``MATRIXOS_UPDATE_GOLDEN=1 pytest tests/engine/
test_dist_plans.py`` and review the diff by eye.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pytest
import sqlglot

import matrixos as mx
from matrixos.catalog import TableIdent
from matrixos.engine.context import QueryContext
from matrixos.engine.dist.explain import render
from matrixos.engine.dist.planner import plan_query
from matrixos.engine.functions import expand_functions
from matrixos.engine.sandbox import check_query
from matrixos.engine.scan import FileEntry, Predicate, PrunedScan, Snapshot, prune
from matrixos.engine.sql import SQLEngine

GOLDEN = Path(__file__).parent / "golden" / "dist_plans"
UPDATE = os.environ.get("MATRIXOS_UPDATE_GOLDEN") == "1"
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_TYPES = {
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "VARCHAR": pa.string(),
    "DATE": pa.date32(),
    "BOOLEAN": pa.bool_(),
}


@dataclass
class Column:
    name: str
    type: pa.DataType
    lo: int | None = None
    hi: int | None = None
    clustered: bool = False  # each file holds its own slice of lo..hi


@dataclass
class TableStats:
    name: str
    files: int
    rows: int
    nbytes: int
    columns: list[Column] = field(default_factory=list)


@dataclass
class Case:
    path: Path
    name: str
    head: list[str]  # the case's lines up to its SQL (comments and statistics)
    cpus: int
    settings: dict[str, int]
    tables: list[TableStats]
    prune: list[tuple[str, Predicate]]
    sql: str
    plan: list[str]


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB)?", text)
    assert m, f"bad size {text!r}"
    return int(m.group(1)) * _UNITS[m.group(2) or "B"]


def _parse(path: Path, block: str) -> Case | None:
    head: list[str] = []
    sql: list[str] = []
    plan: list[str] = []
    meta: dict[str, str] = {}
    tables: list[TableStats] = []
    pruning: list[tuple[str, Predicate]] = []
    settings: dict[str, int] = {}
    section = "head"
    for line in block.strip("\n").splitlines():
        if section == "plan":
            plan.append(line.removeprefix("-- "))
            continue
        if line.strip() == "-- plan:":
            section = "plan"
            continue
        if not line.startswith("--"):
            section = "sql"
            sql.append(line)
            continue
        head.append(line)
        body = line[2:].strip()
        if m := re.match(r"(name|cpus):\s*(.*)$", body):
            meta[m.group(1)] = m.group(2).strip()
        elif m := re.match(r"setting:\s*(\w+)\s*=\s*(\S+)$", body):
            settings[m.group(1)] = _size(m.group(2))
        elif m := re.match(r"table:\s*(\w+)\s+(.*)$", body):
            kv = dict(p.split("=", 1) for p in m.group(2).split())
            tables.append(
                TableStats(m.group(1), int(kv["files"]), int(kv["rows"]), _size(kv["bytes"]))
            )
        elif m := re.match(r"prune:\s*(\w+)\s+(\w+)\s*(>=|<=|=|<|>)\s*(\S+)$", body):
            value = json.loads(m.group(4))
            pruning.append((m.group(1), Predicate(m.group(2), m.group(3), value)))
        elif m := re.match(
            r"\s{2,}(\w+)\s+(\w+)(?:\s+(-?\d+)\.\.(-?\d+))?(\s+clustered)?$", line[2:]
        ):
            lo, hi = m.group(3), m.group(4)
            tables[-1].columns.append(
                Column(
                    m.group(1),
                    _TYPES[m.group(2)],
                    int(lo) if lo is not None else None,
                    int(hi) if hi is not None else None,
                    bool(m.group(5)),
                )
            )
    if not sql:
        return None  # a comment-only block
    assert "name" in meta and section == "plan", f"{path.name}: malformed case\n{block}"
    return Case(
        path,
        meta["name"],
        head,
        int(meta.get("cpus", "4")),
        settings,
        tables,
        pruning,
        "\n".join(sql),
        plan,
    )


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(GOLDEN.glob("*.sql")):
        for block in re.split(r"\n\s*\n(?=--)", path.read_text(encoding="utf-8")):
            case = _parse(path, block)
            if case is not None:
                cases.append(case)
    return cases


def _snapshot(t: TableStats) -> Snapshot:
    """``t`` as a Delta snapshot of ``t.files`` equal files whose statistics spread each
    column's range over the files (clustered) or give every file all of it."""
    schema = pa.schema([pa.field(c.name, c.type) for c in t.columns])
    location = f"/golden-warehouse/{t.name}"
    files = []
    for i in range(t.files):
        lo: dict[str, int] = {}
        hi: dict[str, int] = {}
        for c in t.columns:
            if c.lo is None or c.hi is None:
                continue
            if c.clustered:
                span = (c.hi - c.lo + 1) / t.files
                lo[c.name] = c.lo + round(i * span)
                hi[c.name] = c.lo + round((i + 1) * span) - 1
            else:
                lo[c.name], hi[c.name] = c.lo, c.hi
        files.append(
            FileEntry(
                f"{location}/part-{i:05d}.parquet",
                t.nbytes // t.files,
                t.rows // t.files,
                (),
                lo,
                hi,
                {c.name: 0 for c in t.columns},
            )
        )
    return Snapshot(
        location=location,
        version=1,
        schema=schema,
        partition_columns=[],
        physical={c.name: c.name for c in t.columns},
        files=files,
        deletion_vectors={},
        read_by_name=False,
    )


def plan_text(engine: SQLEngine, case: Case) -> list[str]:
    """The case's plan as EXPLAIN lines (or the local fallback with its reason)."""
    tree = sqlglot.parse_one(case.sql, dialect="duckdb")
    check_query(tree)
    functions = expand_functions(engine, tree)
    stats = {t.name: t for t in case.tables}
    bound: list[tuple[TableIdent, PrunedScan]] = []
    for ref in check_query(tree):
        t = stats[ref.name]
        preds = [p for name, p in case.prune if name == t.name]
        bound.append((TableIdent("lake", "main", t.name), prune(_snapshot(t), preds)))
    query: QueryContext = engine.query_context(tree, bound, functions)  # type: ignore[arg-type]
    if case.settings:
        settings = query.session.settings.model_copy(update=case.settings)
        query.session = replace(query.session, settings=settings)
    plan = plan_query(query, case.cpus)
    if isinstance(plan, str):
        return [f"Engine: local (not distributed: {plan})"]
    return render(plan)


CASES = load_cases()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SQLEngine:
    """A SQL engine over an empty local warehouse: the planner's binding connection."""
    lh = mx.connect(str(tmp_path_factory.mktemp("golden-warehouse")))
    return SQLEngine(lh)


def test_golden_files_hold_cases() -> None:
    names = [c.name for c in CASES]
    assert len(names) >= 12
    assert len(set(names)) == len(names), "case names must be unique"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan(engine: SQLEngine, case: Case) -> None:
    got = plan_text(engine, case)
    if UPDATE:
        _rewrite(case, got)
        return
    assert got == case.plan, "\n".join(got)


def _rewrite(case: Case, plan: list[str]) -> None:
    """Replace ``case``'s expected plan in its file by ``plan``."""
    text = case.path.read_text(encoding="utf-8")
    start = text.index(f"-- name: {case.name}\n")
    at = text.index("-- plan:\n", start) + len("-- plan:\n")
    end = text.find("\n\n--", at)
    end = len(text.rstrip("\n")) if end < 0 else end
    body = "\n".join(f"-- {line}" for line in plan)
    case.path.write_text(text[:at] + body + text[end:].rstrip("\n") + "\n", encoding="utf-8")


def test_dist_package_imports_point_down() -> None:
    """engine/dist takes the SQL engine through ``QueryContext``: none of its modules imports
    engine.sql or the session layer, nor another module's ``_private`` name."""
    import ast

    import matrixos.engine.dist as dist

    found = []
    for path in sorted(Path(dist.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                private = [a.name for a in node.names if re.match(r"_[^_]", a.name)]
                upward = node.module.startswith(("matrixos.engine.sql", "matrixos.session"))
                if private or upward:
                    found.append(f"{path.name}: from {node.module} import {private or '…'}")
    assert found == []
