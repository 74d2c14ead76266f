"""Versioned migrations of the catalog database (alembic), run from the package.

Every change to the catalog database's tables is a revision under ``versions/``: a database made
by any earlier release (with or without an ``alembic_version`` table) is brought to the newest
revision when a catalog opens it (:func:`upgrade`), and a new database is made by running every
revision from the first. No ``alembic.ini`` is needed: the revisions are found beside this file.

Each revision's operations check first (a table or a column is made only when missing), so a
database made before migrations existed (``create_all`` plus ad-hoc column additions) and two
processes opening one new database at the same moment both end at the same schema.

Example:
    >>> import sqlalchemy as sa
    >>> engine = sa.create_engine("sqlite://")
    >>> upgrade(engine) == head_revision()
    True
    >>> current_revision(engine) == head_revision()
    True
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from matrixos.errors import StorageError

__all__ = [
    "VERSION_TABLE",
    "add_column",
    "create_table",
    "current_revision",
    "head_revision",
    "upgrade",
]

_HERE = Path(__file__).resolve().parent
_ATTEMPTS = 5
#: alembic's table holding the revision a database is at.
VERSION_TABLE = "alembic_version"


@functools.cache
def _script() -> Any:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(_HERE))
    return config, ScriptDirectory.from_config(config)


@functools.cache
def _revisions() -> dict[str, str | None]:
    """Each revision's predecessor, read from the files (without importing alembic)."""
    chain: dict[str, str | None] = {}
    for path in sorted((_HERE / "versions").glob("*.py")):
        text = path.read_text()
        rev = re.search(r'^revision = "([^"]+)"', text, re.M)
        down = re.search(r'^down_revision = (?:"([^"]+)"|None)', text, re.M)
        if rev and down:
            chain[rev.group(1)] = down.group(1)
    return chain


def head_revision() -> str:
    """The newest revision id (the schema this version of MatrixOS writes)."""
    chain = _revisions()
    heads = set(chain) - set(chain.values())
    if len(heads) != 1:
        raise StorageError(f"the catalog migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def current_revision(engine: sa.Engine) -> str | None:
    """The revision a database is at; ``None`` when it has none (new, or made before
    migrations existed)."""
    # Plain SQL, not alembic: opening a database that is up to date imports nothing more.
    for attempt in range(2):
        try:
            with engine.connect() as conn:
                rev = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        except (OperationalError, ProgrammingError):
            if not sa.inspect(engine).has_table(VERSION_TABLE):
                return None
            if attempt:
                raise  # the database failed, not the lookup
            # (another process's migration made the table between the two: read it again)
            continue
        return None if rev is None else str(rev)
    raise AssertionError("unreachable")  # pragma: no cover


def upgrade(engine: sa.Engine, revision: str = "head") -> str:
    """Bring the database to ``revision`` (default: the newest) and return the revision it is at.

    Cheap when the database is already there (one query). Several processes may call it at once
    on one database: a loser of a race (a table or the version row made by another) retries.
    Raises ``StorageError`` when the database is newer than this version knows.
    """
    target = head_revision() if revision == "head" else revision
    current = current_revision(engine)  # a database that cannot be reached fails here
    last: Exception | None = None
    for attempt in range(_ATTEMPTS):
        if current == target:
            return target
        if current is not None and current not in _revisions():
            raise StorageError(
                f"the catalog database is at revision {current!r}, which this version of "
                "MatrixOS does not know (it was written by a newer release)",
                hint="upgrade MatrixOS (pip install -U matrixos) on every machine",
            )
        try:
            _run(engine, target)
            return target
        except (IntegrityError, OperationalError, ProgrammingError) as e:
            last = e  # another process migrated at the same moment: look again
            time.sleep(0.05 * (attempt + 1))
            current = current_revision(engine)
    raise StorageError(f"cannot migrate the catalog database: {last}") from last


def _run(engine: sa.Engine, target: str) -> None:
    from alembic.runtime.environment import EnvironmentContext

    config, script = _script()

    def steps(rev: Any, _context: Any) -> Any:
        return script._upgrade_revs(target, rev)

    with (
        engine.begin() as conn,
        EnvironmentContext(config, script, fn=steps, destination_rev=target) as env,
    ):
        if conn.dialect.name == "postgresql":
            # One migrator at a time per database; the others wait, then find it done.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7326151)"))
        env.configure(connection=conn, target_metadata=None)
        with env.begin_transaction():
            env.run_migrations()


# -- helpers for revisions: operations that check first ------------------------------------------
def create_table(name: str, *columns: sa.Column[Any], indexes: tuple[str, ...] = ()) -> None:
    """``op.create_table`` unless the table exists; ``indexes`` names columns that get a
    non-unique index ``ix_<table>_<column>`` (SQLAlchemy's ``index=True`` naming)."""
    from alembic import op

    bind = op.get_bind()
    if not sa.inspect(bind).has_table(name):
        op.create_table(name, *columns)
    present = {i["name"] for i in sa.inspect(bind).get_indexes(name)}
    for column in indexes:
        index = f"ix_{name}_{column}"
        if index not in present:
            op.create_index(index, name, [column])


def add_column(table: str, column: sa.Column[Any]) -> None:
    """``op.add_column`` unless the table has the column already."""
    from alembic import op

    if column.name not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}:
        op.add_column(table, column)
