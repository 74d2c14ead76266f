"""mx_tokens.last_used_from: the client address of a token's last use.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa

from matrixos.catalog.migrations import add_column

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_column("mx_tokens", sa.Column("last_used_from", sa.String(64)))
