"""Row filters and column masks (mx_policies), credits and billing (mx_credits_ledger,
mx_credit_balances, mx_billing_alerts), the usage outbox (mx_usage_outbox) and the compute OS's
jobs (mx_jobs, mx_reservations, mx_job_leases).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa

from matrixos.catalog.migrations import create_table

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    create_table(
        "mx_policies",
        sa.Column("table_name", sa.String(400), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("column_name", sa.String(256), primary_key=True),
        sa.Column("account", sa.String(256), primary_key=True),
        sa.Column("expression", sa.Text, nullable=False),
        sa.Column("cast_to", sa.Text),
        sa.Column("created_by", sa.String(256)),
        sa.Column("created_at", _TS, nullable=False),
    )
    create_table(
        "mx_credits_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("account", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("nano", sa.BigInteger, nullable=False),
        sa.Column("ref", sa.String(256)),
        sa.Column("by", sa.String(256)),
        sa.Column("at", _TS, nullable=False),
        sa.Column("note", sa.Text),
        indexes=("account",),
    )
    create_table(
        "mx_credit_balances",
        sa.Column("account", sa.String(256), primary_key=True),
        sa.Column("credited", sa.BigInteger, nullable=False),
        sa.Column("consumed", sa.BigInteger, nullable=False),
        sa.Column("balance", sa.BigInteger, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    create_table(
        "mx_billing_alerts",
        sa.Column("account", sa.String(256), primary_key=True),
        sa.Column("threshold", sa.Integer, primary_key=True),
        sa.Column("credited", sa.BigInteger, primary_key=True),
        sa.Column("consumed", sa.BigInteger, nullable=False),
        sa.Column("at", _TS, nullable=False),
    )
    create_table(
        "mx_usage_outbox",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("touched_at", _TS, nullable=False),
        sa.Column("reclaimed", sa.Boolean, nullable=False),
    )
    create_table(
        "mx_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(256)),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary),
        sa.Column("account", sa.String(256), nullable=False),
        sa.Column("principal", sa.String(256), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("submitted_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("nodes", sa.Text),
        sa.Column("placement_group", sa.String(128)),
        sa.Column("log_path", sa.Text),
        sa.Column("position", sa.Integer),
        sa.Column("eta", sa.Float),
        sa.Column("degrees", sa.Float, nullable=False),
        sa.Column("scheduler", sa.String(64)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("result", sa.LargeBinary),
        sa.Column("updated_at", sa.Float, nullable=False),
        indexes=("account", "principal", "state"),
    )
    create_table(
        "mx_reservations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account", sa.String(256), nullable=False),
        sa.Column("principal", sa.String(256), nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("cpus", sa.Float, nullable=False),
        sa.Column("accelerator", sa.String(64)),
        sa.Column("start", sa.Float, nullable=False),
        sa.Column("end", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    create_table(
        "mx_job_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
