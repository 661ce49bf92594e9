"""Profiles (custom GPTs) made in the web UI or imported with `llmos profile import`: one row per
profile, its fields as JSON (the same fields as a profile's TOML file).

Revision ID: 0006_profiles
Revises: 0001_base
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_profiles"
down_revision = "0001_base"
branch_labels = ("profiles",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False))


def downgrade() -> None:
    op.drop_table("profiles")
