"""TPC-H sample data for the demo and the benchmark: generate it once, cache it, load it.

The data comes from ``shared/tools/gen_tpch.sh`` (DuckDB 1.4.4 + the ``duckdb-ext-tpch`` wheel in a
venv of its own, installed from PyPI the first time), which writes::

    OUT/parquet/<table>/part-0.parquet   OUT/queries/qNN.sql   OUT/answers_sf<SF>/qNN.csv

Generation goes to a sibling temporary folder that is renamed into place only when complete, so
an interrupted run never leaves a half-written cache behind and concurrent runs do not collide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matrixos.catalog import TableIdent
from matrixos.errors import MatrixOSError

if TYPE_CHECKING:
    from matrixos.session import Lakehouse

TABLES = ("lineitem", "orders", "partsupp", "part", "customer", "supplier", "nation", "region")
QUERIES = tuple(range(1, 23))
_SCRIPT_ENV = "MATRIXOS_TPCH_GEN"  # read here only, not a Settings field


class TpchError(MatrixOSError, RuntimeError):
    """The TPC-H generator could not be found or did not finish."""


@dataclass(frozen=True)
class TpchData:
    """A generated TPC-H data set on local disk."""

    root: Path
    scale: float

    def parquet(self, table: str) -> Path:
        return self.root / "parquet" / table / "part-0.parquet"

    def query(self, n: int) -> str:
        """The text of query ``n`` (DuckDB's standard TPC-H texts, unqualified table names)."""
        return (self.root / "queries" / f"q{n:02d}.sql").read_text()

    @property
    def answers_dir(self) -> Path:
        return self.root / f"answers_sf{self.scale:g}"

    def answer(self, n: int) -> Path | None:
        """The reference answer of query ``n`` (pipe-separated CSV), when DuckDB ships one."""
        p = self.answers_dir / f"q{n:02d}.csv"
        return p if p.exists() else None

    def num_rows(self, table: str) -> int:
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(self.parquet(table)).metadata.num_rows)

    def complete(self) -> bool:
        return all(self.parquet(t).exists() for t in TABLES) and all(
            (self.root / "queries" / f"q{n:02d}.sql").exists() for n in QUERIES
        )


def default_venv() -> Path:
    """Where the generator's own venv is kept between runs (it takes a minute to build)."""
    return Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / "matrixos-tpchgen-venv"


def default_cache() -> Path:
    return Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / "matrixos-tpch"


def find_generator() -> Path:
    """``gen_tpch.sh``: ``$MATRIXOS_TPCH_GEN``, else ``<repo>/../shared/tools/gen_tpch.sh``."""
    env = os.environ.get(_SCRIPT_ENV)
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[1]
    candidates += [
        repo.parent / "shared" / "tools" / "gen_tpch.sh",
        repo / "shared/tools/gen_tpch.sh",
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise TpchError(
        "cannot find the TPC-H generator gen_tpch.sh (looked at "
        + ", ".join(str(c) for c in candidates)
        + ")",
        hint=f"set {_SCRIPT_ENV}=/path/to/gen_tpch.sh",
    )


def generate(
    out_dir: str | os.PathLike[str],
    scale: float = 0.01,
    *,
    venv: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> TpchData:
    """TPC-H at ``scale`` in ``out_dir``, generated unless a complete copy is already there.

    Raises ``TpchError`` (with the generator's last output lines) when generation fails, e.g.
    because PyPI cannot be reached to install ``duckdb==1.4.4`` and ``duckdb-ext-tpch``.
    """
    out = Path(out_dir).resolve()
    data = TpchData(out, scale)
    if data.complete():
        return data
    script = find_generator()
    bash = shutil.which("bash")
    if bash is None:
        raise TpchError("the TPC-H generator needs bash, which is not on PATH")
    venv_dir = Path(venv) if venv is not None else default_venv()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    if log:
        log(f"generating TPC-H sf={scale:g} with {script.name} (venv {venv_dir}) …")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [bash, str(script), str(tmp), f"{scale:g}", str(venv_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not TpchData(tmp, scale).complete():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise TpchError(
                f"TPC-H generation failed (exit {proc.returncode}):\n{tail}",
                hint="gen_tpch.sh installs duckdb==1.4.4 and duckdb-ext-tpch from PyPI into "
                f"{venv_dir} on first use: check network access to PyPI (or pip's index "
                "settings), or build that venv once on a machine that has it",
            )
        try:
            tmp.rename(out)
        except OSError:
            if not data.complete():  # not another run that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if log:
        log(f"generated in {time.perf_counter() - t0:.1f}s")
    return data


def load(
    lh: Lakehouse,
    data: TpchData,
    schema: str = "default",
    *,
    tables: Iterable[str] = TABLES,
    replace: bool = False,
) -> dict[str, int]:
    """Load the Parquet tables into ``schema``; returns rows per table.

    With ``replace`` every table is overwritten (a new version); otherwise a table that already
    holds the expected number of rows is kept and any other is overwritten.
    """
    import pyarrow.parquet as pq

    rows: dict[str, int] = {}
    for name in tables:
        full = f"{schema}.{name}"
        want = data.num_rows(name)
        exists = lh.catalog.find_table(TableIdent.parse(full)) is not None
        if not replace and exists and lh.table(full).count() == want:
            rows[name] = want
            continue
        t = lh.create_table(full, pq.read_table(data.parquet(name)), mode="overwrite")
        rows[name] = t.count()
    return rows


def load_split(lh: Lakehouse, data: TpchData, files: int) -> None:
    """Load every table into the default schema as ``files`` Delta files each (one commit per
    file; tables of at most 1,000 rows as one file), so distributed scans split into
    fragments."""
    import pyarrow.parquet as pq

    for name in TABLES:
        rows = pq.read_table(data.parquet(name))
        parts = files if rows.num_rows > 1000 else 1
        step = -(-rows.num_rows // parts)
        for i in range(parts):
            part = rows.slice(i * step, step)
            if i == 0:
                lh.create_table(name, part, mode="overwrite")
            else:
                lh.table(name).append(part)
