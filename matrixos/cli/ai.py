"""``matrixos rag index|eval`` and ``matrixos search``: RAG pipelines and search from the shell."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer

from matrixos.cli.common import connect
from matrixos.cli.output import OutputFormat, emit_table

#: ``matrixos rag``: its sub-commands.
rag_app = typer.Typer(help="Batch RAG indexing and retrieval evaluation.", no_args_is_help=True)


class SearchMode(StrEnum):
    """``matrixos search --mode``."""

    vector = "vector"
    text = "text"
    hybrid = "hybrid"


@rag_app.command("index")
def rag_index(
    ctx: typer.Context,
    source: Annotated[
        list[str],
        typer.Argument(help="A folder, an s3:// prefix, a volume or a table of documents."),
    ],
    table: Annotated[str, typer.Option("--table", "-t", help="The Lance table of chunks.")],
    embedder: Annotated[
        str | None, typer.Option("--embedder", help="Embedder name (default: minilm).")
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens per chunk.")] = 256,
    overlap: Annotated[int, typer.Option("--overlap", help="Tokens of overlap.")] = 32,
    keep_missing: Annotated[
        bool,
        typer.Option("--keep-missing", help="Keep chunks of documents no longer in SOURCE."),
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Parse, chunk, embed and index documents; a re-run embeds only new or changed ones."""
    with connect(ctx, create=True) as lh:
        summary = lh.rag.index(
            source if len(source) > 1 else source[0],
            table,
            embedder=embedder,
            max_tokens=max_tokens,
            overlap=overlap,
            delete_missing=not keep_missing,
            progress=progress,
        )
    typer.echo(str(summary))


@rag_app.command("eval")
def rag_eval(
    ctx: typer.Context,
    table: Annotated[str, typer.Option("--table", "-t", help="The Lance table of chunks.")],
    queries: Annotated[
        str,
        typer.Option(
            "--queries", "-q", help='JSONL: {"query": "...", "relevant": ["doc uri", ...]}'
        ),
    ],
    k: Annotated[int, typer.Option("-k", help="Cut-off for recall and MRR.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """recall@k and MRR of vector, text and hybrid search."""
    import pyarrow as pa

    with connect(ctx) as lh:
        scores = lh.rag.eval(table, queries, k=k)
    if as_json:
        typer.echo(json.dumps(scores, indent=2))
        return
    rows = pa.table(
        {
            "mode": list(scores),
            f"recall@{k}": [round(s[f"recall@{k}"], 4) for s in scores.values()],
            "mrr": [round(s["mrr"], 4) for s in scores.values()],
            "queries": [int(s["queries"]) for s in scores.values()],
        }
    )
    emit_table(rows, OutputFormat.table, empty="no queries")


def search(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help="A Lance table.")],
    query: Annotated[str, typer.Argument(help="Query text.")],
    k: Annotated[int, typer.Option("-k", help="Rows to return.")] = 10,
    mode: Annotated[SearchMode, typer.Option("--mode", "-m")] = SearchMode.hybrid,
    filter: Annotated[
        str | None, typer.Option("--filter", help="SQL predicate applied before top-k.")
    ] = None,
    columns: Annotated[
        str | None, typer.Option("--columns", "-c", help="Comma-separated columns to show.")
    ] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """Vector, full-text or hybrid search of a Lance table."""
    import pyarrow as pa

    with connect(ctx) as lh:
        hits = lh.search(
            table,
            query,
            k=k,
            mode=mode.value,  # type: ignore[arg-type]
            filter=filter,
            columns=[c.strip() for c in columns.split(",")] if columns else None,
        )
    rows = pa.table(hits)
    vectors = [f.name for f in rows.schema if str(f.type).startswith("fixed_size_list")]
    emit_table(rows.drop_columns(vectors), format, empty="no rows")
