"""mx_catalog_changes also moves when a token is revoked, expires sooner or is deleted.

A server keeps the principal of each token it checked (``matrixos.server.http_auth``) and
checks the token again only when this counter moved: a revoke made by any process counts at
the next request. A token's ``last_used_at``/``last_used_from`` (written on every check) and a
new token do not move it: no cached value holds anything they decide.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_COLUMNS = ("account", "expires_at", "revoked_at")


def upgrade() -> None:
    bind = op.get_bind()
    # A token's row is written whole on every use: only a change of these columns counts.
    pg = bind.dialect.name == "postgresql"
    differs = " OR ".join(
        f"OLD.{c} IS DISTINCT FROM NEW.{c}" if pg else f"OLD.{c} IS NOT NEW.{c}" for c in _COLUMNS
    )
    if pg:
        # mx_count_catalog_change() is revision 0004's.
        for name, event in (
            ("mx_tokens_changes", "AFTER DELETE ON mx_tokens FOR EACH STATEMENT"),
            ("mx_tokens_changes_update",
             f"AFTER UPDATE ON mx_tokens FOR EACH ROW WHEN ({differs})"),
        ):  # fmt: skip
            bind.execute(sa.text(f"DROP TRIGGER IF EXISTS {name} ON mx_tokens"))
            bind.execute(
                sa.text(f"CREATE TRIGGER {name} {event} EXECUTE FUNCTION mx_count_catalog_change()")
            )
        return
    bump = "UPDATE mx_catalog_changes SET n = n + 1 WHERE id = 1"
    for suffix, event in (("delete", "DELETE ON mx_tokens"),
                          ("update", f"UPDATE ON mx_tokens WHEN {differs}")):  # fmt: skip
        bind.execute(
            sa.text(
                f"CREATE TRIGGER IF NOT EXISTS mx_tokens_changes_{suffix} AFTER {event} "
                f"BEGIN {bump}; END"
            )
        )
