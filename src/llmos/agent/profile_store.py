"""Profiles kept in the database: made and edited in the web UI (`/profiles` of `llmos serve`),
or imported from a TOML file (`llmos profile import`), and exported back to one.

    store = ProfileStore.open("llmos.db")
    store.save(profiles.load("my-helper.toml"))      # ProfileExists if the name is taken
    store.get("my-helper").to_toml()                 # the file again
    store.rename("my-helper", profile)               # an edit that may change the name
    find("my-helper", "llmos.db")                    # a file, a shipped name or a stored one

A stored profile is the same fields as its TOML file (as JSON), checked by `profiles.parse`
whenever it is written and whenever it is read back.
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from llmos import db
from llmos.agent.profiles import Profile, ProfileError, load, parse, shipped

_meta = sa.MetaData()
table = sa.Table("profiles", _meta, sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("name", sa.String(64)), sa.Column("body", sa.Text),
                 sa.Column("created", sa.Float), sa.Column("updated", sa.Float))


class ProfileExists(ProfileError):
    """A profile of that name is stored already (import it with replace, or rename it)."""


def _parsed(name: str, body: str) -> Profile:
    where = f"profile {name!r} in the database"
    try:
        data = json.loads(body)
    except ValueError as e:
        raise ProfileError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: not a table of fields")
    return parse(data, where)


class ProfileStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url, must_exist: bool = False) -> ProfileStore:
        return cls(db.open_database(url, must_exist))

    def names(self) -> list[str]:
        with self.engine.connect() as c:
            return list(c.execute(sa.select(table.c.name).order_by(table.c.name)).scalars())

    def get(self, name: str) -> Profile | None:
        with self.engine.connect() as c:
            body = c.execute(sa.select(table.c.body).where(table.c.name == name)).scalar()
        return None if body is None else _parsed(name, body)

    def all(self) -> list[Profile]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(table.c.name, table.c.body).order_by(table.c.name))
            return [_parsed(name, body) for name, body in rows]

    def save(self, profile: Profile, replace: bool = False) -> bool:
        """Store a new profile, or (with replace) overwrite the one of its name. True when
        it was new."""
        return self.rename(profile.name, profile, replace=replace, create=True)

    def rename(self, old: str, profile: Profile, replace: bool = True,
               create: bool = False) -> bool:
        """Write `profile` over the one stored as `old` (an edit, which may rename it). A new
        name taken by another profile is refused: that one is not overwritten. With create,
        `old` need not exist. True when nothing was stored under `old` before."""
        body = json.dumps(profile.to_dict(), ensure_ascii=False)
        now = time.time()
        try:
            with self.engine.begin() as c:
                ids = dict(c.execute(sa.select(table.c.name, table.c.id).where(
                    table.c.name.in_([old, profile.name]))).all())
                if profile.name != old and profile.name in ids:
                    raise ProfileExists(f"a profile named {profile.name!r} is stored already")
                if old in ids and not replace:
                    raise ProfileExists(f"a profile named {old!r} is stored already")
                if old not in ids:
                    if not create:
                        raise ProfileError(f"no profile {old!r} in the database")
                    c.execute(sa.insert(table).values(name=profile.name, body=body,
                                                      created=now, updated=now))
                    return True
                c.execute(sa.update(table).where(table.c.id == ids[old]).values(
                    name=profile.name, body=body, updated=now))
                return False
        except sa.exc.IntegrityError as e:  # the same name saved at the same moment
            raise ProfileExists(f"a profile named {profile.name!r} is stored already") from e

    def delete(self, name: str) -> bool:
        with self.engine.begin() as c:
            return c.execute(sa.delete(table).where(table.c.name == name)).rowcount > 0


def find(spec: str, database: str | None = None) -> Profile:
    """A profile by file path, shipped name, or (given a database) the name of one stored
    there."""
    try:
        return load(spec)
    except ProfileError:
        if database is None or spec.endswith(".toml"):
            raise
    store = ProfileStore.open(database, must_exist=True)
    stored = store.get(spec)
    if stored is None:
        raise ProfileError(f"no profile {spec!r}: give a .toml file, one of: "
                           f"{', '.join(shipped()) or 'none'}, or one stored in {database}: "
                           f"{', '.join(store.names()) or 'none'}")
    return stored
