"""``matrixos lineage TABLE``: where a table's rows came from and what was made from them.

Reads ``system.lineage.events`` (see ``matrixos.catalog.lineage``) and prints a tree: the
table, its upstream (the tables, files and volumes its writes read, with versions) and its
downstream, each link naming the job (``sql``, ``map_batches``, ``rag.index``, ``ingest``,
``job``) and the principal that made it. ``--format json`` prints the edges.

Example:
    $ matrixos lineage sales.daily --direction up --depth 2
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer

from matrixos.cli.common import connect
from matrixos.cli.output import console


class Direction(StrEnum):
    """Which way ``matrixos lineage`` walks."""

    up = "up"
    down = "down"
    both = "both"


class LineageFormat(StrEnum):
    """How ``matrixos lineage`` prints."""

    tree = "tree"
    json = "json"


def lineage(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help="The table (schema.table or catalog.schema.table).")],
    direction: Annotated[
        Direction, typer.Option("--direction", "-d", help="Upstream, downstream or both.")
    ] = Direction.both,
    depth: Annotated[int, typer.Option("--depth", min=1, help="Links to follow.")] = 5,
    format: Annotated[LineageFormat, typer.Option("--format", "-f")] = LineageFormat.tree,
) -> None:
    """Show a table's upstream and downstream lineage, with versions."""
    with connect(ctx) as lh:
        graph = lh.lineage(table, direction=direction.value, depth=depth)
    if format is LineageFormat.json:
        typer.echo(json.dumps(graph.to_dict(), indent=2))
        return
    console().print(graph.tree())
    if not graph.edges:
        console(stderr=True).print("no lineage recorded for this table", highlight=False)
