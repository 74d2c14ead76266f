"""``matrixos demo``: the TPC-H tour of a fresh warehouse."""

from __future__ import annotations

from typing import Annotated

import typer

from matrixos.cli.common import options
from matrixos.errors import NotSupported


def demo(
    ctx: typer.Context,
    scale: Annotated[
        float,
        typer.Option(
            "--scale",
            min=0.0,
            help="TPC-H scale factor: 0.01 is about 87,000 rows (seconds), 1 about 8.7 million.",
        ),
    ] = 0.01,
) -> None:
    """Load TPC-H sample data into the warehouse and tour it: joins, MERGE, time travel.

    The data is generated once and cached in ~/.cache/matrixos/tpch (MATRIXOS_TPCH_DIR).
    """
    try:
        # Imported here: the tour loads the session (pyarrow, DuckDB), which --help does without.
        from matrixos.demo import run_demo
    except ModuleNotFoundError as e:
        if e.name != "matrixos.demo":
            raise
        raise NotSupported("the demo is not part of this installation") from e
    run_demo(options(ctx).warehouse, scale)
