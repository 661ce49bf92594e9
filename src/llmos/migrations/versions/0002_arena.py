"""The arena's table: one row per battle shown in the browser; a vote fills in its winner.

Revision ID: 0002_arena
Revises: 0001_base
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_arena"
down_revision = "0001_base"
branch_labels = ("arena",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "arena_battles",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("model_a", sa.String(200), nullable=False),
        sa.Column("model_b", sa.String(200), nullable=False),
        sa.Column("winner", sa.String(20), nullable=True),
        sa.Column("judge", sa.String(64), nullable=True),
        sa.Column("voter", sa.String(64), nullable=False),
        sa.Column("client", sa.String(32), nullable=True),
        sa.Column("conversation_a", sa.JSON(), nullable=True),
        sa.Column("conversation_b", sa.JSON(), nullable=True),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("anony", sa.Boolean(), nullable=False),
        sa.Column("tstamp", sa.Float(), nullable=False),
        sa.Column("voted_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_arena_battles_voter", "arena_battles", ["voter"])
    op.create_index("ix_arena_battles_voted_at", "arena_battles", ["voted_at"])


def downgrade() -> None:
    op.drop_index("ix_arena_battles_voted_at", table_name="arena_battles")
    op.drop_index("ix_arena_battles_voter", table_name="arena_battles")
    op.drop_table("arena_battles")
