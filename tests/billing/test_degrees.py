"""The degree table: 1 degree = 312 TFLOPS x 1 hour, each type at its documented peak."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from matrixos.catalog.billing import from_nano, to_nano
from matrixos.config import Settings
from matrixos.errors import ConfigError
from matrixos.metering import PEAK_TFLOPS, UsageRecord, degree_table, degrees, peak_tflops


def test_degrees_from_the_table() -> None:
    assert degrees("gpu", "A100", 1, 3600) == 1.0  # the unit
    assert degrees("gpu", "H100", 8, 1800) == pytest.approx(8 * 0.5 * 989 / 312)
    assert degrees("gpu", "H200", 1, 3600) == degrees("gpu", "H100", 1, 3600)
    assert degrees("gpu", "L4", 2, 3600) == pytest.approx(2 * 121 / 312)
    assert degrees("gpu", "T4", 1, 7200) == pytest.approx(2 * 65 / 312)
    assert degrees("gpu", "A10", 1, 3600) == pytest.approx(125 / 312)
    # A CPU core at 0.1 TFLOPS: 3120 core-hours are one degree.
    assert degrees("cpu", None, 3120, 3600) == pytest.approx(1.0)
    assert degrees("memory", None, 512, 3600) == 0.0  # recorded, free by default
    # Names as Ray and nvidia-smi spell them.
    assert peak_tflops("gpu", "A100-80G") == peak_tflops("gpu", "nvidia h100 80gb hbm3") / 989 * 312
    assert peak_tflops("gpu", "NVIDIA_H100") == 989.0


def test_bad_usage_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="unknown accelerator 'X9'"):
        degrees("gpu", "X9", 1, 1)
    with pytest.raises(ConfigError, match="accelerator type"):
        degrees("gpu", None, 1, 1)
    with pytest.raises(ConfigError, match="unknown resource 'disk'"):
        degrees("disk", None, 1, 1)
    with pytest.raises(ConfigError, match="negative"):
        degrees("cpu", None, -1, 1)
    with pytest.raises(ConfigError, match="negative"):
        UsageRecord("a", "a", resource="cpu", quantity=1, start=10.0, end=20.0, seconds=-5)


def test_degree_table_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "degrees.json"
    path.write_text(json.dumps({"mi300x": 1307, "CPU": 0.2, "MEMORY": 0.01}))
    table = degree_table(Settings(degree_table=str(path)))
    assert table["MI300X"] == 1307 and table["A100"] == PEAK_TFLOPS["A100"]
    assert degrees("gpu", "MI300X", 1, 3600, table=table) == pytest.approx(1307 / 312)
    assert degrees("cpu", None, 1560, 3600, table=table) == pytest.approx(1.0)
    assert degrees("memory", None, 100, 3600, table=table) == pytest.approx(1 / 312)
    path.write_text('{"H100": "fast"}')
    with pytest.raises(ConfigError, match="'H100' must be a number"):
        degree_table(Settings(degree_table=str(path)))
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="not JSON"):
        degree_table(Settings(degree_table=str(path)))


def test_records_are_priced_and_rounded_like_the_ledger() -> None:
    r = UsageRecord(
        "team-a", "alice", resource="gpu", accelerator="H100", quantity=2, start=0.0, end=90.0
    )
    assert r.seconds == 90.0 and r.degrees is None
    priced = r.priced()
    assert priced.degrees == pytest.approx(2 * 90 * 989 / 312 / 3600)
    assert priced.row()["degrees"] == from_nano(to_nano(priced.degrees))
    assert to_nano(Decimal("1.0000000005")) == 1_000_000_000  # half to even
    assert from_nano(-1) == Decimal("-0.000000001")
