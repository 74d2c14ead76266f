"""Helpers of the search-plan tests (test_search_plans.py, test_text_search_plans.py)."""

from __future__ import annotations

import subprocess
import sys

import matrixos as mx
from matrixos.accounts import Accounts


def other_process(lh: mx.Lakehouse, code: str) -> None:
    """Run ``code`` (with ``lh``, a session on the same local warehouse) in a new process."""
    script = (
        f"import matrixos as mx, pyarrow as pa\nlh = mx.connect({lh.warehouse.uri!r})\n{code}\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def as_bob(lh: mx.Lakehouse) -> mx.Lakehouse:
    """``lh`` acting as a new user bob, who may read every table of schema ``kb``."""
    for stmt in (
        "CREATE USER bob",
        "GRANT USE CATALOG ON CATALOG main TO bob",
        "GRANT USE SCHEMA ON SCHEMA main.kb TO bob",
        "GRANT SELECT ON SCHEMA main.kb TO bob",
    ):
        lh.sql(stmt)
    return lh.with_principal(Accounts(lh.catalog).principal("bob"))
