"""The web pages' database: migrations on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading

from sqlalchemy import inspect, text

from llmos import db


def test_open_database_migrates_every_branch_and_is_idempotent(database_url):
    engine = db.open_database(database_url)
    heads = db.current_revisions(engine)
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(db.alembic_config(engine))
    assert heads == set(script.get_heads())  # every branch is at its newest revision
    db.open_database(database_url)  # a restart migrates nothing and loses nothing
    assert db.current_revisions(engine) == heads
    assert "alembic_version" in inspect(engine).get_table_names()
    engine.dispose()


def test_concurrent_writers_all_land(database_url):
    engine = db.open_database(database_url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE t_writes (id INTEGER PRIMARY KEY, who VARCHAR(20))"))
    errors = []

    def write(who):
        try:
            for i in range(20):
                with db.session(engine) as s:
                    s.execute(text("INSERT INTO t_writes (id, who) VALUES (:i, :w)"),
                              {"i": who * 100 + i, "w": str(who)})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with engine.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM t_writes")).scalar() == 80
    engine.dispose()


def test_a_bare_path_is_a_sqlite_file(tmp_path):
    assert db.database_url(tmp_path / "x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert db.database_url("postgresql://u@h/d") == "postgresql://u@h/d"
