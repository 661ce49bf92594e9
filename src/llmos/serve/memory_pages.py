"""What the served profiles remember, for the people they remember it about: `/memory` lists a
user's memories and deletes them, over two routes the page calls (and any client may):

    GET    /v1/llmos/memories?user=ada          {"user": "ada", "data": [{"id", "text", "created"}]}
    DELETE /v1/llmos/memories/{id}?user=ada     {"deleted": true}

The store is the first memory-using profile's database, else the server's --db.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from llmos.agent.memory import DEFAULT_USER, MemoryStore
from llmos.serve.openai_schema import APIError

STATIC = Path(__file__).with_name("static")


def memory_store(models: dict, database) -> MemoryStore | None:
    for m in models.values():
        if getattr(m, "memory", None) is not None:
            return m.memory
    if database is None:
        return None
    return MemoryStore.open(database) if isinstance(database, (str, Path)) \
        else MemoryStore(database)


def mount_memory(app: FastAPI, store: MemoryStore | None, auth: list) -> None:
    def need() -> MemoryStore:
        if store is None:
            raise APIError(404, "This server keeps no memories: serve a profile that grants "
                           "remember or recall, or give --db.", code="no_memory")
        return store

    @app.get("/v1/llmos/memories", dependencies=auth)
    def list_memories(user: str = Query(DEFAULT_USER, min_length=1, max_length=128)):
        return {"user": user, "data": need().list(user)}

    @app.delete("/v1/llmos/memories/{memory_id}", dependencies=auth)
    def forget_memory(memory_id: int = PathParam(ge=1, le=2**63 - 1),  # a database integer
                      user: str = Query(DEFAULT_USER, min_length=1, max_length=128)):
        if not need().forget(user, memory_id):
            raise APIError(404, f"No memory {memory_id} for user {user!r}.", "memory_id",
                           "memory_not_found")
        return {"deleted": True}

    @app.get("/memory", include_in_schema=False)
    def memory_page():
        return FileResponse(STATIC / "memory.html")
