"""Sandbox fuzzer, long run: hostile SQL across dialects through the public ``lh.sql``.

    python -m benchmarks.sandbox_fuzz --statements 5000 [--seed 0] [--json out.json]

Generates ``--statements`` statements at random (``--seed``; see ``benchmarks/_sandbox_fuzz.py``
for the grammar and what counts as an escape), runs each, and prints how many were tried, ran,
were refused or failed with a ``MatrixOSError``, and every escape found. Exit status 1 when
any escaped.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time

from benchmarks._sandbox_fuzz import Outcome, box, statement, try_statement


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sandbox_fuzz", description=__doc__)
    ap.add_argument("--statements", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the summary here too")
    args = ap.parse_args(argv)

    outcomes: list[Outcome] = []
    started = time.perf_counter()
    rng = random.Random(args.seed)
    with box() as b:
        for i in range(1, args.statements + 1):
            outcomes.append(try_statement(b, *statement(rng.choice, b.places)))
            if i % 500 == 0:
                elapsed = time.perf_counter() - started
                print(f"{i} statements, {elapsed:.0f} s", file=sys.stderr)
    escapes = [o for o in outcomes if o.escapes]
    by_dialect = collections.Counter(o.dialect for o in outcomes)
    summary = {
        "statements": len(outcomes),
        "distinct": len({(o.sql, o.dialect) for o in outcomes}),
        "ran": sum(o.ran for o in outcomes),
        "refused_or_failed": sum(not o.ran for o in outcomes),
        "escapes": len(escapes),
        "by_dialect": dict(sorted(by_dialect.items())),
        "seconds": round(time.perf_counter() - started, 1),
        "escaped": [
            {"sql": o.sql, "dialect": o.dialect, "escapes": o.escapes} for o in escapes[:50]
        ],
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
