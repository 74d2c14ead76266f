"""Baseline: catalogs, schemas, tables, volumes, accounts, members, grants, tokens, passwords
(the catalog database of the first release).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa

from matrixos.catalog.migrations import create_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    create_table(
        "mx_catalogs",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", _TS, nullable=False),
    )
    create_table(
        "mx_schemas",
        sa.Column("catalog", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("comment", sa.Text),
        sa.Column("owner", sa.String(256)),
        sa.Column("created_at", _TS, nullable=False),
    )
    create_table(
        "mx_tables",
        sa.Column("catalog", sa.String(128), primary_key=True),
        sa.Column("schema", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("location", sa.Text, nullable=False),
        sa.Column("external", sa.Boolean, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("properties", sa.Text, nullable=False),
        sa.Column("owner", sa.String(256)),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    create_table(
        "mx_volumes",
        sa.Column("catalog", sa.String(128), primary_key=True),
        sa.Column("schema", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("location", sa.Text, nullable=False),
        sa.Column("external", sa.Boolean, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("owner", sa.String(256)),
        sa.Column("created_at", _TS, nullable=False),
    )
    create_table(
        "mx_accounts",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    create_table(
        "mx_members",
        sa.Column("group_name", sa.String(256), primary_key=True),
        sa.Column("member", sa.String(256), primary_key=True),
    )
    create_table(
        "mx_grants",
        sa.Column("grantee", sa.String(256), primary_key=True),
        sa.Column("privilege", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("securable", sa.String(400), primary_key=True),
        sa.Column("granted_by", sa.String(256)),
        sa.Column("created_at", _TS, nullable=False),
    )
    create_table(
        "mx_tokens",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account", sa.String(256), nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS),
        sa.Column("revoked_at", _TS),
        sa.Column("last_used_at", _TS),
        indexes=("account",),
    )
    create_table(
        "mx_passwords",
        sa.Column("account", sa.String(256), primary_key=True),
        sa.Column("verifier", sa.Text, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
