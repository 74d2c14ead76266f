"""Torture harness: writer processes x mixed operations x random ``kill -9``, checked by a ledger.

Shared by ``tests/storage/test_torture.py`` (a small size in CI) and ``python -m
benchmarks.torture`` (the long run).

Row model. The table has columns ``id`` (unique), ``w`` (the writer that owns the row) and
``val``. Writer ``w`` only ever touches rows with ``w = w``, and creates ids of its own
(``w * 10**12 + n``), so each writer's rows follow from its own ledger alone, whatever the other
writers and compactions did meanwhile. Every operation writes to the writer's ledger file
(fsynced) an ``intent`` with its exact effect on the writer's rows *before* the call, and an
``ack`` (with the committed version) or a ``fail`` (a ``ConcurrentWriteError``: nothing may be
visible) only *after* the call returned. A writer killed mid-call leaves one intent open; the
parent then reads the table: the writer's rows must be exactly the state before the operation or
exactly the state after it (never a part of it), and the parent records which (``resolved``)
before starting a new incarnation of the writer.

Each round ends by killing every writer; then the whole table is checked: every acknowledged row
present with its value (no loss), no id twice (no duplicate), nothing else (no half-visible
write), readable by plain deltalake / lance, by DuckDB, and by lancedb for Lance; then a
``VACUUM`` with zero retention runs and the check repeats (vacuum must not delete a live file).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from benchmarks._moto import MOTO_SERVERS, tcp_ports
from benchmarks._moto import MotoS3 as MotoS3  # where the other benchmarks find it

# Writers start from a fork server: a fresh interpreter that has only imported these modules
# (nothing connected, no table opened, no engine runtime started) and forks one process per
# writer. A writer therefore starts as a new process with no state of the one it replaces,
# without paying the ~2 CPU-seconds of imports a spawned interpreter costs (most of a trial's
# cost on two shared cores).
PRELOAD = [
    *("matrixos.session", "matrixos.table", "matrixos.lance_table", "matrixos.catalog.service"),
    *("matrixos.storage.delta", "matrixos.storage.lance_datasets", "matrixos.engine.search"),
    *("s3fs", "aiobotocore.session", "pandas", "sqlalchemy", "sqlglot", "duckdb", "deltalake"),
]
WRITERS = mp.get_context("forkserver")
WRITERS.set_forkserver_preload(PRELOAD)
ID_SPACE = 10**12
TABLE = "torture.t"
DELTA_OPS = {"append": 30, "merge": 15, "update": 15, "delete": 10, "overwrite": 8, "optimize": 6}
LANCE_OPS = {"append": 30, "merge": 15, "update": 15, "delete": 10, "optimize": 6}
RARE_OPS = ("zorder", "vacuum")  # Delta only for zorder; each drawn with ~2% probability


@dataclass
class Target:
    """Where the table lives (a warehouse URI and its storage options) and its format."""

    uri: str
    storage_options: dict[str, str] | None
    format: str  # "delta" | "lance"
    ledger_dir: str
    settings: dict[str, Any] = field(default_factory=dict)  # for the writers' mx.connect
    location: str = ""  # the table's folder, filled in by ``setup``
    weights: dict[str, int] | None = None  # the writers' operation mix (default: *_OPS)
    # Lance merges with commit metadata: they run under the table's merge lease
    # (storage/_lease.py) instead of Lance's declared-key check
    recorded_merges: bool = False


@dataclass
class Report:
    """What a run did and found; ``ok`` when nothing was lost, duplicated or half-visible."""

    rounds: int = 0
    kills: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    errors: list[str] = field(default_factory=list)
    duplicates: int = 0
    losses: int = 0
    wrong: int = 0
    half_visible: int = 0
    compactions: int = 0
    kills_mid_op: dict[str, int] = field(default_factory=dict)
    kills_applied: dict[str, int] = field(default_factory=dict)  # the kill came after the commit
    conflicts_by_op: dict[str, int] = field(default_factory=dict)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    trials: dict[str, int] = field(default_factory=dict)  # targeted kills inside each kind
    complete: bool = True  # False when the run stopped before its planned end
    driver_seconds: dict[str, float] = field(default_factory=dict)  # where the driver's time went

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.losses or self.wrong or self.half_visible) and (
            not self.problems
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "kills": self.kills,
            "kills_mid_operation": dict(sorted(self.kills_mid_op.items())),
            "kills_after_the_commit": dict(sorted(self.kills_applied.items())),
            "operations_acknowledged": dict(sorted(self.operations.items())),
            "operations_total": sum(self.operations.values()),
            "conflicts_surfaced": self.conflicts,
            "conflicts_by_operation": dict(sorted(self.conflicts_by_op.items())),
            "seconds_per_acknowledged_operation": self.latency,
            "errors": self.errors[:20],
            "duplicates": self.duplicates,
            "losses": self.losses,
            "wrong_values": self.wrong,
            "half_visible": self.half_visible,
            "compactions_committed": self.compactions,
            "rows_at_end": self.rows,
            "problems": self.problems[:20],
            **({"trials_by_kind": dict(self.trials)} if self.trials else {}),
            "complete": self.complete,
            "driver_seconds": {k: round(v, 1) for k, v in sorted(self.driver_seconds.items())},
        }


# ------------------------------------------------------------------------------- the ledger
def ledger_path(target: Target, w: int) -> Path:
    return Path(target.ledger_dir) / f"writer-{w}.jsonl"


def _record(path: Path, entry: dict[str, Any]) -> None:
    # The leading newline isolates a line a killed writer left unfinished.
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _apply(state: dict[int, int], effect: dict[str, Any]) -> dict[int, int]:
    if effect.get("replace") is not None:
        return {int(k): v for k, v in effect["replace"].items()}
    out = dict(state)
    for k, v in effect.get("set", {}).items():
        out[int(k)] = v
    for k in effect.get("delete", []):
        out.pop(int(k), None)
    return out


@dataclass
class Replay:
    state: dict[int, int]
    pending: dict[str, Any] | None  # an intent with no ack/fail/resolution
    next_op: int
    acked: dict[str, int]
    conflicts: int
    kills_mid_op: dict[str, int]
    errors: list[str]
    seconds: dict[str, list[float]]  # per operation kind: how long acknowledged calls took
    failed: dict[str, int]  # per operation kind: ConcurrentWriteErrors
    applied: dict[str, int]  # per operation kind: kills after which it was wholly visible


def replay(path: Path) -> Replay:
    """The writer's rows as its ledger says they are, and its open intent if any."""
    state: dict[int, int] = {}
    pending: dict[str, Any] | None = None
    acked: dict[str, int] = {}
    seconds: dict[str, list[float]] = {}
    failed: dict[str, int] = {}
    kills: dict[str, int] = {}
    applied: dict[str, int] = {}
    conflicts = 0
    errors: list[str] = []
    n = 0
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a line cut short by kill -9 (never an ack: acks are whole lines)
            if "intent" in e:
                pending = e
                n = max(n, int(e["intent"]) + 1)
            elif "ack" in e and pending is not None and e["ack"] == pending["intent"]:
                state = _apply(state, pending["effect"])
                acked[pending["op"]] = acked.get(pending["op"], 0) + 1
                seconds.setdefault(pending["op"], []).append(float(e.get("s") or 0))
                pending = None
            elif "fail" in e and pending is not None and e["fail"] == pending["intent"]:
                conflicts += 1
                failed[pending["op"]] = failed.get(pending["op"], 0) + 1
                pending = None
            elif "error" in e:
                errors.append(str(e.get("message")))
            elif "resolved" in e and pending is not None and e["resolved"] == pending["intent"]:
                kills[pending["op"]] = kills.get(pending["op"], 0) + 1
                if e["applied"]:
                    state = _apply(state, pending["effect"])
                    applied[pending["op"]] = applied.get(pending["op"], 0) + 1
                pending = None
    return Replay(state, pending, n, acked, conflicts, kills, errors, seconds, failed, applied)


# ------------------------------------------------------------------------------- the writer
def _operation(
    t: Any,
    kind: str,
    w: int,
    n: int,
    mine: list[int],
    new_ids: list[int],
    rng: random.Random,
    recorded: bool = False,
) -> tuple[dict[str, Any], Callable[[], Any]] | None:
    """Operation ``n`` of writer ``w``: its exact effect on the writer's rows, and the call."""

    def rows(ids: list[int]) -> pa.Table:
        return pa.table({"id": ids, "w": [w] * len(ids), "val": [n] * len(ids)})

    if kind == "append":
        return {"set": dict.fromkeys(new_ids, n)}, partial(t.append, rows(new_ids))
    if kind == "merge":
        keys = rng.sample(mine, min(len(mine), 2)) + new_ids[:2]
        if recorded:
            meta = {"torture": str(n)}
            call = partial(t.store.merge, rows(keys), on=["id"], commit_metadata=meta)
            return {"set": dict.fromkeys(keys, n)}, call
        return {"set": dict.fromkeys(keys, n)}, partial(t.merge, rows(keys), on=["id"])
    if kind in ("update", "delete"):
        if not mine:
            return None
        keys = rng.sample(mine, min(len(mine), 3 if kind == "update" else 2))
        where = f"w = {w} AND id IN ({', '.join(map(str, keys))})"
        if kind == "update":
            return {"set": dict.fromkeys(keys, n)}, partial(t.update, {"val": str(n)}, where)
        return {"delete": keys}, partial(t.delete, where)
    if kind == "overwrite":  # replaceWhere: the writer's own rows only
        keep = rng.sample(mine, len(mine) // 2) + new_ids[:1]
        call = partial(t.store.overwrite, rows(keep), predicate=f"w = {w}")
        return {"replace": dict.fromkeys(keep, n)}, call
    if kind == "zorder":
        return {}, partial(t.optimize, zorder_by=["w", "id"])
    return {}, t.optimize if kind == "optimize" else t.vacuum


def writer_main(target: Target, w: int, seed: int) -> None:
    """One writer process: run random operations on its own rows until killed."""
    import matrixos as mx

    with mx.connect(target.uri, storage_options=target.storage_options, **target.settings) as lh:
        _write(lh, target, w, seed)


def standby_main(target: Target, conn: Any) -> None:
    """A writer process made ahead of need: it imports what a writer uses and connects, then
    waits for the writer it is to become, so a killed writer's replacement starts at once
    (a fresh process all the same: nothing of the killed one survives in it)."""
    import matrixos as mx

    if target.format == "delta":
        import deltalake  # noqa: F401
    else:
        import lance  # noqa: F401
    with mx.connect(target.uri, storage_options=target.storage_options, **target.settings) as lh:
        try:
            conn.send("ready")
            go = conn.recv()
        except (EOFError, OSError):  # the driver went away
            return
        if go is not None:
            w, seed, target.weights = go
            _write(lh, target, w, seed)


def _write(lh: Any, target: Target, w: int, seed: int) -> None:
    from matrixos.errors import ConcurrentWriteError

    rng = random.Random(seed)
    path = ledger_path(target, w)
    r = replay(path)
    if r.pending is not None:  # the parent resolves intents before restarting a writer
        raise SystemExit(f"writer {w}: unresolved intent {r.pending}")
    state, n = r.state, r.next_op
    weights = target.weights or (DELTA_OPS if target.format == "delta" else LANCE_OPS)
    kinds, odds = list(weights), list(weights.values())
    t = lh.table(TABLE)
    while True:
        kind = rng.choices(kinds, odds)[0]
        if target.weights is None and rng.random() < 0.02:
            kind = rng.choice([k for k in RARE_OPS if target.format == "delta" or k != "zorder"])
        # ids never used before: 8 per operation number (numbers are never reused)
        new_ids = [w * ID_SPACE + n * 8 + i for i in range(rng.randint(1, 4))]
        op = _operation(t, kind, w, n, sorted(state), new_ids, rng, target.recorded_merges)
        if op is None:
            continue  # update/delete with no rows of ours yet
        effect, call = op
        _record(path, {"intent": n, "op": kind, "effect": effect})
        t0 = time.monotonic()
        try:
            res = call()
        except ConcurrentWriteError as e:
            took = round(time.monotonic() - t0, 3)
            _record(path, {"fail": n, "s": took, "error": str(e)[:200]})
        except Exception as e:  # anything else: the parent resolves it as after a kill
            cause = e.__cause__ or e.__context__
            message = f"{type(e).__name__}: {e}"[:300]
            if cause is not None:  # what the engine said, before any translation
                message += f" <- {type(cause).__name__}: {cause}"[:500]
            _record(path, {"error": n, "message": message})
            os._exit(3)
        else:
            version = getattr(res, "version", None)
            _record(path, {"ack": n, "version": version, "s": round(time.monotonic() - t0, 3)})
            state = _apply(state, effect)
        n += 1


# ------------------------------------------------------------------------------- checking
def read_rows(target: Target) -> pa.Table:
    """The table's rows through the format's own library (plain deltalake / lance)."""
    return Reader(target).rows()


class Reader:
    """``read_rows`` with the table kept open: each read loads only the commits made since
    the one before (and opens the table afresh when that fails). ``rows(writers)`` reads only
    those writers' rows, all a check after a kill needs: Delta then skips, by its per-file
    statistics, the files of other writers (on moto a full read of 120 one-row files took
    5-11 s, the rows of one writer 0.7-1.2 s); the end of a round reads everything."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.table: Any = None

    def rows(self, writers: list[int] | None = None) -> pa.Table:
        if self.table is not None:
            try:
                if self.target.format == "delta":
                    self.table.update_incremental()
                else:
                    self.table.checkout_latest()
                return self._read(writers)
            except Exception:  # e.g. a log listing caught between two commits
                self.table = None
        loc, opts = self.target.location, self.target.storage_options
        if self.target.format == "delta":
            from deltalake import DeltaTable

            self.table = DeltaTable(loc, storage_options=opts)
        else:
            import lance

            lower = {k.lower(): v for k, v in (opts or {}).items()} or None
            self.table = lance.dataset(loc, storage_options=lower)
        return self._read(writers)

    def _read(self, writers: list[int] | None) -> pa.Table:
        columns = ["id", "w", "val"]
        if self.target.format == "delta":
            filters = None if writers is None else [("w", "in", writers)]
            return self.table.to_pyarrow_table(columns=columns, filters=filters)
        where = None if writers is None else f"w IN ({', '.join(map(str, writers))})"
        return self.table.to_table(columns=columns, filter=where)


def _by_writer(rows: pa.Table) -> dict[int, dict[int, list[int]]]:
    out: dict[int, dict[int, list[int]]] = {}
    for i, w, v in zip(
        rows["id"].to_pylist(), rows["w"].to_pylist(), rows["val"].to_pylist(), strict=True
    ):
        out.setdefault(int(w), {}).setdefault(int(i), []).append(int(v))
    return out


def resolve(target: Target, w: int, rows: pa.Table, report: Report) -> None:
    """After writer ``w`` died: its open intent is wholly visible or wholly absent; record
    which. Anything else counts as half-visible (or lost/duplicated)."""
    path = ledger_path(target, w)
    r = replay(path)
    if r.pending is None:
        return
    got = _by_writer(rows).get(w, {})
    actual = {i: vs[0] for i, vs in got.items()}
    before, after = r.state, _apply(r.state, r.pending["effect"])
    if any(len(vs) > 1 for vs in got.values()):
        report.problems.append(f"writer {w}: duplicated ids after a kill during {r.pending}")
        applied = actual == after
    elif actual == after:
        applied = True
    elif actual == before:
        applied = False
    else:
        report.half_visible += 1
        report.problems.append(
            f"writer {w}: after a kill during {r.pending['op']} #{r.pending['intent']} its rows "
            f"are neither the state before nor after it ({len(actual)} rows; "
            f"{len(before)} before, {len(after)} after; against before: {_diff(before, actual)})"
        )
        applied = False
    _record(path, {"resolved": r.pending["intent"], "applied": applied})


def _diff(want: dict[int, int], got: dict[int, int]) -> str:
    """What ``got`` has that ``want`` has not, lacks, and holds with another value: a few
    ids of each, to tell one write landing late from a partial one."""
    extra = sorted(set(got) - set(want))[:4]
    missing = sorted(set(want) - set(got))[:4]
    changed = sorted((i, want[i], got[i]) for i in set(want) & set(got) if want[i] != got[i])[:4]
    return f"extra {extra}, missing {missing}, changed (id, want, got) {changed}"


def check(target: Target, writers: int, report: Report, rows: pa.Table | None = None) -> None:
    """Compare the whole table with every writer's ledger; count what is wrong."""
    rows = read_rows(target) if rows is None else rows
    ids = rows["id"].to_pylist()
    report.duplicates += len(ids) - len(set(ids))
    report.rows = len(ids)
    got = _by_writer(rows)
    for w in range(writers):
        r = replay(ledger_path(target, w))
        if r.pending is not None:
            report.problems.append(f"writer {w}: intent left unresolved")
        mine = got.get(w, {})
        for i, v in r.state.items():
            if i not in mine:
                report.losses += 1
            elif mine[i][0] != v:
                report.wrong += 1
        extra = set(mine) - set(r.state)
        if extra:
            report.half_visible += len(extra)
            report.problems.append(f"writer {w}: {len(extra)} rows no acknowledged write made")
    unknown = set(got) - set(range(writers)) - {-1}
    if unknown:
        report.problems.append(f"rows of unknown writers {sorted(unknown)}")


def check_readers(target: Target, rows: pa.Table, report: Report) -> None:
    """The same rows through DuckDB (MatrixOS's SQL engine, and DuckDB over the files) and,
    for Lance, lancedb."""
    import duckdb

    import matrixos as mx

    want = (rows.num_rows, len(set(rows["id"].to_pylist())), sum(rows["val"].to_pylist()))
    with mx.connect(target.uri, storage_options=target.storage_options) as lh:
        got = lh.sql(f"SELECT count(*), count(DISTINCT id), sum(val) FROM {TABLE}").fetchall()[0]
        loc = str(lh.table(TABLE).location)
        history = lh.table(TABLE).history()
    report.compactions = sum(1 for h in history if h.get("operation") == "OPTIMIZE")
    if tuple(int(x or 0) for x in got) != want:
        report.problems.append(f"MatrixOS SQL (DuckDB) reads {got}, deltalake/lance {want}")
    con = duckdb.connect()
    if target.format == "delta" and target.storage_options is None:
        from deltalake import DeltaTable

        files = [u.removeprefix("file://") for u in DeltaTable(loc).file_uris()]
        if files:
            q = "SELECT count(*), count(DISTINCT id), sum(val) FROM read_parquet(?)"
            plain = con.execute(q, [files]).fetchall()[0]
            if tuple(int(x or 0) for x in plain) != want:
                report.problems.append(f"DuckDB over the files reads {plain}, want {want}")
    if target.format == "lance":
        import lancedb
        from lancedb.table import LanceTable

        parent, name = loc.rstrip("/").rsplit("/", 1)
        opts = {k.lower(): v for k, v in (target.storage_options or {}).items()} or None
        db = lancedb.connect(parent, storage_options=opts)
        # MatrixOS names a table's folder without lancedb's ".lance": open it by location
        arrow = LanceTable.open(db, name, location=loc, storage_options=opts).to_arrow()
        if arrow.num_rows != rows.num_rows:
            report.problems.append(f"lancedb reads {arrow.num_rows} rows, want {rows.num_rows}")


# ------------------------------------------------------------------------------- the driver
def setup(target: Target) -> None:
    import matrixos as mx

    Path(target.ledger_dir).mkdir(parents=True, exist_ok=True)
    with mx.connect(target.uri, storage_options=target.storage_options) as lh:
        lh.sql("CREATE SCHEMA IF NOT EXISTS torture")
        t = lh.create_table(
            TABLE,
            pa.table({"id": [-1], "w": [-1], "val": [0]}),
            format="lance" if target.format == "lance" else "delta",
        )
        target.location = str(t.location)


class Standby:
    """Writer processes spawned ahead of need (``standby_main``): ``take`` turns one into
    writer ``w`` at once, and spawns its successor in the background."""

    def __init__(self, target: Target, size: int = 2) -> None:
        self.target, self.size = target, size
        self.spare: list[tuple[Any, Any]] = []  # (process, the driver's end of its pipe)
        self.fill()

    def fill(self) -> None:
        while len(self.spare) < self.size:
            mine, theirs = WRITERS.Pipe()
            p = WRITERS.Process(target=standby_main, args=(self.target, theirs), daemon=True)
            p.start()
            theirs.close()
            self.spare.append((p, mine))

    def take(self, w: int, seed: int, weights: dict[str, int] | None) -> Any:
        while True:
            self.fill()
            # a spare that said it is ready, else the oldest (it starts once it is)
            i = next((i for i, (_, c) in enumerate(self.spare) if c.poll()), 0)
            p, conn = self.spare.pop(i)
            try:
                conn.send((w, seed, weights))
            except OSError:  # it died in its start-up: its successor takes over
                kill(p)
                continue
            p.conn = conn  # open while the process lives
            self.fill()
            return p

    def close(self) -> None:
        for p, _ in self.spare:
            kill(p)
        self.spare = []


class Crew:
    """The writer processes of one round."""

    def __init__(self, target: Target, rng: random.Random, standby: Standby | None = None):
        self.target, self.rng, self.standby = target, rng, standby
        self.procs: dict[int, Any] = {}
        self.started_at: dict[int, int] = {}  # ledger size when the writer (re)started

    def start(self, w: int) -> None:
        seed = self.rng.randrange(2**31)
        if self.standby is not None:
            p = self.standby.take(w, seed, self.target.weights)
        else:
            p = WRITERS.Process(target=writer_main, args=(self.target, w, seed))
            p.start()
        self.procs[w] = p
        path = ledger_path(self.target, w)
        self.started_at[w] = path.stat().st_size if path.exists() else 0

    def replace_dead(self, reader: Reader, report: Report) -> None:
        """Resolve and restart writers that died by themselves (an error they recorded)."""
        for w, p in list(self.procs.items()):
            if p.exitcode is not None:
                settle(self.target)
                resolve(self.target, w, reader.rows([w]), report)
                self.start(w)

    def end(self, writers: int, report: Report) -> pa.Table:
        """Kill every writer, resolve their open intents and check the whole table (read
        afresh) against every ledger and through every reader; the rows read."""
        ports = []
        for p in self.procs.values():
            ports += kill(p, self.target)
            report.kills += 1
        settle(self.target, ports)
        rows = read_rows(self.target)
        for w in range(writers):
            resolve(self.target, w, rows, report)
        check(self.target, writers, report, rows)
        check_readers(self.target, rows, report)
        return rows

    def working(self) -> list[int]:
        """Writers with an operation acknowledged since they (re)started: a kill then lands
        among operations, not in the start-up."""
        out = []
        for w in self.procs:
            path = ledger_path(self.target, w)
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(self.started_at[w])
                if b'"ack"' in f.read():
                    out.append(w)
        return out


def run(
    target: Target,
    *,
    writers: int,
    rounds: int,
    round_seconds: float,
    kill_every: tuple[float, float] = (0.3, 1.5),
    min_kills: int = 0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Report:
    """``rounds`` rounds of ``writers`` processes for ``round_seconds`` each, killing a random
    writer every ``kill_every`` seconds (uniform), checking after every kill and every round.
    A round goes on past ``round_seconds`` until it has killed ``min_kills`` writers."""
    rng = random.Random(seed)
    report = Report()
    setup(target)
    standby, reader = Standby(target), Reader(target)
    try:
        for rnd in range(rounds):
            crew = Crew(target, rng, standby)
            for w in range(writers):
                crew.start(w)
            end = time.monotonic() + round_seconds
            next_kill = time.monotonic() + rng.uniform(*kill_every)
            kills = 0
            while time.monotonic() < end or kills < min_kills:
                time.sleep(0.02)
                crew.replace_dead(reader, report)
                busy = crew.working()
                if time.monotonic() >= next_kill and busy:
                    w = rng.choice(busy)
                    ports = kill(crew.procs[w], target)
                    report.kills += 1
                    kills += 1
                    settle(target, ports)
                    resolve(target, w, reader.rows([w]), report)
                    crew.start(w)
                    next_kill = time.monotonic() + rng.uniform(*kill_every)
            rows = crew.end(writers, report)
            _vacuum_everything(target)
            after = read_rows(target)
            if sorted(after["id"].to_pylist()) != sorted(rows["id"].to_pylist()):
                report.problems.append("VACUUM with zero retention changed the rows")
            report.rounds += 1
            if log:
                log(f"round {rnd + 1}: {json.dumps(summarize(target, writers, report))}")
    finally:
        standby.close()
    summarize(target, writers, report)
    return report


def summarize(target: Target, writers: int, report: Report) -> dict[str, Any]:
    """Fill the report's counts from every writer's ledger; the report as a dict."""
    counts: dict[str, dict[str, int]] = {"acked": {}, "kills": {}, "failed": {}, "applied": {}}
    report.errors, report.conflicts = [], 0
    seconds: dict[str, list[float]] = {}
    for w in range(writers):
        r = replay(ledger_path(target, w))
        report.errors.extend(r.errors)
        report.conflicts += r.conflicts
        for name, per_kind in (
            ("acked", r.acked),
            ("kills", r.kills_mid_op),
            ("failed", r.failed),
            ("applied", r.applied),
        ):
            for k, v in per_kind.items():
                counts[name][k] = counts[name].get(k, 0) + v
        for k, xs in r.seconds.items():
            seconds.setdefault(k, []).extend(xs)
    report.operations, report.kills_mid_op = counts["acked"], counts["kills"]
    report.conflicts_by_op, report.kills_applied = counts["failed"], counts["applied"]
    report.latency = {k: _percentiles(xs) for k, xs in sorted(seconds.items())}
    return report.as_dict()


def _percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50": round(xs[len(xs) // 2], 3),
        "p99": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 3),
        "max": round(xs[-1], 3),
    }


def _vacuum_everything(target: Target) -> None:
    """No writer runs now: a zero-retention VACUUM may delete every file no version needs."""
    import matrixos as mx

    with mx.connect(target.uri, storage_options=target.storage_options) as lh:
        lh.table(TABLE).vacuum(0, enforce=False)


def kill(p: Any, target: Target | None = None) -> list[int]:
    """kill -9 ``p``. With a target on a loopback S3 server, stop it first and return the
    local ports of its connections to the server (for ``settle``)."""
    ports: list[int] = []
    if p.is_alive():
        server = None if target is None else _loopback_port(target)
        if server is not None:
            os.kill(p.pid, signal.SIGSTOP)  # frozen where the kill lands: no new request
            ports = tcp_ports(p.pid, server)
        os.kill(p.pid, signal.SIGKILL)
    p.join(timeout=60)
    return ports


def settle(target: Target, ports: list[int] | None = None) -> None:
    """On S3, a request fully sent before the kill may still be applied by the server: let it
    land before the table is read (a 0.3 s sleep was not enough at load 30: a commit queued in
    moto landed after the check). The benchmark's own moto server answers once it has served
    and closed every connection from the killed writers' ``ports``; another loopback server is
    watched through the kernel's TCP table (slower where thousands of sockets are open) until
    the server's side of each such connection is closed; elsewhere: sleep."""
    if not target.storage_options:
        return
    moto = MOTO_SERVERS.get(target.storage_options.get("AWS_ENDPOINT_URL", ""))
    server = _loopback_port(target)
    if moto is not None:
        moto.settle(ports or [])
    elif server is None:
        time.sleep(0.3)
    else:
        end = time.monotonic() + 120
        while ports and _server_side_open(server, set(ports)):
            if time.monotonic() > end:
                raise RuntimeError(f"the S3 server still serves the killed writers' {ports}")
            time.sleep(0.01)


def _loopback_port(target: Target) -> int | None:
    url = urlsplit((target.storage_options or {}).get("AWS_ENDPOINT_URL", ""))
    return url.port if url.hostname in ("127.0.0.1", "localhost") else None


def _tcp_table() -> list[list[str]]:
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            rows += [line.split() for line in Path(table).read_text().splitlines()[1:]]
    return rows


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def _server_side_open(server: int, ports: set[int]) -> bool:
    """A connection from one of ``ports`` to ``server`` the server has not closed yet:
    SYN_RECV, ESTABLISHED or CLOSE_WAIT on the server's side."""
    return any(
        _port(f[1]) == server and _port(f[2]) in ports and f[3] in ("01", "03", "08")
        for f in _tcp_table()
    )
