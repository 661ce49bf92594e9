"""llmos's database (arena battles, labeling projects, knowledge bases, memories): SQLAlchemy
over a SQLite file by default or PostgreSQL by URL, with the schema kept by Alembic migrations.

    engine = db.open_database("sqlite:///llmos.db")   # creates / upgrades the schema
    with db.session(engine) as s: ...                  # one transaction, committed on success

Each part owns a branch of migrations (`migrations/versions/`, branch labels `arena`,
`labels`, `knowledge`, `memory`) that starts from the shared base revision, so the parts grow
their tables independently and `upgrade heads` brings every branch up to date. A SQLite file
runs in WAL mode with a busy timeout, so two writers at once wait for each other instead of
failing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
DEFAULT_URL = "sqlite:///llmos.db"


class Base(DeclarativeBase):
    """The ORM base every table of the app derives from (the schema itself comes from the
    migrations; `tests/test_db.py` checks the two agree)."""


def database_url(url_or_path: str | Path) -> str:
    """A SQLAlchemy URL; a bare path means a SQLite file there."""
    s = str(url_or_path)
    return s if "://" in s else f"sqlite:///{Path(s).expanduser().resolve()}"


def connect(url: str) -> Engine:
    """An engine for `url` (no schema changes). PostgreSQL needs the `psycopg` package."""
    url = database_url(url)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as e:
        raise RuntimeError(f"the database URL {url!r} needs the Python package {e.name!r}: "
                           f"pip install 'psycopg[binary]'") from e
    if engine.dialect.name == "sqlite":
        if engine.url.database not in (None, "", ":memory:"):
            Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA busy_timeout=10000")  # a second writer waits up to 10 s
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    return engine


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def migrate(engine: Engine, target: str = "heads") -> None:
    """Bring the schema up to `target` (default: the newest revision of every branch)."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, target)


def current_revisions(engine: Engine) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


class DatabaseMissing(ValueError):
    """A command that only reads was given a SQLite file that is not there."""


def open_database(url: str | Path = DEFAULT_URL, must_exist: bool = False) -> Engine:
    """Connect and migrate: the one call a server or a command makes at start. With
    must_exist, a SQLite file that is not there is an error instead of a new, empty database
    (a command that only reads was most likely given a mistyped path)."""
    if must_exist:
        url = database_url(url)
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        if path and path != ":memory:" and not Path(path).is_file():
            raise DatabaseMissing(f"no database at {path}")
    engine = connect(str(url))
    migrate(engine)
    return engine


@contextlib.contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    maker = sessionmaker(engine, expire_on_commit=False)
    with maker.begin() as s:
        yield s
