"""The sandbox under generated attack: hostile SQL across seven dialects through ``lh.sql``.

The grammar and the escape oracle live in ``benchmarks/_sandbox_fuzz.py`` (the long run is
``python -m benchmarks.sandbox_fuzz --statements N``). Here a small sample runs in CI: a
seeded random walk over the whole grammar, and hypothesis's own search. An escape is a file
written or database attached outside the warehouse, a secret, setting or $HOME read back, an
object created in the engine's DuckDB connections, or an exception that is not a
``MatrixOSError``.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

# The repository root, where ``benchmarks`` lives (pytest puts only tests/ on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks._sandbox_fuzz import DIALECTS, Box, box, statement, statements, try_statement


@pytest.fixture(scope="module")
def fuzz_box() -> Iterator[Box]:
    with box() as b:
        yield b


def test_seeded_statements_across_the_grammar_do_not_escape(fuzz_box: Box) -> None:
    rng = random.Random(20261205)
    outcomes = [
        try_statement(fuzz_box, *statement(rng.choice, fuzz_box.places)) for _ in range(120)
    ]
    escaped = [(o.dialect, o.sql, o.escapes) for o in outcomes if o.escapes]
    assert escaped == []
    # The sample is not vacuous: every dialect, and statements that ran as well as refusals.
    assert {o.dialect for o in outcomes} == set(DIALECTS)
    assert any(o.ran for o in outcomes) and any(not o.ran for o in outcomes)


def test_hypothesis_statements_do_not_escape(fuzz_box: Box) -> None:
    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=statements(fuzz_box.places))
    def check(case: tuple[str, str]) -> None:
        outcome = try_statement(fuzz_box, *case)
        assert outcome.escapes == [], (case, outcome.escapes)

    check()
