"""The labeling pages of `llmos serve --db URL` (or `llmos label` for the app alone): people and
the served model make SFT conversations and comparisons together.

    GET  /label                                   the app (static/label.html)
    POST /label/api/setup                         {name, password}: the first account (owner)
    POST /label/api/login | /label/api/logout     {name, password} -> session cookie
    GET  /label/api/me                            the logged-in user (401: log in; setup: true
                                                  while no account exists)
    GET|POST /label/api/users                     accounts (owner)
    GET|POST /label/api/projects                  projects (creating one: owner)
    GET|PUT  /label/api/projects/{id}             a project with its counts and agreement;
                                                  PUT changes instructions / overlap (owner)
    POST /label/api/projects/{id}/prompts?format=jsonl|text   queue prompts: the raw file as
                                                  the body; a bad line rejects it all (owner)
    GET  /label/api/projects/{id}/next?kind=write|compare     the labeler's next item
    POST /label/api/items/{id}/draft              the model's draft answer (write)
    GET  /label/api/items/{id}/answers            the 2-4 candidate answers (compare), made once
    POST /label/api/items/{id}/labels             {kind, content | ranking, reason, draft}
    GET  /label/api/projects/{id}/labels          the caller's labels (owner: ?all=1)
    POST /label/api/labels/{id}/critique          the model reviews a label against the
                                                  project's instructions
    POST /label/api/labels/{id}/accept | /revise  the labeler's verdict on the review
    GET  /label/api/projects/{id}/export?kind=conversations|comparisons   JSONL (owner)

Every write is one transaction; one label per (item, labeler, kind) is a unique constraint, so
two labelers submitting at once both land and a double submit is a 409, never a duplicate.
"""


import random
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.concurrency import run_in_threadpool

from llmos import chat_format, db
from llmos.agent.loop import final_text, respond
from llmos.infer.engine import SamplingParams
from llmos.serve import accounts
from llmos.serve import label_store as store
from llmos.serve.served import load_models

STATIC = Path(__file__).parent / "static"
DRAFT = {"temperature": 0.7, "max_tokens": 384}
# Compare candidates: varied on purpose. A small model often says the same thing at
# temperature 1 (cpu-tiny on "What is 347 * 29?" did, twice); the answers that repeat one
# already drawn, and empty ones (a comparison with an empty answer is skipped on export), are
# sampled again, hotter.
SAMPLE_TEMPERATURES, SAMPLE_TOKENS = (1.0, 1.3, 1.6), 384
CRITIQUE = {"temperature": 0.3, "max_tokens": 384}


# ---- the model's part --------------------------------------------------------------------------


def generate(served, messages: list[dict], temperature: float, max_tokens: int,
             seed: int | None = None) -> str:
    """One answer from a served model, through the agent loop (built-in tools run) and the
    model's batch; the text a user would read."""
    cancel = threading.Event()

    def stream(prompt, params):
        if len(prompt) >= served.context:
            return iter(())  # no room to answer: an empty answer, not an error
        return served.scheduler.stream(prompt, params, cancel)

    params = SamplingParams(max_new_tokens=min(max_tokens, served.context), top_p=0.95,
                            temperature=temperature, seed=seed)
    try:
        return final_text(list(respond(stream, served.tok, messages, params, max_rounds=3)))
    finally:
        cancel.set()


def critique_messages(instructions: str, prompt: list[dict], label: store.Label,
                      answers: dict[int, str]) -> list[dict]:
    """The review request: the project's instructions as the system prompt, then the label."""
    asked = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    if label.kind == "write":
        body = (f"A labeler wrote this ideal answer.\n\nConversation:\n{asked}\n\n"
                f"Answer:\n{label.content}")
    else:
        order = "\n".join(f"{i + 1}. {answers[a]}" for i, a in enumerate(label.ranking))
        body = (f"A labeler ranked these answers, best first.\n\nConversation:\n{asked}\n\n"
                f"Ranking:\n{order}" + (f"\n\nTheir reason: {label.reason}"
                                        if label.reason else ""))
    ask = ("Review this label against the labeling instructions. Name each place where it is "
           "not helpful, truthful or harmless and say how to fix it; if it follows the "
           "instructions, say so in one sentence.")
    return [{"role": "system", "content": instructions},
            {"role": "user", "content": f"{body}\n\n{ask}"}]


def fit_instructions(served, messages: list[dict], room: int) -> list[dict] | None:
    """The review request cut to leave `room` tokens for the answer in the model's context:
    the instructions are shortened from the end (their most important rules come first);
    None when even the label alone does not fit."""
    system, rest = messages[0]["content"], messages[1:]
    while True:
        candidate = ([{"role": "system", "content": system}] if system else []) + rest
        if len(chat_format.render(served.tok, candidate, add_generation_prompt=True).ids) + room \
                <= served.context:
            return candidate
        if not system:
            return None
        system = system[:len(system) // 2].rsplit("\n", 1)[0] if len(system) > 80 else ""


# ---- requests ----------------------------------------------------------------------------------


class Credentials(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class NewUser(Credentials):
    role: str = "labeler"


class NewProject(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    instructions: str | None = Field(None, max_length=100_000)
    overlap: int = Field(2, ge=1, le=10)
    answers: int = Field(2, ge=2, le=4)


class ProjectUpdate(BaseModel):
    instructions: str | None = Field(None, max_length=100_000)
    overlap: int | None = Field(None, ge=1, le=10)


class LabelIn(BaseModel):
    kind: str
    content: str | None = Field(None, max_length=100_000)
    ranking: list[int] | None = None
    reason: str | None = Field(None, max_length=10_000)
    draft: str | None = Field(None, max_length=100_000)


class RevisionIn(BaseModel):
    content: str | None = Field(None, max_length=100_000)
    ranking: list[int] | None = None
    reason: str | None = Field(None, max_length=10_000)


# ---- the router --------------------------------------------------------------------------------


def label_router(engine, models: dict) -> APIRouter:
    """The labeling routes over `engine` (a migrated database) and `models` ({name:
    ServedModel}, possibly empty: then drafts are empty and compare needs uploaded answers)."""
    router = APIRouter()
    api = "/label/api"

    def transact(fn):
        """fn(session) in one transaction; a SQLite writer that finds the file locked past the
        busy timeout tries again, a broken rule is a 400, a duplicate label a 409."""
        for attempt in range(6):
            try:
                with db.session(engine) as s:
                    return fn(s)
            except OperationalError as e:
                if "locked" not in str(e) or attempt == 5:
                    raise
                time.sleep(0.05 * 2 ** attempt)
            except IntegrityError as e:
                raise HTTPException(409, "already stored: " + _conflict(e)) from None
            except ValueError as e:
                raise HTTPException(400, str(e)) from None

    def user(request: Request) -> dict:
        with db.session(engine) as s:
            u = accounts.session_user(s, request.cookies.get(accounts.COOKIE))
            if u is None:
                raise HTTPException(401, "log in first")
            return u.public()

    Me = Annotated[dict, Depends(user)]

    def owner(u: Me) -> dict:
        if u["role"] != "owner":
            raise HTTPException(403, "only a project owner may do this")
        return u

    Owner = Annotated[dict, Depends(owner)]

    def logged_in(token: str, u: dict) -> JSONResponse:
        r = JSONResponse({"user": u})
        r.set_cookie(accounts.COOKIE, token, max_age=accounts.SESSION_DAYS * 86400,
                     httponly=True, samesite="lax", path="/")
        return r

    def project_of(s, pid: int) -> store.Project:
        p = s.get(store.Project, pid)
        if p is None:
            raise HTTPException(404, f"no project {pid}")
        return p

    def item_of(s, iid: int) -> store.Item:
        item = s.get(store.Item, iid)
        if item is None:
            raise HTTPException(404, f"no item {iid}")
        return item

    def label_of(s, lid: int, u: dict) -> store.Label:
        label = s.get(store.Label, lid)
        if label is None or (label.user_id != u["id"] and u["role"] != "owner"):
            raise HTTPException(404, f"no label {lid} of yours")
        return label

    def first_model():
        if not models:
            raise HTTPException(409, "no model is served: start with --model DIR")
        return next(iter(models.values()))

    # ---- pages and accounts ----

    @router.get("/label", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "label.html")

    @router.get(api + "/me")
    def me(request: Request):
        with db.session(engine) as s:
            u = accounts.session_user(s, request.cookies.get(accounts.COOKIE))
            if u is None:
                setup = accounts.count_users(s) == 0
                return JSONResponse({"error": {"message": "log in first"}, "setup": setup},
                                    status_code=401)
            return {"user": u.public(), "models": list(models)}

    @router.post(api + "/setup")
    def setup(req: Credentials):
        def work(s):
            if accounts.count_users(s):
                raise HTTPException(409, "the owner account exists already: log in")
            u = accounts.add_user(s, req.name, req.password, "owner")
            return accounts.open_session(s, u), u.public()

        return logged_in(*transact(work))

    @router.post(api + "/login")
    def login(req: Credentials):
        def work(s):
            token = accounts.login(s, req.name, req.password)
            if token is None:
                raise HTTPException(401, "wrong name or password")
            return token, s.scalar(select(accounts.User).where(
                accounts.User.name == req.name)).public()

        return logged_in(*transact(work))

    @router.post(api + "/logout")
    def logout(request: Request):
        transact(lambda s: accounts.logout(s, request.cookies.get(accounts.COOKIE)))
        r = JSONResponse({"ok": True})
        r.delete_cookie(accounts.COOKIE, path="/")
        return r

    @router.get(api + "/users")
    def users(_: Owner):
        with db.session(engine) as s:
            return [u.public() for u in s.scalars(select(accounts.User).order_by(
                accounts.User.id))]

    @router.post(api + "/users")
    def add_user(req: NewUser, _: Owner):
        return transact(lambda s: accounts.add_user(s, req.name, req.password,
                                                    req.role).public())

    # ---- projects ----

    @router.get(api + "/projects")
    def projects(_: Me):
        with db.session(engine) as s:
            return [p.public() | {"items": store.project_stats(s, p)["items"]}
                    for p in s.scalars(select(store.Project).order_by(store.Project.id))]

    @router.post(api + "/projects")
    def add_project(req: NewProject, _: Owner):
        return transact(lambda s: store.add_project(s, req.name, req.instructions, req.overlap,
                                                req.answers).public())

    @router.get(api + "/projects/{pid}")
    def project(pid: int, _: Me):
        with db.session(engine) as s:
            p = project_of(s, pid)
            return p.public() | {"stats": store.project_stats(s, p)}

    @router.put(api + "/projects/{pid}")
    def update_project(pid: int, req: ProjectUpdate, _: Owner):
        def work(s):
            p = project_of(s, pid)
            if req.instructions is not None:
                p.instructions = req.instructions
            if req.overlap is not None:
                p.overlap = req.overlap
            return p.public()

        return transact(work)

    @router.post(api + "/projects/{pid}/prompts")
    async def upload(pid: int, request: Request, _: Owner, format: str = "jsonl"):
        data = await request.body()
        try:
            rows = store.parse_upload(data, format)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return await run_in_threadpool(transact, lambda s: store.add_items(s, project_of(s, pid),
                                                                         rows))

    @router.get(api + "/projects/{pid}/export")
    def export(pid: int, _: Owner, kind: str = "conversations"):
        with db.session(engine) as s:
            p = project_of(s, pid)
            if kind == "conversations":
                rows = store.export_conversations(s, p)
            elif kind == "comparisons":
                rows = store.export_comparisons(s, p)
            else:
                raise HTTPException(400, "kind must be conversations or comparisons")
            name = f"{p.name}-{kind}.jsonl".replace(" ", "_").replace('"', "")
        return PlainTextResponse(store.to_jsonl(rows), media_type="application/x-ndjson",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # ---- labeling ----

    @router.get(api + "/projects/{pid}/next")
    def next_item(pid: int, u: Me, kind: str = "write", skip: str = ""):
        if kind not in store.KINDS:
            raise HTTPException(400, f"kind must be one of {', '.join(store.KINDS)}")
        skipped = [int(x) for x in skip.split(",") if x.strip().isdigit()]
        with db.session(engine) as s:
            item = store.next_item(s, project_of(s, pid), u["id"], kind, skipped)
            if item is None:
                return {"item": None}
            return {"item": {"id": item.id, "prompt": item.prompt}}

    @router.post(api + "/items/{iid}/draft")
    def draft(iid: int, _: Me):
        with db.session(engine) as s:
            prompt = item_of(s, iid).prompt
        served = first_model()
        return {"model": served.name, "draft": generate(served, prompt, **DRAFT)}

    @router.get(api + "/items/{iid}/answers")
    def answers(iid: int, u: Me):
        rows = candidates(iid)
        random.Random(f"{u['id']}-{iid}").shuffle(rows)  # each labeler sees their own order
        return {"answers": [{"id": a.id, "content": a.content} for a in rows]}

    def candidates(iid: int) -> list[store.Answer]:
        """The item's compare answers: uploaded ones, else sampled once from the served models
        (round robin) and stored, so every labeler ranks the same texts."""
        with db.session(engine) as s:
            item = item_of(s, iid)
            have = store.candidates(s, iid)
            k = s.get(store.Project, item.project_id).answers
            prompt, given = item.prompt, item.given
        if have:
            return have
        if given:
            texts = [("uploaded", a) for a in given]
        else:
            texts = sample_answers(prompt, k)
        try:
            with db.session(engine) as s:
                for i, (model, text) in enumerate(texts):
                    s.add(store.Answer(item_id=iid, position=i, model=model, content=text))
        except IntegrityError:
            pass  # another labeler's request stored them first: use theirs
        with db.session(engine) as s:
            return store.candidates(s, iid)

    def sample_answers(prompt: list[dict], k: int) -> list[tuple[str, str]]:
        if not models:
            raise HTTPException(409, "no model is served to write answers: start with --model "
                                "DIR, or upload prompts with their 'answers'")
        names = list(models)
        texts: list[tuple[str, str]] = []
        for temperature in SAMPLE_TEMPERATURES:  # hotter again for answers seen already
            want = [names[(len(texts) + i) % len(names)] for i in range(k - len(texts))]
            with ThreadPoolExecutor(len(want)) as pool:  # they decode in one batch
                got = list(pool.map(lambda n, t=temperature: (n, generate(
                    models[n], prompt, t, SAMPLE_TOKENS, seed=secrets.randbelow(2**31))), want))
            seen = {t for _, t in texts}
            texts += [(n, t) for n, t in got if t.strip() and t not in seen and not seen.add(t)]
            if len(texts) >= k:
                break
        # A model that always says the same: show it anyway (an empty answer only when it
        # said nothing else); pairs of equal or empty texts are left out on export.
        fill = [(n, t) for n, t in got if t.strip()] or got
        while len(texts) < k:
            texts.append(fill[len(texts) % len(fill)])
        return texts[:k]

    @router.post(api + "/items/{iid}/labels")
    def submit(iid: int, req: LabelIn, u: Me):
        def work(s):
            label = store.submit(s, item_of(s, iid), u["id"], req.kind, req.content, req.ranking,
                             req.reason, req.draft)
            return label_view(s, label)

        return transact(work)

    @router.get(api + "/projects/{pid}/labels")
    def my_labels(pid: int, u: Me, all: bool = False):
        with db.session(engine) as s:
            project_of(s, pid)
            q = (select(store.Label).join(store.Item, store.Item.id == store.Label.item_id)
                 .where(store.Item.project_id == pid).order_by(store.Label.id.desc()))
            if not (all and u["role"] == "owner"):
                q = q.where(store.Label.user_id == u["id"])
            return [label_view(s, x) for x in s.scalars(q.limit(500))]

    @router.post(api + "/labels/{lid}/critique")
    def critique(lid: int, u: Me):
        with db.session(engine) as s:
            label = label_of(s, lid, u)
            item = s.get(store.Item, label.item_id)
            instructions = s.get(store.Project, item.project_id).instructions
            texts = {a.id: a.content for a in store.candidates(s, item.id)}
            messages = critique_messages(instructions, item.prompt, label, texts)
        served = first_model()
        fitted = fit_instructions(served, messages, room=min(CRITIQUE["max_tokens"],
                                                             served.context // 4))
        if fitted is None:
            text = f"(the label is too long for {served.name}'s context of {served.context} tokens)"
        else:
            text = generate(served, fitted, **CRITIQUE) or "(the model gave no critique)"

        def work(s):
            label = label_of(s, lid, u)
            label.critique, label.updated = text, time.time()
            return label_view(s, label) | {"model": served.name}

        return transact(work)

    @router.post(api + "/labels/{lid}/accept")
    def accept(lid: int, u: Me):
        def work(s):
            label = label_of(s, lid, u)
            label.status, label.updated = "accepted", time.time()
            return label_view(s, label)

        return transact(work)

    @router.post(api + "/labels/{lid}/revise")
    def revise(lid: int, req: RevisionIn, u: Me):
        def work(s):
            label = store.revise(s, label_of(s, lid, u), req.content, req.ranking, req.reason)
            return label_view(s, label)

        return transact(work)

    return router


def label_view(s, label: store.Label) -> dict:
    item = s.get(store.Item, label.item_id)
    out = {"id": label.id, "item": label.item_id, "kind": label.kind, "prompt": item.prompt,
           "content": label.content, "ranking": label.ranking, "reason": label.reason,
           "status": label.status, "critique": label.critique, "user": label.user_id,
           "revisions": len(s.scalars(select(store.Revision.id).where(
               store.Revision.label_id == label.id)).all())}
    if label.kind == "compare":
        by_id = {a.id: a for a in store.candidates(s, item.id)}
        out["answers"] = [{"id": i, "content": by_id[i].content, "model": by_id[i].model}
                          for i in label.ranking]
    return out


def _conflict(e: IntegrityError) -> str:
    text = str(e.orig)
    if "label_labels" in text or "item_id, user_id, kind" in text or "kind" in text:
        return "you have labeled this item already; change it from Review"
    return text.splitlines()[0]


# ---- mounting --------------------------------------------------------------------------------


def mount_labeling(app: FastAPI, database, served: dict) -> None:
    """Add the labeling pages to a `create_app` app. `database`: a URL, a path or an Engine."""
    engine = db.open_database(database) if isinstance(database, (str, Path)) else database
    app.state.database = engine
    app.include_router(label_router(engine, served))


def create_label_app(served: dict, database) -> FastAPI:
    """The labeling app alone (`llmos label`): its pages, the static files and the models."""
    import contextlib

    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        for m in served.values():
            m.scheduler.close()

    app = FastAPI(title="llmos label", lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc):
        return JSONResponse({"error": {"message": str(exc.detail)}},
                            status_code=exc.status_code)

    mount_labeling(app, database, served)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "label.html")

    return app


def serve_label(specs: list[str], database: str, host: str = "127.0.0.1", port: int = 8000,
                device: str = "auto", max_batch: int = 16) -> None:
    import torch
    import uvicorn

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    served = load_models(specs, device, max_batch) if specs else {}
    app = create_label_app(served, database)
    print(f"labeling app: http://{host}:{port}/label  (database {db.database_url(database)}; "
          f"models: {', '.join(served) or 'none'})")
    uvicorn.run(app, host=host, port=port, log_level="info")


def export_file(database, project: str, kind: str, out: str | Path) -> int:
    """`llmos label export`: write a project's conversations or comparisons JSONL."""
    engine = db.open_database(database)
    try:
        with db.session(engine) as s:
            p = s.scalar(select(store.Project).where(store.Project.name == project))
            if p is None:
                names = ", ".join(s.scalars(select(store.Project.name))) or "none"
                raise ValueError(f"no project named {project!r} (projects: {names})")
            rows = (store.export_conversations(s, p) if kind == "conversations"
                    else store.export_comparisons(s, p))
    finally:
        engine.dispose()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(store.to_jsonl(rows), encoding="utf-8")
    return len(rows)


def set_user(database, name: str, password: str, role: str = "labeler") -> str:
    """`llmos label user`: add the account, or give an existing one a new password."""
    engine = db.open_database(database)
    try:
        with db.session(engine) as s:
            if s.scalar(select(accounts.User).where(accounts.User.name == name)):
                accounts.set_password(s, name, password)
                return f"new password for {name}"
            accounts.add_user(s, name, password, role)
            return f"added {role} {name}"
    finally:
        engine.dispose()
