"""The README's Quickstart on a fresh clone: nothing beside the checkout, an empty ``TMPDIR``,
an empty home (so an empty TPC-H cache), no root needed.

It runs ``./dev demo`` exactly as a new user would. pip keeps using this machine's download
cache (``PIP_CACHE_DIR``), so the run takes about a minute and needs the package index only
for what that cache lacks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pip_cache() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else ""


def test_quickstart_runs_on_a_fresh_clone(tmp_path: Path) -> None:
    # The README's first command, as the README shows it.
    readme = (REPO / "README.md").read_text()
    assert "./dev demo" in readme.split("## ", 2)[1]  # in the first section (the Quickstart)

    clone, home, tmp = tmp_path / "matrixos", tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    git = shutil.which("git")
    assert git is not None
    subprocess.run([git, "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MATRIXOS_", "XDG_", "RAY_"))
        and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env.update(HOME=str(home), TMPDIR=str(tmp), PIP_CACHE_DIR=_pip_cache() or str(home / "pip"))
    # The demo needs no system packages: an apt-get first on PATH records any call to it.
    spy = tmp_path / "bin"
    spy.mkdir()
    (spy / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "apt-called"}\nexit 100\n')
    (spy / "apt-get").chmod(0o755)
    env["PATH"] = os.pathsep.join(
        [
            str(spy),
            *(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO))),
        ]
    )
    proc = subprocess.run(
        ["./dev", "demo"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    steps = ("MatrixOS demo", "1. Sample data", "2. Load", "5. MERGE", "8. Polars", "done")
    positions = [proc.stdout.find(s) for s in steps]
    assert -1 not in positions and positions == sorted(positions), proc.stdout[-3000:]
    assert "Next" in proc.stdout and "mx.connect(" in proc.stdout
    # Progress while installing: the phase, then pip's own lines.
    assert "installing matrixos (base package" in proc.stderr
    assert "Successfully installed" in proc.stderr
    assert "installing duckdb==1.4.4" in proc.stdout  # the generator's venv, built once
    assert not (tmp_path / "apt-called").exists()

    # The data went to the documented cache, under the (fresh) home.
    cache = home / ".cache" / "matrixos" / "tpch"
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [
        "sf0.01",
        f"venv-duckdb-1.4.4-py{sys.version_info.major}{sys.version_info.minor}",
    ]
    # Only the base package: none of the test toolchain.
    [site] = (clone / ".venv" / "lib").glob("python3*/site-packages")
    for heavy in ("torch", "ray", "mypy", "moto", "pytest", "sentence_transformers"):
        assert not (site / heavy).exists(), heavy
    assert (clone / "warehouse").is_dir()
