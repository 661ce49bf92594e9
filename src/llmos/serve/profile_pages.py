"""The profile editor of `llmos serve --db URL`: custom GPTs made, edited, duplicated, deleted,
exported and imported in the web UI (`/profiles`), stored in the database
(agent/profile_store.py) and served at once as models of their own names:

    GET    /v1/llmos/profiles                 every profile: stored, from a file, or not served
    GET    /v1/llmos/profiles/{name}          {"profile": {...the TOML fields...}, "source"}
    POST   /v1/llmos/profiles                 create (409 if the name is taken)
    PUT    /v1/llmos/profiles/{name}          edit a stored one (its new name may differ)
    DELETE /v1/llmos/profiles/{name}          delete a stored one
    GET    /v1/llmos/profiles/{name}/export   its TOML file
    POST   /v1/llmos/profiles/import          a TOML file as the body, Content-Type
                                              application/toml (?replace=true)
    GET    /v1/llmos/profile_options          tools, knowledge bases, served checkpoints

A profile is checked (agent/profiles.parse) and made ready to serve (its checkpoint loaded, its
knowledge bases opened) before it is stored, so a stored profile that is not served says why.
Profiles given on the command line (--profile FILE) are shown and may be duplicated, not edited.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from llmos.agent import profiles
from llmos.agent.knowledge import list_bases
from llmos.agent.profile_store import ProfileExists, ProfileStore
from llmos.agent.tools import SIDE_EFFECTS
from llmos.serve.openai_schema import APIError
from llmos.serve.served import ServedModel, add_profiles, schedulers

STATIC = Path(__file__).with_name("static")
MAX_TOML_BYTES = 64 * 1024


class ProfileHost:
    """The served-model table's profiles from the database: serves, replaces and removes them
    as they are edited (one edit at a time)."""

    def __init__(self, models: dict[str, ServedModel], store: ProfileStore, database,
                 device: str = "cpu", max_batch: int = 16, tools: bool = True,
                 llamacpp=None):
        self.models, self.store, self.database = models, store, database
        self.device, self.max_batch = device, max_batch
        self.llamacpp = llamacpp  # infer/llamacpp.py's options: new profiles decode there too
        self.tools = tools  # False: `llmos serve --no-tools`, which holds for profiles too
        self.problems: dict[str, str] = {}  # stored profiles that could not be served: why
        self.installed: set[str] = set()  # the served names that are this host's profiles
        self.lock = threading.Lock()

    def start(self) -> None:
        """Serve every stored profile a file profile or checkpoint does not already name."""
        for name in self.store.names():
            try:
                p = self.store.get(name)
            except ValueError as e:  # stored by another llmos, or edited by hand
                self.problems[name] = f"not served: {e}"
                continue
            if p.name in self.models:
                self.problems[p.name] = ("not served: a checkpoint or profile file of this "
                                         "name is served instead")
                continue
            try:
                self._install(self._prepare(p, None), None)
            except ValueError as e:
                self.problems[p.name] = f"not served: {e}"
                print(f"profile {p.name!r} in the database is not served: {e}")

    def stored(self, name: str) -> bool:
        return self.store.get(name) is not None

    def _served_stored(self, name: str) -> str | None:
        """`name` when the model of that name is a profile this host serves (not a file's or
        a checkpoint, whatever the database says meanwhile)."""
        return name if name in self.installed and name in self.models else None

    def _prepare(self, p: profiles.Profile, old: str | None) -> ServedModel:
        """`p` ready to serve in place of `old` (None: a new one), not yet served. Raises
        ValueError, and changes nothing, when it cannot be served."""
        trial = {k: v for k, v in self.models.items() if k != old}
        add_profiles(trial, [p], self.device, self.max_batch, self.database, self.llamacpp)
        if not self.tools:
            trial[p.name].tools, trial[p.name].memory = {}, None
        return trial[p.name]

    def _install(self, served: ServedModel, old: str | None) -> None:
        before = self.models.pop(old, None) if old else None
        self.installed.discard(old)
        self.models[served.name] = served
        self.installed.add(served.name)
        self.problems.pop(served.name, None)
        if old:
            self.problems.pop(old, None)
        self._close_unused(before)

    def _ready(self, p: profiles.Profile, old: str | None, write) -> None:
        """Serve `p` in place of `old` once `write()` has stored it; if it cannot be served or
        stored, nothing changes (what was loaded for it is let go)."""
        served = self._prepare(p, old)
        try:
            write()
        except BaseException:
            self._close_unused(served)
            raise
        self._install(served, old)

    def _close_unused(self, gone: ServedModel | None) -> None:
        if gone is not None and gone.scheduler not in schedulers(self.models):
            gone.scheduler.close()

    def _check_name(self, name: str, old: str | None) -> None:
        taken = self.models.get(name)
        if name != old and taken is not None and name not in self.installed:
            raise APIError(409, f"{name!r} is the name of a served model; choose another.",
                           "name", "name_taken")

    def create(self, p: profiles.Profile, replace: bool = False) -> None:
        with self.lock:
            exists = self.stored(p.name)
            if exists and not replace:
                raise APIError(409, f"a profile named {p.name!r} is stored already.", "name",
                               "name_taken")
            self._check_name(p.name, p.name if exists else None)
            self._ready(p, self._served_stored(p.name),
                        lambda: self.store.save(p, replace=replace))

    def update(self, old: str, p: profiles.Profile) -> None:
        with self.lock:
            if not self.stored(old):
                raise APIError(404, f"no profile {old!r} in the database (profiles from files "
                               "are not edited here: duplicate one).", "name",
                               "profile_not_found")
            if p.name != old and self.stored(p.name):
                raise APIError(409, f"a profile named {p.name!r} is stored already.", "name",
                               "name_taken")
            self._check_name(p.name, old)
            self._ready(p, self._served_stored(old), lambda: self.store.rename(old, p))

    def delete(self, name: str) -> None:
        with self.lock:
            if not self.store.delete(name):
                raise APIError(404, f"no profile {name!r} in the database.", "name",
                               "profile_not_found")
            if self._served_stored(name):
                self.installed.discard(name)
                self._close_unused(self.models.pop(name, None))
            self.problems.pop(name, None)

    def listing(self) -> list[dict]:
        stored = {}
        for name in self.store.names():
            try:
                stored[name] = self.store.get(name)
            except ValueError:
                stored[name] = profiles.Profile(name=name, model="?")
        rows = []
        for m in list(self.models.values()):
            if m.profile is not None:
                rows.append(_row(m.profile, "database" if m.name in self.installed else "file",
                                 True))
        for name, problem in self.problems.items():
            if name in stored:
                rows.append({**_row(stored[name], "database", False), "problem": problem})
        return sorted(rows, key=lambda r: r["name"])


def _row(p: profiles.Profile, source: str, served: bool) -> dict:
    return {"name": p.name, "description": p.description, "model": p.model, "tools": p.tools,
            "knowledge": p.knowledge, "source": source, "served": served}


def _parse(data: dict) -> profiles.Profile:
    try:
        return profiles.parse(data, "profile")
    except profiles.ProfileError as e:
        raise APIError(400, str(e), "profile", "invalid_profile") from e


def _serving_error(e: ValueError) -> APIError:
    if isinstance(e, ProfileExists):
        return APIError(409, str(e), "name", "name_taken")
    return APIError(400, str(e), "profile", "invalid_profile")


def mount_profiles(app: FastAPI, host: ProfileHost | None, models: dict, auth: list) -> None:
    def need() -> ProfileHost:
        if host is None:
            raise APIError(404, "This server stores no profiles: start it with --db.",
                           code="no_database")
        return host

    def find(name: str) -> tuple[profiles.Profile, str]:
        try:
            stored = need().store.get(name)
        except profiles.ProfileError as e:
            raise APIError(409, f"the stored profile cannot be read: {e}", "name",
                           "invalid_profile") from e
        if stored is not None:
            return stored, "database"
        m = models.get(name)
        if m is not None and m.profile is not None:
            return m.profile, "file"
        raise APIError(404, f"no profile {name!r}.", "name", "profile_not_found")

    async def guarded(work, *args):
        try:
            return await run_in_threadpool(work, *args)
        except ValueError as e:  # a profile that cannot be served: nothing was changed
            raise _serving_error(e) from e

    @app.get("/v1/llmos/profiles", dependencies=auth)
    def list_profiles():
        return {"data": need().listing()}

    @app.get("/v1/llmos/profile_options", dependencies=auth)
    def options():
        h = need()
        checkpoints = sorted({str(getattr(m.scheduler, "path", "")) for m in models.values()
                              if getattr(m.scheduler, "path", None)})
        tools = [{"name": n, "capability": profiles.CAPABILITIES[n],
                  "confirm": profiles.CAPABILITIES[n] in SIDE_EFFECTS}
                 for n in profiles.available_tools()]
        return {"tools": tools, "knowledge": list_bases(h.store.engine),
                "checkpoints": checkpoints}

    @app.get("/v1/llmos/profiles/{name}", dependencies=auth)
    def get_profile(name: str):
        p, source = find(name)
        return {"profile": p.to_dict(), "source": source}

    @app.post("/v1/llmos/profiles", dependencies=auth, status_code=201)
    async def create_profile(data: Annotated[dict, Body()]):
        p = _parse(data)
        await guarded(need().create, p)
        return {"profile": p.to_dict(), "source": "database"}

    @app.put("/v1/llmos/profiles/{name}", dependencies=auth)
    async def update_profile(name: str, data: Annotated[dict, Body()]):
        p = _parse(data)
        await guarded(need().update, name, p)
        return {"profile": p.to_dict(), "source": "database"}

    @app.delete("/v1/llmos/profiles/{name}", dependencies=auth)
    async def delete_profile(name: str):
        await guarded(need().delete, name)
        return {"deleted": True}

    @app.get("/v1/llmos/profiles/{name}/export", dependencies=auth)
    def export_profile(name: str):
        p, _ = find(name)
        return PlainTextResponse(p.to_toml(), media_type="application/toml", headers={
            "Content-Disposition": f'attachment; filename="{p.name}.toml"'})

    @app.post("/v1/llmos/profiles/import", dependencies=auth, status_code=201)
    async def import_profile(request: Request, replace: bool = Query(False)):
        # A page on another site can post a plain-text body here without asking the browser
        # first; it cannot send this content type without a CORS preflight, which is refused.
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/toml":
            raise APIError(415, "send the profile file with Content-Type: application/toml.",
                           "body", "unsupported_media_type")
        body = await request.body()
        if len(body) > MAX_TOML_BYTES:
            raise APIError(413, f"a profile file is at most {MAX_TOML_BYTES} bytes.")
        try:
            p = profiles.from_toml(body.decode("utf-8"), "the imported file")
        except UnicodeDecodeError as e:
            raise APIError(400, "the imported file is not UTF-8 text.", "body",
                           "invalid_profile") from e
        except profiles.ProfileError as e:
            raise APIError(400, str(e), "body", "invalid_profile") from e
        await guarded(need().create, p, replace)
        return {"profile": p.to_dict(), "source": "database"}

    @app.get("/profiles", include_in_schema=False)
    def profiles_page():
        return FileResponse(STATIC / "profiles.html")
