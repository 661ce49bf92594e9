"""Knowledge bases (`llmos knowledge`): named bases, the source files read into each (with a
fingerprint, so an unchanged file is not read again), and their chunks with an embedding vector.
The keyword index is SQLite FTS5 over the chunks (kept in step by triggers), or on PostgreSQL a
generated tsvector column with a GIN index (a title's dots and underscores read as spaces, as
FTS5 reads them, so "json.dumps" is found by "dumps").

Revision ID: 0004_knowledge
Revises: 0001_base
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_knowledge"
down_revision = "0001_base"
branch_labels = ("knowledge",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "knowledge_bases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("embedder", sa.String(64), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False))
    op.create_table(
        "knowledge_sources",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("base_id", sa.Integer, sa.ForeignKey("knowledge_bases.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("chunks", sa.Integer, nullable=False),
        sa.Column("added", sa.Float, nullable=False),
        sa.UniqueConstraint("base_id", "name"))
    op.create_table(
        "knowledge_chunks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("base_id", sa.Integer, sa.ForeignKey("knowledge_bases.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("source_id", sa.Integer,
                  sa.ForeignKey("knowledge_sources.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=True))  # float16, unit length
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE knowledge_chunks ADD COLUMN search tsvector GENERATED ALWAYS AS "
                   "(setweight(to_tsvector('english', translate(title, '._', '  ')), 'A') || "
                   "to_tsvector('english', text)) STORED")
        op.execute("CREATE INDEX knowledge_chunks_search ON knowledge_chunks USING GIN (search)")
    else:
        # External-content FTS5: the text lives once, in knowledge_chunks.
        op.execute("CREATE VIRTUAL TABLE knowledge_fts USING fts5(title, text, "
                   "content='knowledge_chunks', content_rowid='id')")
        op.execute("CREATE TRIGGER knowledge_chunks_ai AFTER INSERT ON knowledge_chunks BEGIN "
                   "INSERT INTO knowledge_fts(rowid, title, text) "
                   "VALUES (new.id, new.title, new.text); END")
        op.execute("CREATE TRIGGER knowledge_chunks_ad AFTER DELETE ON knowledge_chunks BEGIN "
                   "INSERT INTO knowledge_fts(knowledge_fts, rowid, title, text) "
                   "VALUES ('delete', old.id, old.title, old.text); END")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute("DROP TABLE IF EXISTS knowledge_fts")
    op.drop_table("knowledge_chunks")
    op.drop_table("knowledge_sources")
    op.drop_table("knowledge_bases")
