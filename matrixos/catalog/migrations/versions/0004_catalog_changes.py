"""mx_catalog_changes: a counter every change of names, policies or grants moves (triggers).

A process caches catalog rows and policies (``matrixos.catalog.cache``) and re-reads them only
when this one-row counter moved: one indexed read per statement instead of a query per table.
The triggers live in the database, so a change made by any process or release moves it. A
table's ``updated_at`` alone (``touch``, once per data commit) does not: no cached entry holds
anything that column decides.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from matrixos.catalog.migrations import create_table

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Table → the columns whose UPDATE counts (None: every UPDATE).
_WATCHED: dict[str, tuple[str, ...] | None] = {
    "mx_tables": (
        "catalog",
        "schema",
        "name",
        "format",
        "location",
        "external",
        "comment",
        "properties",
        "owner",
        "created_at",
    ),
    "mx_schemas": None,
    "mx_volumes": None,
    "mx_policies": None,
    "mx_grants": None,
    "mx_members": None,
    "mx_accounts": None,
}


def upgrade() -> None:
    create_table(
        "mx_catalog_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("n", sa.BigInteger, nullable=False),
    )
    bind = op.get_bind()
    bind.execute(
        sa.text(
            "INSERT INTO mx_catalog_changes (id, n) SELECT 1, 0 "
            "WHERE NOT EXISTS (SELECT 1 FROM mx_catalog_changes WHERE id = 1)"
        )
    )
    bump = "UPDATE mx_catalog_changes SET n = n + 1 WHERE id = 1"
    if bind.dialect.name == "postgresql":
        bind.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION mx_count_catalog_change() RETURNS trigger AS $$ "
                f"BEGIN {bump}; RETURN NULL; END $$ LANGUAGE plpgsql"
            )
        )
        for table, columns in _WATCHED.items():
            update = "UPDATE" if columns is None else "UPDATE OF " + ", ".join(_q(columns))
            bind.execute(sa.text(f"DROP TRIGGER IF EXISTS {table}_changes ON {table}"))
            bind.execute(
                sa.text(
                    f"CREATE TRIGGER {table}_changes AFTER INSERT OR DELETE OR {update} "
                    f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION mx_count_catalog_change()"
                )
            )
        return
    for table, columns in _WATCHED.items():
        events = {
            "insert": "INSERT",
            "delete": "DELETE",
            "update": "UPDATE" if columns is None else "UPDATE OF " + ", ".join(_q(columns)),
        }
        for suffix, event in events.items():
            bind.execute(
                sa.text(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_changes_{suffix} AFTER {event} "
                    f"ON {table} BEGIN {bump}; END"
                )
            )


def _q(columns: tuple[str, ...]) -> list[str]:
    return [f'"{c}"' for c in columns]
