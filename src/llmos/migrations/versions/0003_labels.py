"""The labeling app's tables: accounts and login sessions, projects, queued prompt items,
candidate answers, labels (one per item, labeler and kind) and their earlier revisions.

Revision ID: 0003_labels
Revises: 0001_base
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_labels"
down_revision = "0001_base"
branch_labels = ("labels",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "label_users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created", sa.Float, nullable=False))
    op.create_table(
        "label_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("label_users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False))
    op.create_table(
        "label_projects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("instructions", sa.Text, nullable=False),
        sa.Column("overlap", sa.Integer, nullable=False),
        sa.Column("answers", sa.Integer, nullable=False),
        sa.Column("created", sa.Float, nullable=False))
    op.create_table(
        "label_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer,
                  sa.ForeignKey("label_projects.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("prompt", sa.JSON, nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("given", sa.JSON, nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.UniqueConstraint("project_id", "prompt_hash"))
    op.create_table(
        "label_answers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("label_items.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.UniqueConstraint("item_id", "position"))
    op.create_table(
        "label_labels",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("label_items.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("label_users.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=True),
        sa.Column("draft", sa.Text, nullable=True),
        sa.Column("ranking", sa.JSON, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("critique", sa.Text, nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.UniqueConstraint("item_id", "user_id", "kind"))
    op.create_table(
        "label_revisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("label_id", sa.Integer, sa.ForeignKey("label_labels.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("content", sa.Text, nullable=True),
        sa.Column("ranking", sa.JSON, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("critique", sa.Text, nullable=True),
        sa.Column("created", sa.Float, nullable=False))


def downgrade() -> None:
    for table in ("label_revisions", "label_labels", "label_answers", "label_items",
                  "label_projects", "label_sessions", "label_users"):
        op.drop_table(table)
