"""The arena pages of `llmos serve --db URL`: anonymous battles voted in the browser, stored in
the database as FastChat battle records, rated on a leaderboard.

    GET  /arena                          the battle page (static/arena.html)
    POST /arena/api/battles              {"prompt"} -> SSE: {"battle": id}, then
                                         {"side": "a"|"b", "delta": text} / {"side", "done"} /
                                         {"side", "error"}, and {"end": true}
    POST /arena/api/battles/{id}/vote    {"winner": model_a|model_b|tie|tie (bothbad)}
                                         -> the two names, and whether the vote counts
    GET  /arena/leaderboard              the leaderboard page; its data from /arena/api/leaderboard
    GET  /arena/leaderboard.png          the ratings with their 95% intervals
    GET  /arena/api/battles.jsonl        every vote as FastChat clean-battle JSONL

A battle is a row of `arena_battles` from the moment its answers start; a vote fills in the
winner. The voter is a random id kept in a cookie. What keeps one voter from flooding the
board: one vote per battle, by the voter it was shown to; at most `votes_per_hour` votes per
voter and `client_votes_per_hour` per client address (stored only as a salted hash), and
`battles_per_minute` new battles; and on the leaderboard at most `voter_cap` votes per voter per
model pair (evals/battles.py `cap_per_voter`). A vote on answers that name either model is kept
in the database but does not count (`reveals_identity`), and the page says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import JSON, Boolean, Float, Integer, String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from llmos import db
from llmos.agent.peers import Peer, StreamPeer, visible_text
from llmos.evals import battles as battles_
from llmos.evals import ratings
from llmos.infer.engine import SamplingParams

STATIC = Path(__file__).parent / "static"
COOKIE = "llmos_arena_voter"
CLIENT_SALT = "llmos-arena-client"


class ArenaBattle(db.Base):
    """One battle shown to one voter (migrations/versions/0002_arena.py makes the table)."""

    __tablename__ = "arena_battles"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_a: Mapped[str] = mapped_column(String(200))
    model_b: Mapped[str] = mapped_column(String(200))
    winner: Mapped[str | None] = mapped_column(String(20), nullable=True)  # None: no vote yet
    judge: Mapped[str | None] = mapped_column(String(64), nullable=True)
    voter: Mapped[str] = mapped_column(String(64), index=True)
    client: Mapped[str | None] = mapped_column(String(32), nullable=True)
    conversation_a: Mapped[list | None] = mapped_column(JSON, nullable=True)  # None: streaming
    conversation_b: Mapped[list | None] = mapped_column(JSON, nullable=True)
    turn: Mapped[int] = mapped_column(Integer, default=1)
    anony: Mapped[bool] = mapped_column(Boolean, default=True)
    tstamp: Mapped[float] = mapped_column(Float)  # when the battle started
    voted_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)

    def record(self) -> dict:
        """The FastChat clean-battle record of a voted battle (tstamp = the vote's time)."""
        return {"question_id": self.id, "model_a": self.model_a, "model_b": self.model_b,
                "winner": self.winner, "judge": self.judge, "voter": self.voter,
                "turn": self.turn, "anony": self.anony, "tstamp": self.voted_at,
                "conversation_a": self.conversation_a or [],
                "conversation_b": self.conversation_b or []}


@dataclass
class ArenaSettings:
    max_tokens: int = 512  # per answer
    temperature: float = 0.7
    max_prompt_chars: int = 4000
    battles_per_minute: int = 10  # per voter and per client address
    votes_per_hour: int = 60  # per voter
    client_votes_per_hour: int = 600  # per client address (people behind one NAT share it)
    voter_cap: int = 50  # leaderboard: votes per voter per model pair that count
    bootstrap: int = 200  # leaderboard: bootstrap rounds for the intervals


def served_contestant(served, tools: dict | None = None) -> StreamPeer:
    """A model of this server as a contestant: its answers join the model's batch."""

    def stream(messages, max_tokens, temperature, seed):
        cancel = threading.Event()

        def generate(prompt, params):
            if len(prompt) >= served.context:
                raise ValueError(f"the prompt is {len(prompt)} tokens; {served.name} has a "
                                 f"context of {served.context}")
            return served.scheduler.stream(prompt, params, cancel)

        params = SamplingParams(max_new_tokens=min(max_tokens, served.context),
                                temperature=temperature, seed=seed)
        try:
            yield from visible_text(generate, served.tok, messages, params, tools)
        finally:
            cancel.set()

    return StreamPeer(served.name, stream)


class BattleRequest(BaseModel):
    prompt: str = Field(min_length=1)


class VoteRequest(BaseModel):
    winner: str


def client_hash(host: str) -> str:
    """What is stored of a client's address: enough to count its votes, not to read it back."""
    return hashlib.sha256(f"{CLIENT_SALT}:{host}".encode()).hexdigest()[:32]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def load_votes(engine) -> list[dict]:
    """Every voted battle, oldest vote first, as FastChat records."""
    with db.session(engine) as s:
        rows = s.scalars(select(ArenaBattle).where(ArenaBattle.winner.is_not(None))
                         .order_by(ArenaBattle.voted_at, ArenaBattle.id)).all()
        return [r.record() for r in rows]


def export_jsonl(engine, out) -> int:
    """Write every vote as JSONL to a text stream; returns how many."""
    votes = load_votes(engine)
    for v in votes:
        out.write(json.dumps(v, ensure_ascii=False) + "\n")
    return len(votes)


def standings(engine, settings: ArenaSettings, rounds: int | None = None) -> dict:
    """The leaderboard of the votes that count, and how many each filter dropped."""
    votes = load_votes(engine)
    kept, dropped = battles_.filter_battles(votes, voter_cap=settings.voter_cap)
    rows = ratings.leaderboard(kept, rounds=settings.bootstrap if rounds is None else rounds)
    return {"votes": len(votes), "counted": len(kept), "dropped": dropped,
            "rows": [ratings.rounded(r) for r in rows]}


def arena_router(engine, contestants: dict[str, Peer],
                 settings: ArenaSettings | None = None) -> APIRouter:
    settings = settings or ArenaSettings()
    router = APIRouter()
    rng = random.SystemRandom()

    def voter_of(request: Request) -> tuple[str, bool]:
        v = request.cookies.get(COOKIE, "")
        if len(v) == 32 and all(c in "0123456789abcdef" for c in v):
            return v, False
        return uuid.uuid4().hex, True

    def with_cookie(response: Response, voter: str, new: bool) -> Response:
        if new:
            response.set_cookie(COOKIE, voter, max_age=365 * 86400, httponly=True,
                                samesite="lax")
        return response

    def client_of(request: Request) -> str:
        return client_hash(request.client.host if request.client else "")

    def recent(s, column, since: float, **where) -> int:
        q = select(func.count()).select_from(ArenaBattle).where(column > since)
        for k, v in where.items():
            q = q.where(getattr(ArenaBattle, k) == v)
        return s.scalar(q)

    @router.get("/arena", include_in_schema=False)
    def page(request: Request):
        return with_cookie(FileResponse(STATIC / "arena.html"), *voter_of(request))

    @router.get("/arena/leaderboard", include_in_schema=False)
    def leaderboard_page():
        return FileResponse(STATIC / "leaderboard.html")

    @router.get("/arena/api/models")
    def models():
        return {"count": len(contestants)}  # the names stay hidden until a vote

    @router.post("/arena/api/battles")
    def start(req: BattleRequest, request: Request):  # a worker thread: the DB work blocks
        voter, new = voter_of(request)
        client = client_of(request)
        if len(contestants) < 2:
            return _error(503, "the arena needs at least two models")
        if not req.prompt.strip():
            return _error(400, "the prompt is empty")
        if len(req.prompt) > settings.max_prompt_chars:
            return _error(400, f"the prompt is longer than {settings.max_prompt_chars} "
                          "characters")
        now = time.time()
        with db.session(engine) as s:
            if (recent(s, ArenaBattle.tstamp, now - 60, voter=voter)
                    >= settings.battles_per_minute
                    or recent(s, ArenaBattle.tstamp, now - 60, client=client)
                    >= settings.battles_per_minute):
                return _error(429, f"at most {settings.battles_per_minute} battles a minute; "
                              "wait a little")
            a, b = rng.sample(sorted(contestants), 2)
            battle = ArenaBattle(id=uuid.uuid4().hex, model_a=a, model_b=b, voter=voter,
                                 client=client, turn=1, anony=True, tstamp=now)
            s.add(battle)
        messages = [{"role": "user", "content": req.prompt}]
        body = run_battle(battle.id, [contestants[a], contestants[b]], messages)
        response = StreamingResponse(body, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return with_cookie(response, voter, new)

    def save_answers(battle_id: str, messages: list[dict], texts: list[str], failed: bool):
        with db.session(engine) as s:
            row = s.get(ArenaBattle, battle_id)
            if failed:
                s.delete(row)  # nothing fair to vote on
                return
            row.conversation_a = messages + [{"role": "assistant", "content": texts[0].strip()}]
            row.conversation_b = messages + [{"role": "assistant", "content": texts[1].strip()}]

    async def run_battle(battle_id: str, pair: list[Peer], messages: list[dict]):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        texts = ["", ""]

        def work(side: int) -> None:
            def put(item):
                loop.call_soon_threadsafe(queue.put_nowait, item)

            pieces = None
            try:
                pieces = pair[side].stream(messages, settings.max_tokens, settings.temperature,
                                           None)
                for piece in pieces:
                    if stop.is_set():
                        break
                    texts[side] += piece
                    put((side, "delta", piece))
                put((side, "done", ""))
            except Exception as e:  # noqa: BLE001 - shown on the page, the other side goes on
                put((side, "error", f"{type(e).__name__}: {e}"))
            finally:
                if pieces is not None and hasattr(pieces, "close"):
                    pieces.close()

        yield _sse({"battle": battle_id})
        for side in (0, 1):
            threading.Thread(target=work, args=(side,), daemon=True).start()
        live, failed = 2, False
        try:
            while live:
                side, kind, text = await queue.get()
                name = "ab"[side]
                if kind == "delta":
                    yield _sse({"side": name, "delta": text})
                else:
                    live -= 1
                    failed |= kind == "error"
                    yield _sse({"side": name, kind: text or True})
            await asyncio.to_thread(save_answers, battle_id, messages, texts, failed)
            yield _sse({"end": True, "votable": not failed})
        finally:
            stop.set()

    @router.post("/arena/api/battles/{battle_id}/vote")
    def vote(battle_id: str, req: VoteRequest, request: Request):
        if req.winner not in battles_.WINNERS:
            return _error(400, f"winner must be one of {', '.join(battles_.WINNERS)}")
        voter, _ = voter_of(request)
        client = client_of(request)
        now = time.time()
        with db.session(engine) as s:
            row = s.get(ArenaBattle, battle_id)
            if row is None:
                return _error(404, "no such battle")
            if row.voter != voter:
                return _error(403, "this battle was shown to another voter")
            if row.winner is not None:
                return _error(409, "this battle has its vote already")
            if row.conversation_a is None:
                return _error(409, "the answers are still streaming")
            if recent(s, ArenaBattle.voted_at, now - 3600, voter=voter) >= settings.votes_per_hour:
                return _error(429, f"at most {settings.votes_per_hour} votes an hour per voter")
            if (recent(s, ArenaBattle.voted_at, now - 3600, client=client)
                    >= settings.client_votes_per_hour):
                return _error(429, f"at most {settings.client_votes_per_hour} votes an hour "
                              "from one address")
            row.winner, row.voted_at, row.judge = req.winner, now, f"arena_user_{voter[:16]}"
            record = row.record()
        reveals = battles_.reveals_identity(record)
        return {"model_a": record["model_a"], "model_b": record["model_b"],
                "winner": record["winner"], "counted": not reveals,
                "reason": "an answer names its model" if reveals else ""}

    @router.get("/arena/api/leaderboard")
    async def leaderboard(bootstrap: int | None = None):
        rounds = None if bootstrap is None else max(0, min(bootstrap, 2000))
        return await asyncio.to_thread(standings, engine, settings, rounds)

    @router.get("/arena/leaderboard.png")
    async def leaderboard_png():
        board = await asyncio.to_thread(standings, engine, settings)
        if not board["rows"]:
            return _error(404, "no votes counted yet")
        buf = io.BytesIO()
        await asyncio.to_thread(ratings.plot_intervals, board["rows"], buf)
        return Response(buf.getvalue(), media_type="image/png",
                        headers={"Cache-Control": "no-cache"})

    @router.get("/arena/api/battles.jsonl")
    def export():
        buf = io.StringIO()
        export_jsonl(engine, buf)
        return Response(buf.getvalue(), media_type="application/x-ndjson",
                        headers={"Content-Disposition": 'attachment; filename="battles.jsonl"'})

    return router


def mount_arena(app, database, served: dict, extra: list[Peer] | None = None,
                tools: dict | None = None, settings: ArenaSettings | None = None) -> None:
    """Add the arena to a `create_app` app: the served models plus `extra` contestants."""
    engine = db.open_database(database) if isinstance(database, (str, Path)) else database
    contestants: dict[str, Peer] = {n: served_contestant(m, tools)
                                          for n, m in served.items()}
    for c in extra or []:
        if c.name in contestants:
            raise ValueError(f"two arena contestants are named {c.name!r}")
        contestants[c.name] = c
    app.state.database = engine
    app.include_router(arena_router(engine, contestants, settings))
