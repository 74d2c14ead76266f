"""``matrixos jobs submit|list|show|cancel|logs`` and ``matrixos reserve``, as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def matrixos(wh: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MATRIXOS_")}
    environ.update(MATRIXOS_HOME=str(wh.parent / "home"), PYTHONIOENCODING="utf-8")
    p = subprocess.run(
        [sys.executable, "-m", "matrixos.cli", "--warehouse", str(wh), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        cwd=wh.parent,
    )
    assert p.returncode == code, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr + p.stdout
    return p


def test_submit_wait_list_show_logs_cancel_and_bad_requests(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    (tmp_path / "hello.py").write_text(
        "import os, sys\n"
        "print('hello', sys.argv[1:], os.environ['WHO'])\n"
        "sys.exit(len(sys.argv) - 3)\n"
    )
    out = matrixos(wh, "jobs", "submit", "hello.py", "a", "b", "--env", "WHO=me", "--wait")
    assert "hello ['a', 'b'] me" in out.stdout and " SUCCEEDED" in out.stdout
    done = out.stdout.split()[-2]
    failed = matrixos(wh, "jobs", "submit", "hello.py", "a", "b", "c", "-e", "WHO=x", "-w", code=1)
    assert "FAILED: exit status 1" in failed.stdout
    queued = matrixos(wh, "jobs", "submit", "SELECT 1", "--sql", "--name", "one").stdout.split()
    assert queued[1] == "QUEUED"  # no scheduler runs here: it waits in the queue
    rows = json.loads(matrixos(wh, "jobs", "list", "-f", "json").stdout)
    assert [(r["name"], r["state"]) for r in rows] == [
        ("one", "QUEUED"),
        ("hello.py a b c", "FAILED"),
        ("hello.py a b", "SUCCEEDED"),
    ]
    shown = json.loads(matrixos(wh, "jobs", "show", done, "-f", "json").stdout)
    assert shown["state"] == "SUCCEEDED" and shown["exit_code"] == 0 and shown["attempts"] == 1
    assert matrixos(wh, "jobs", "logs", done).stdout == "hello ['a', 'b'] me\n"
    assert matrixos(wh, "jobs", "cancel", queued[0]).stdout.split() == [queued[0], "CANCELED"]
    bad = matrixos(wh, "jobs", "submit", "hello.py", "--gpus", "-1", code=1)
    assert "gpus must be a whole number" in bad.stderr
    missing = matrixos(wh, "jobs", "show", "nope", code=1)
    assert "no job 'nope'" in missing.stderr
    refused = matrixos(
        wh, "reserve", "--gpus", "1", "--start", "2030-01-01T08:00", "--duration", "2h", code=1
    )
    assert "GPU" in refused.stderr
