"""Alembic's entry point for llmos.db: runs the migrations on the connection that
`db.migrate` passes in (or on the configured URL when Alembic's own command line is used)."""

from alembic import context
from sqlalchemy import create_engine

config = context.config


def run(connection) -> None:
    context.configure(connection=connection, render_as_batch=True)  # batch: SQLite ALTERs
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url")).begin() as conn:
        run(conn)
