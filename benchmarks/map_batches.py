"""``python -m benchmarks.map_batches [--rows 2000] [--batch-size 256] [--compute local,ray]``

Embedding throughput of ``lh.map_batches`` against the raw model in one process.

Text: chunks (at most ``--max-tokens`` MiniLM tokens) of the PostgreSQL manual that Debian ships
(``postgresql-doc-15``), in a Delta table ``bench.texts`` (id, text). Measured, in rows/s:

1. **raw model**: sentence-transformers' own ``encode`` of the same texts, batch 64, one process
   (the model already loaded; one warm-up call).
2. **map_batches**, per ``--compute`` target: ``lh.map_batches("bench.texts", EmbedColumn,
   output="bench.vectors", fn_constructor_kwargs={"embedder": "minilm"})``, end to end (read the
   table, embed, write the vectors in commits, model loading included). ``local`` runs in this
   process; ``ray`` starts a private Ray runtime of this machine (``compute="ray"``), one actor
   per CPU, or one per GPU with ``num_gpus=1`` when torch sees a GPU.

The summary's GPU utilisation (``nvidia-smi``) is reported for each run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.rag import pages


def texts(rows: int, max_tokens: int) -> list[str]:
    from matrixos.ai.chunk import chunk_document
    from matrixos.ai.embed import get_embedder
    from matrixos.connectors.documents import parse_document

    emb = get_embedder("minilm")
    out: list[str] = []
    for page in pages(10_000, "*.html"):
        parsed = parse_document(page.read_bytes(), uri=str(page), mime="text/html")
        for c in chunk_document(parsed, embedder_or_tokenizer=emb, max_tokens=max_tokens):
            out.append(c.text)
            if len(out) >= rows:
                return out
    return out


def raw_model(items: list[str]) -> float:
    """rows/s of the bare model (batch 64), after one warm-up call."""
    from matrixos.ai.embed import get_embedder

    model = get_embedder("minilm").model  # type: ignore[attr-defined]
    model.encode(items[:64], batch_size=64)
    t0 = time.perf_counter()
    model.encode(items, batch_size=64, normalize_embeddings=True)
    return len(items) / (time.perf_counter() - t0)


def run(compute: str, wh: str, batch_size: int) -> dict[str, Any]:
    import matrixos as mx
    from matrixos.ai.embed import EmbedColumn

    with mx.connect(wh, compute=compute) as lh:
        gpus = lh.compute.status()["gpus"]
        s = lh.map_batches(
            "bench.texts",
            EmbedColumn,
            output="bench.vectors",
            fn_constructor_kwargs={"embedder": "minilm"},
            batch_size=batch_size,
            num_gpus=1 if gpus else 0,
            mode="overwrite",
            resume=False,
            progress=False,
        )
    return {
        "compute": compute,
        "executor": s.executor,
        "rows": s.rows_in,
        "seconds": s.seconds,
        "rows_per_s": s.rows_per_s,
        "gpu_utilization": s.gpu_text,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.map_batches", description=__doc__)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--compute", default="local,ray", help="comma-separated: local, ray, …")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    import pyarrow as pa

    import matrixos as mx

    console = Console()
    items = texts(args.rows, args.max_tokens)
    wh = tempfile.mkdtemp(prefix="mx-bench-mb-")
    with mx.connect(wh) as lh:
        lh.create_table("bench.texts", pa.table({"id": range(len(items)), "text": items}))
    raw = raw_model(items)
    results = [run(c.strip(), wh, args.batch_size) for c in args.compute.split(",") if c.strip()]

    table = Table(title=f"MiniLM embedding throughput, {len(items):,} chunks")
    for col in ("run", "where", "seconds", "rows/s", "vs raw model", "GPU utilisation"):
        table.add_column(col)
    table.add_row("raw model (encode, batch 64)", "this process", "", f"{raw:,.1f}", "1.00x", "")
    for r in results:
        table.add_row(
            f"map_batches (compute={r['compute']})",
            r["executor"],
            f"{r['seconds']:.1f}",
            f"{r['rows_per_s']:,.1f}",
            f"{r['rows_per_s'] / raw:.2f}x",
            r["gpu_utilization"],
        )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"raw_rows_per_s": raw, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
