"""Torture, targeted: kill -9 writers only while they are inside one kind of operation.

The issue asks for at least 200 kill -9 trials per write kind. ``run_targeted`` runs one round
per kind; in it the writers draw that kind half of the time (the rest keeps the table changing
under it), and each operation of the kind a writer starts is aimed at: a kill moment drawn
uniformly from 0 to 1.2 x the kind's median duration so far (from the ledgers' acks), so kills
land anywhere from before the first file is written to after the commit, before the
acknowledgement. Right before the kill the driver looks at the writer's ledger again: if the
operation has finished meanwhile, it does not kill (the aim missed; nothing to check). A kill
that landed is a trial: the writer's rows are read (plain deltalake / lance) and must be
exactly the state before or after the open operation (``resolve``), then a standby process
takes the writer's place at once. Several writers can be aimed at together; kills due at the
same moment share one read. Each round ends with the full check (``Crew.end``).

Trial rate, not strength, is what this module changes against the first version (one aim at a
time, a fresh ``spawn`` per kill that imported deltalake/pyarrow before writing, a full table
open per check): see ``Report.driver_seconds`` for where the driver's time goes.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._torture import (
    DELTA_OPS,
    LANCE_OPS,
    Crew,
    Reader,
    Report,
    Standby,
    Target,
    kill,
    ledger_path,
    replay,
    resolve,
    settle,
    setup,
    summarize,
)


class Tail:
    """A writer's ledger read as it grows: its last entry (an ``intent`` while an operation is
    open) and the durations of acknowledged operations of one kind."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""
        self.last: dict[str, Any] | None = None
        self.intent: dict[str, Any] | None = None

    def poll(self, kind: str, durations: list[float]) -> dict[str, Any] | None:
        """Read what was appended; add the kind's ack durations; the open intent or None."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return None
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue  # empty, or cut short by a kill
            if "intent" in e:
                self.intent = e
            elif (
                "ack" in e
                and self.intent is not None
                and (e["ack"], self.intent["op"]) == (self.intent["intent"], kind)
            ):
                durations.append(float(e.get("s") or 0))
            self.last = e
        return self.last if self.last is not None and "intent" in self.last else None


def run_targeted(
    target: Target,
    *,
    writers: int,
    kinds: list[str],
    trials: int,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_every: int = 25,
    stop: Callable[[], bool] = lambda: False,
    round_trials: int | None = None,
) -> Report:
    """For each operation kind in ``kinds``, one round that kill -9s writers only while they
    are inside an operation of that kind, until ``trials`` such kills were checked (or
    ``stop()`` says so: the round then ends with its full check, and the report is marked
    incomplete). With ``round_trials``, the kinds take turns in rounds of that many trials (a
    run cut short then has every kind covered alike). ``progress`` gets the summary so far
    every ``progress_every`` trials and after every round."""
    rng = random.Random(seed)
    report = Report()
    setup(target)
    base = DELTA_OPS if target.format == "delta" else LANCE_OPS
    standby, reader = Standby(target), Reader(target)
    tails = {w: Tail(ledger_path(target, w)) for w in range(writers)}
    clock = report.driver_seconds

    def timed(phase: str, t0: float) -> float:
        now = time.monotonic()
        clock[phase] = clock.get(phase, 0.0) + now - t0
        return now

    def tick(kind: str, done: int, started: float) -> None:
        summary = summarize(target, writers, report)
        line = f"{kind}: {done} kills mid-{kind} in {time.monotonic() - started:.0f} s"
        if log:
            log(f"{line}; {json.dumps(summary)}")
        if progress:
            progress(summary)

    plan: list[tuple[str, int]] = []  # (kind, trials) per round
    left = dict.fromkeys(kinds, trials)
    while any(left.values()):
        for kind in kinds:
            if left[kind]:
                plan.append((kind, min(left[kind], round_trials or trials)))
                left[kind] -= plan[-1][1]
    try:
        for kind, wanted in plan:
            if stop():
                report.complete = False
                break
            mix = dict(base)
            mix[kind] = sum(mix.values())  # half the operations are of this kind
            target.weights = mix
            crew = Crew(target, rng, standby)
            for w in range(writers):
                crew.start(w)
            durations: list[float] = []
            aims: dict[int, tuple[int, float]] = {}  # writer -> (its open intent, kill when)
            done, started = 0, time.monotonic()
            t = started
            while done < wanted:
                if stop():
                    report.complete = False
                    break
                time.sleep(0.01)
                t = timed("waiting", t)
                crew.replace_dead(reader, report)
                now = time.monotonic()
                recent = sorted(durations[-50:])
                typical = recent[len(recent) // 2] if len(recent) >= 3 else 1.0
                for w in crew.procs:
                    e = tails[w].poll(kind, durations)
                    if e is None or e["op"] != kind:
                        aims.pop(w, None)
                    elif w not in aims or aims[w][0] != e["intent"]:
                        aims[w] = (e["intent"], now + rng.uniform(0, typical * 1.2))
                killed, ports = [], []
                for w, (n, when) in list(aims.items()):
                    if when > now:
                        continue
                    del aims[w]
                    e = tails[w].poll(kind, durations)  # still inside it?
                    if e is not None and e["intent"] == n:
                        ports += kill(crew.procs[w], target)
                        killed.append(w)
                t = timed("aiming", t)
                if not killed:
                    continue
                report.kills += len(killed)
                settle(target, ports)
                t = timed("settling", t)
                rows = reader.rows(killed)
                t = timed("reading", t)
                for w in killed:
                    pending = replay(ledger_path(target, w)).pending
                    if pending is not None and pending["op"] == kind:
                        done += 1
                        report.trials[kind] = report.trials.get(kind, 0) + 1
                        if done % progress_every == 0:
                            tick(kind, done, started)
                    resolve(target, w, rows, report)
                    crew.start(w)
                t = timed("checking", t)
            crew.end(writers, report)
            timed("round checks", t)
            report.rounds += 1
            tick(kind, done, started)
    finally:
        standby.close()
        target.weights = None
    summarize(target, writers, report)
    return report
