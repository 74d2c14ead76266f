"""``matrixos accounts credit|balance|ledger`` and ``matrixos usage`` as a user runs them: real
processes on a real warehouse, a table, a terminal bar chart and a PNG file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import matrixos as mx
from matrixos.metering import Meter, UsageRecord
from tests.test_cli_accounts import matrixos

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


@pytest.fixture
def wh(tmp_path: Path) -> Path:
    path = tmp_path / "wh"
    with mx.connect(str(path)) as lh:
        lh.accounts.create("team-a", kind="group")
        meter = Meter(lh.service)
        meter.record(
            [
                UsageRecord("team-a", "bob", resource="gpu", accelerator="A100", quantity=8,
                            start=T0, end=T0 + timedelta(hours=1), job_id="job-1"),
                UsageRecord("team-a", "bob", resource="gpu", accelerator="A100", quantity=4,
                            start=T0 + timedelta(hours=2), end=T0 + timedelta(hours=3),
                            job_id="job-2"),
            ]
        )  # fmt: skip
        meter.close()
    return path


def test_credit_balance_ledger(wh: Path) -> None:
    out = matrixos(wh, "accounts", "credit", "team-a", "--degrees", "16", "--note", "Q4").stderr
    assert "credited team-a with 16 degrees; balance 4" in out  # 12 A100-hours were used
    rows = json.loads(matrixos(wh, "accounts", "balance", "-f", "json").stdout)
    assert rows == [
        {
            "account": "team-a",
            "credited": "16.000000000",
            "consumed": "12.000000000",
            "balance": "4.000000000",
            "used": "75.0%",
            "alerts": "",  # alerts fire on charges, and the charges came before the credit
        }
    ]
    ledger = json.loads(matrixos(wh, "accounts", "ledger", "team-a", "-f", "json").stdout)
    assert [(r["kind"], r["degrees"], r["balance"], r["ref"]) for r in ledger] == [
        ("charge", "-8.000000000", "-8.000000000", "job-1"),
        ("charge", "-4.000000000", "-12.000000000", "job-2"),
        ("credit", "16.000000000", "4.000000000", None),
    ]
    assert ledger[2]["note"] == "Q4"
    # The audit trail records the credit.
    with mx.connect(str(wh)) as lh:
        assert lh.sql(
            "SELECT action, object, outcome FROM system.access.audit ORDER BY event_time"
        ).fetchall()[0] == ("CREDIT", "team-a", "ok")


def test_usage_table_chart_and_png(wh: Path, tmp_path: Path) -> None:
    png = tmp_path / "usage.png"
    p = matrixos(wh, "usage", "--by", "hour", "--png", str(png))
    assert "team-a" in p.stdout and "8.000000000" in p.stdout and "(2 rows)" in p.stdout
    bars = [line for line in p.stdout.splitlines() if "█" in line]
    assert bars[0].startswith("2026-12-05 08:00 " + "█" * 40) and bars[0].endswith(" 8")
    assert bars[1].startswith("2026-12-05 10:00 " + "█" * 20 + " ") and bars[1].endswith(" 4")
    assert f"chart written to {png}" in p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    jobs = json.loads(matrixos(wh, "usage", "--by", "job", "-f", "json").stdout)
    assert [(r["job"], r["degrees"]) for r in jobs] == [
        ("job-1", "8.000000000"),
        ("job-2", "4.000000000"),
    ]
    assert matrixos(wh, "usage", "--account", "team-a", "--since", "2026-12-06").stdout.strip() == (
        "(no usage recorded)"
    )
