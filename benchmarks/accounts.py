"""``python -m benchmarks.accounts [--reps 200] [--json out.json]``

What signing in costs a server per request, on each catalog backend (SQLite file, the commit
log on local files, the commit log on a moto S3 bucket): a token's first check (scrypt), later
checks of the same token (the record re-read for revocation and expiry, the hash remembered),
a password check (SCRAM-SHA-256's PBKDF2, 4096 rounds) and ``principal()`` (the account's and
its groups' grants). Medians and p99 in milliseconds, as ``Accounts`` is called by the HTTP
and PostgreSQL-wire servers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._torture import MotoS3
from matrixos.catalog import open_catalog
from matrixos.catalog.accounts import Accounts
from matrixos.storage.options import StorageOptions


def _times(fn: Callable[[], Any], reps: int) -> dict[str, float]:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples) * 1000, 3),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 3),
    }


def measure(accounts: Accounts, reps: int) -> dict[str, Any]:
    accounts.create("analysts", kind="group")
    accounts.create("bob", password="correct horse battery staple")
    accounts.add_member("analysts", "bob")
    accounts.grant("USE CATALOG", "main", "analysts")
    accounts.grant("USE SCHEMA", "main.default", "analysts")
    accounts.grant("SELECT", "main.default", "bob")
    tokens = [accounts.create_token("bob") for _ in range(5)]
    t0 = time.perf_counter()
    for token in tokens:
        accounts.authenticate_token(token)
    first = (time.perf_counter() - t0) / len(tokens)
    return {
        "token_first_check_ms": round(first * 1000, 3),
        "token_again": _times(lambda: accounts.authenticate_token(tokens[0]), reps),
        "password": _times(
            lambda: accounts.authenticate_password("bob", "correct horse battery staple"),
            max(reps // 10, 5),
        ),
        "principal": _times(lambda: accounts.principal("bob"), reps),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, MotoS3() as s3:
        uri, opts = s3.bucket()
        targets = {
            "sqlite (local file)": open_catalog(f"sqlite:///{Path(tmp) / 'c.db'}"),
            "commit log (local files)": open_catalog(f"file://{Path(tmp) / 'log'}"),
            "commit log (moto S3)": open_catalog(
                f"{uri}/_catalog", StorageOptions.from_mapping(opts)
            ),
        }
        for name, catalog in targets.items():
            out[name] = measure(Accounts(catalog), args.reps)
            catalog.close()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
