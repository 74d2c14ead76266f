"""Torture, small size (issue 9 §5): writer processes x mixed operations x random kill -9 on
one table, local and S3 (moto), Delta and Lance, checked against the writers' ledgers after
every kill and at the end. The long run is ``python -m benchmarks.torture``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

# The harness is shared with the benchmark; pytest puts tests/, not the repository root, on
# sys.path (spawned writers inherit the path, so they find it too).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks._torture import Report, Target, check, read_rows, run, setup
from benchmarks._torture_kinds import run_targeted


def make_target(root: Any, tmp_path: Path, fmt: str) -> Target:
    return Target(
        root.uri,
        root.storage_options,
        fmt,
        str(tmp_path / "ledgers"),
        # compact every 3 small files: writers cross that line together all the time
        {"auto_compact_min_files": 3},
    )


@pytest.mark.parametrize("fmt", ["delta", "lance"])
def test_kill_9_churn_loses_and_duplicates_nothing(
    warehouse_root: Any, tmp_path: Path, fmt: str
) -> None:
    target = make_target(warehouse_root, tmp_path, fmt)
    report = run(
        target,
        writers=3,
        rounds=1,
        round_seconds=4,
        kill_every=(0.3, 0.7),
        min_kills=5,
        seed=9,
    )
    summary = report.as_dict()
    assert report.ok, summary
    assert summary["duplicates"] == summary["losses"] == summary["half_visible"] == 0
    assert not report.errors, summary  # every failure was a clean ConcurrentWriteError
    assert report.kills >= 8  # five among operations, three at the end of the round
    # each of the five kills waited for an acknowledged operation of its writer
    assert sum(report.operations.values()) >= 5, summary
    writes = {k for k in report.operations if k not in ("optimize", "zorder", "vacuum")}
    assert len(writes) >= 2, summary
    assert report.compactions >= 1, summary  # auto/explicit compactions really ran
    assert report.rows > 1


def test_kills_inside_each_write_kind(tmp_path: Path) -> None:
    """The targeted mode the long run uses for its per-kind trial counts: every kill lands
    while the writer is inside an operation of the round's kind."""
    root = type("Root", (), {"uri": str(tmp_path / "wh"), "storage_options": None})()
    target = make_target(root, tmp_path, "delta")
    kinds = ["append", "merge", "update", "delete", "overwrite", "optimize"]
    report = run_targeted(target, writers=3, kinds=kinds, trials=2, seed=3)
    summary = report.as_dict()
    assert report.ok, summary
    assert not report.errors, summary
    for kind in kinds:
        assert summary["kills_mid_operation"].get(kind, 0) >= 2, summary


def test_the_checker_sees_loss_duplicates_and_half_visible_writes(tmp_path: Path) -> None:
    """The harness itself: a table tampered with behind the writers' backs fails the check."""
    target = make_target(
        type("Root", (), {"uri": str(tmp_path / "wh"), "storage_options": None})(),
        tmp_path,
        "delta",
    )
    setup(target)
    ledger = Path(target.ledger_dir) / "writer-0.jsonl"
    ledger.write_text(
        '{"intent": 0, "op": "append", "effect": {"set": {"1": 0, "2": 0, "3": 0}}}\n'
        '{"ack": 0, "version": 1}\n'
    )
    rows = pa.table({"id": [1, 2], "w": [0, 0], "val": [0, 0]})
    write_deltalake(target.location, rows, mode="append")
    clean = Report()
    check(target, 1, clean)
    assert (clean.losses, clean.duplicates, clean.half_visible) == (1, 0, 0)
    write_deltalake(
        target.location,
        pa.table({"id": [2, 3, 7], "w": [0, 0, 0], "val": [0, 0, 5]}),
        mode="append",
    )
    bad = Report()
    check(target, 1, bad, read_rows(target))
    assert (bad.losses, bad.duplicates, bad.half_visible) == (0, 1, 1)
    assert not bad.ok
    assert DeltaTable(target.location).version() == 2


def test_a_targeted_run_stopped_early_still_ends_with_its_full_check(tmp_path: Path) -> None:
    """What the long S3 run relies on when its time is up: ``stop`` ends the round with the
    whole-table check, the report counts the trials checked so far and says it is partial, and
    the kinds take turns (``round_trials``) so none is left at zero."""
    root = type("Root", (), {"uri": str(tmp_path / "wh"), "storage_options": None})()
    target = make_target(root, tmp_path, "delta")
    seen: list[dict[str, Any]] = []
    report = run_targeted(
        target,
        writers=2,
        kinds=["append", "delete"],
        trials=1000,
        round_trials=2,
        progress=seen.append,
        progress_every=2,
        stop=lambda: bool(seen) and seen[-1]["rounds"] >= 2,  # once append and delete had one
        seed=5,
    )
    summary = report.as_dict()
    assert report.ok, summary
    assert summary["complete"] is False
    assert report.rounds == 2, summary  # each round ended with the whole-table check
    assert report.trials["append"] >= 2 and report.trials["delete"] >= 2, summary
    assert seen[-1]["trials_by_kind"] == summary["trials_by_kind"]
    assert summary["kills_mid_operation"]["append"] >= 2
