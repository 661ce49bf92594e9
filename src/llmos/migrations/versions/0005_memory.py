"""Memory (`remember` / `recall`, `llmos memory`): facts the model saved about a user, kept
across conversations and restarts, listed and deleted by the user.

Revision ID: 0005_memory
Revises: 0001_base
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_memory"
down_revision = "0001_base"
branch_labels = ("memory",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "memories",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False, index=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.UniqueConstraint("owner", "text"))


def downgrade() -> None:
    op.drop_table("memories")
