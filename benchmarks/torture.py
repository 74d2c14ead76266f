"""Torture run: N writer processes x mixed operations x random kill -9, checked by a ledger.

    python -m benchmarks.torture --minutes 10 --writers 8 --kills 200 --backend local --format delta
    python -m benchmarks.torture --trials-per-kind 200 --writers 6 --backend local --format lance
    python -m benchmarks.torture --trials-per-kind 200 --writers 6 --backend s3 --format delta \
        --max-minutes 100 --json /tmp/torture_s3_delta.json

Each round runs ``--writers`` processes doing appends, merges, updates, deletes, overwrites
(replaceWhere on the writer's own rows), OPTIMIZE (plain and ZORDER), auto-compaction (every 4
small files) and VACUUM on one table, killing a random writer at random moments; every kill and
every round is checked against the writers' ledgers (see ``benchmarks/_torture.py``). Prints one
JSON line per round and a summary; exit status 1 when anything was lost, duplicated or
half-visible. ``--trials-per-kind`` kills writers only inside one kind of operation per round
(``benchmarks/_torture_kinds.py``); with ``--json`` it rewrites the file as it goes, and SIGTERM
or ``--max-minutes`` ends it with a full check and a summary marked incomplete.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from contextlib import ExitStack

from benchmarks._torture import RARE_OPS, MotoS3, Target, run
from benchmarks._torture_kinds import run_targeted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.torture", description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0, help="total churn time")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--kills", type=int, default=200, help="kill -9s spread over the run")
    ap.add_argument("--rounds", type=int, default=5, help="full checks (every kill is checked)")
    ap.add_argument("--backend", choices=["local", "s3"], default="local")
    ap.add_argument("--format", choices=["delta", "lance"], default="delta")
    ap.add_argument("--auto-compact", type=int, default=4, help="small files that trigger it")
    ap.add_argument("--commit-retries", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the summary here too")
    ap.add_argument(
        "--trials-per-kind",
        type=int,
        default=0,
        help="instead of timed churn: kill -9 writers only inside each write kind, this many "
        "times per kind (append, merge, update, delete, overwrite, optimize, zorder, vacuum)",
    )
    ap.add_argument("--kinds", help="with --trials-per-kind: only these kinds, e.g. delete,vacuum")
    ap.add_argument(
        "--recorded-merges",
        action="store_true",
        help="Lance: merges carry commit metadata (as map_batches resumes do), so they run under "
        "the table's merge lease instead of Lance's declared-key check",
    )
    ap.add_argument(
        "--trials-per-round",
        type=int,
        default=50,
        help="with --trials-per-kind: the kinds take turns in rounds of this many trials, each "
        "ending with the full check",
    )
    ap.add_argument(
        "--max-minutes",
        type=float,
        help="with --trials-per-kind: stop aiming after this long (also on SIGTERM), check the "
        "table and report what was done, marked incomplete",
    )
    args = ap.parse_args(argv)

    seconds = args.minutes * 60
    per_round = seconds / args.rounds
    gap = seconds / max(args.kills, 1)  # mean time between kills
    settings: dict[str, object] = {"auto_compact_min_files": args.auto_compact}
    if args.commit_retries is not None:
        settings["commit_retries"] = args.commit_retries
    with ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="mx-torture-"))
        if args.backend == "s3":
            uri, opts = stack.enter_context(MotoS3()).bucket()
        else:
            uri, opts = f"{work}/warehouse", None
        target = Target(uri, opts, args.format, f"{work}/ledgers", settings)
        target.recorded_merges = args.recorded_merges
        started = time.monotonic()
        stopping: list[str] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))

        def stop() -> bool:
            late = (
                args.max_minutes is not None and time.monotonic() - started > args.max_minutes * 60
            )
            return bool(stopping) or late

        def progress(summary: dict[str, object]) -> None:  # partial results as they come
            if args.json:
                heading = {"backend": args.backend, "format": args.format, "writers": args.writers}
                minutes = round((time.monotonic() - started) / 60, 2)
                partial = {**heading, "minutes": minutes, **summary, "complete": False}
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump(partial, f, indent=2)

        if args.trials_per_kind:
            kinds = ["append", "merge", "update", "delete", "overwrite", "optimize", *RARE_OPS]
            if args.format != "delta":  # Lance has no replaceWhere overwrite and no ZORDER
                kinds = [k for k in kinds if k not in ("overwrite", "zorder")]
            if args.kinds:
                kinds = [k for k in kinds if k in args.kinds.split(",")]
            report = run_targeted(
                target,
                writers=args.writers,
                kinds=kinds,
                trials=args.trials_per_kind,
                seed=args.seed,
                log=lambda line: print(line, flush=True),
                progress=progress,
                stop=stop,
                round_trials=args.trials_per_round,
            )
        else:
            report = run(
                target,
                writers=args.writers,
                rounds=args.rounds,
                round_seconds=per_round,
                kill_every=(gap * 0.5, gap * 1.5),
                seed=args.seed,
                log=lambda line: print(line, flush=True),
            )
        summary = {
            "backend": args.backend,
            "format": args.format,
            "writers": args.writers,
            "minutes": round((time.monotonic() - started) / 60, 2),
            **report.as_dict(),
            "ok": report.ok,
        }
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
