"""``python -m benchmarks.rag [--pages 189] [--max-tokens 256] [--embedder minilm] [--json out]``

Two measurements on a real corpus, the PostgreSQL manual that Debian ships
(``postgresql-doc-15``): its SQL command reference pages (``sql-*.html``) by default.

1. **Pipeline throughput** against the raw model: ``lh.rag.index`` (parse → chunk → embed →
   write → index) versus sentence-transformers' own ``encode`` of exactly the chunk texts the
   pipeline embedded, in one process, batch size 64. The ratio is chunks/s of the pipeline over
   chunks/s of the raw model; the pipeline should not be the bottleneck (target >= 0.9x).
2. **Known-item retrieval**: one query per page, the page's title (e.g. "CREATE INDEX — define a
   new index"), relevant = that page's chunks. recall@10 and MRR for vector, BM25 and hybrid
   (reciprocal rank fusion) search.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

PG_DOCS = Path("/usr/share/doc/postgresql-doc-15/html")


def pages(n: int, pattern: str) -> list[Path]:
    found = sorted(PG_DOCS.glob(pattern))
    if not found:
        raise SystemExit(f"no pages match {PG_DOCS / pattern}: apt-get install postgresql-doc-15")
    return found[:n]


def title_of(path: Path) -> str:
    html = path.read_text(errors="replace")
    m = re.search(r"<title>(.*?)</title>", html, re.S | re.I)
    import html as h

    return h.unescape(re.sub(r"\s+", " ", m.group(1))).strip() if m else path.stem


def raw_model_throughput(texts: list[str], embedder: str) -> tuple[float, float]:
    """chunks/s of the bare model encoding ``texts`` (batch 64), and the seconds it took."""
    from matrixos.ai.embed import get_embedder

    emb = get_embedder(embedder)
    model = getattr(emb, "model", None)
    if model is None:  # the hash embedder: its own embed() is the raw model
        t0 = time.perf_counter()
        emb.embed(texts)
        dt = time.perf_counter() - t0
        return len(texts) / dt, dt
    model.encode(texts[:8], batch_size=8)  # warm-up
    t0 = time.perf_counter()
    model.encode(texts, batch_size=64, normalize_embeddings=True)
    dt = time.perf_counter() - t0
    return len(texts) / dt, dt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rag", description=__doc__)
    ap.add_argument("--pages", type=int, default=189, help="how many pages (default: all 189)")
    ap.add_argument("--glob", default="sql-*.html", help="which pages of the manual")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--embedder", default="minilm")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--keep",
        type=Path,
        help="index into this folder and keep it; run again with the same folder to "
        "re-evaluate retrieval without re-indexing (throughput is then not measured)",
    )
    ap.add_argument("--no-raw", action="store_true", help="skip the raw-model comparison")
    args = ap.parse_args(argv)

    import matrixos as mx
    from matrixos.ai.embed import get_embedder

    console = Console()
    docs = pages(args.pages, args.glob)
    get_embedder(args.embedder).embed(["warm up"])  # model load is not pipeline time
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        corpus = root / "docs"
        corpus.mkdir(parents=True, exist_ok=True)
        for p in docs:
            (corpus / p.name).write_bytes(p.read_bytes())
        lh = mx.connect(str(root / "wh"))
        reuse = args.keep is not None and "main.kb.chunks" in lh.tables("kb")
        if reuse:
            console.print(f"re-evaluating the index kept in {root}")
        else:
            console.print(
                f"indexing {len(docs)} pages of the PostgreSQL manual with {args.embedder}"
            )
        summary = lh.rag.index(
            str(corpus),
            "kb.chunks",
            embedder=args.embedder,
            max_tokens=args.max_tokens,
            overlap=args.overlap,
            progress=not reuse,
        )
        console.print(str(summary))
        texts = lh.table("kb.chunks").to_arrow(columns=["text"]).column("text").to_pylist()
        measure = not (reuse or args.no_raw)
        raw_rate, raw_s = raw_model_throughput(texts, args.embedder) if measure else (0.0, 0.0)
        pipe_rate = summary.chunks_written / summary.seconds if summary.seconds else 0.0
        queries = [
            {"query": title_of(p), "relevant": [str((corpus / p.name).resolve())]} for p in docs
        ]
        scores = lh.rag.eval("kb.chunks", queries, k=args.k)
        lh.close()

    result: dict[str, Any] = {
        "pages": len(docs),
        "chunks": summary.chunks_written,
        "embedder": args.embedder,
        "pipeline_s": round(summary.seconds, 2),
        "pipeline_embed_s": round(summary.embed_seconds, 2),
        "pipeline_chunks_per_s": round(pipe_rate, 2),
        "raw_model_s": round(raw_s, 2),
        "raw_model_chunks_per_s": round(raw_rate, 2),
        "throughput_ratio": round(pipe_rate / raw_rate, 3) if raw_rate else None,
        "retrieval": {m: {k: round(v, 4) for k, v in s.items()} for m, s in scores.items()},
        "cpus": os.cpu_count(),
    }
    t = Table(title="Pipeline throughput (chunks/s)")
    for col in ("pipeline", "raw model", "ratio"):
        t.add_column(col, justify="right")
    t.add_row(
        f"{pipe_rate:.1f} ({summary.seconds:.1f} s)",
        f"{raw_rate:.1f} ({raw_s:.1f} s)" if raw_rate else "not measured",
        f"{pipe_rate / raw_rate:.2f}x" if raw_rate else "-",
    )
    if raw_rate:
        console.print(t)
    r = Table(title=f"Known-item retrieval, {len(queries)} title queries")
    for col in ("mode", f"recall@{args.k}", "MRR"):
        r.add_column(col, justify="right")
    for mode, s in scores.items():
        r.add_row(mode, f"{s[f'recall@{args.k}']:.3f}", f"{s['mrr']:.3f}")
    console.print(r)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
