"""The labeling app over HTTP: a real uvicorn server on loopback over SQLite and a real
PostgreSQL server; accounts, uploads, write / compare / review, agreement, exports, concurrent
submissions and a restart in the middle of a session."""

from __future__ import annotations

import contextlib
import json
import threading

import httpx
import pytest
import test_serve
from test_serve import run_server

from llmos.serve import accounts, labeling
from llmos.serve import label_store as store

memorised = test_serve.memorised  # the session's tiny model that recites its conversations
PASSWORD = "correct horse"


@contextlib.contextmanager
def label_server(database_url, models=None):
    app = labeling.create_label_app(models or {}, database_url)
    try:
        with run_server(app) as url:
            yield url
    finally:
        app.state.database.dispose()


def client(url, name=None, password=PASSWORD, setup=False) -> httpx.Client:
    c = httpx.Client(base_url=url + "/label/api", timeout=60)
    if name:
        r = c.post("/setup" if setup else "/login", json={"name": name, "password": password})
        assert r.status_code == 200, r.text
    return c


def project_with_team(url, labelers=("bob", "cy"), prompts=None, **project) -> tuple:
    """An owner "ann", labelers, and a project with prompts queued."""
    owner = client(url, "ann", setup=True)
    for name in labelers:
        assert owner.post("/users", json={"name": name, "password": PASSWORD}).status_code == 200
    pid = owner.post("/projects", json={"name": "demo", **project}).json()["id"]
    if prompts:
        r = owner.post(f"/projects/{pid}/prompts", content=prompts)
        assert r.status_code == 200, r.text
    return owner, pid


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# ---- pure parts --------------------------------------------------------------------------------


def test_passwords_are_salted_scrypt():
    a, b = accounts.hash_password("hunter22"), accounts.hash_password("hunter22")
    assert a != b and a.startswith("scrypt$16384$8$1$")  # a fresh salt each time
    assert accounts.check_password("hunter22", a) and accounts.check_password("hunter22", b)
    assert not accounts.check_password("hunter23", a)
    assert not accounts.check_password("hunter22", "md5$whatever")


def test_cohen_kappa_and_agreement():
    # Two raters, 10 items: agree on 7; A says x 5 times, B 6 times.
    pairs = [("x", "x")] * 4 + [("y", "y")] * 3 + [("x", "y")] + [("y", "x")] * 2
    # p_o = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5, kappa = 0.2 / 0.5
    assert store.cohen_kappa(pairs) == pytest.approx(0.4)
    assert store.cohen_kappa([("x", "x")] * 3) is None  # one category: undefined
    assert store.cohen_kappa([]) is None
    pos = {1: 0, 2: 1, 3: 2}
    labels = [{"item": 1, "user": 1, "ranking": [1, 2, 3], "positions": pos},
              {"item": 1, "user": 2, "ranking": [1, 3, 2], "positions": pos},
              {"item": 2, "user": 1, "ranking": [3], "positions": pos},
              {"item": 2, "user": 2, "ranking": [2], "positions": pos}]
    got = store.compare_agreement(labels)
    assert got["pairs"] == 2 and got["same_best"] == 0.5
    assert got["pair_order_agreement"] == pytest.approx(2 / 3)  # (1,2) (1,3) agree, (2,3) not


def test_upload_parsing_names_every_bad_line():
    good = store.parse_upload(b'{"prompt": "a"}\n\n{"messages": [{"role": "user", "content": "b"},'
                          b' {"role": "assistant", "content": "x"}]}\n', "jsonl")
    assert [p for p, _ in good] == [[{"role": "user", "content": "a"}],
                                    [{"role": "user", "content": "b"}]]
    with pytest.raises(store.UploadError) as e:
        store.parse_upload(b'{"prompt": "ok"}\n[1]\n{"prompt": ""}\n'
                           b'{"prompt": "x", "answers": ["a"]}\n'
                           b'{"messages": [{"role": "user", "content": "q"}, {"role": "user"}]}\n'
                           b'not json\n', "jsonl")
    assert [n for n, _ in e.value.problems] == [2, 3, 4, 5, 6]
    assert "line 6: not valid JSON" in str(e.value) and "nothing was imported" in str(e.value)
    with pytest.raises(store.UploadError, match="line 2: not valid UTF-8"):
        store.parse_upload(b"fine\n\xff\xfe bad\n", "text")


# ---- over HTTP ---------------------------------------------------------------------------------


def test_accounts_roles_and_malformed_uploads(database_url):
    with label_server(database_url) as url:
        anon = client(url)
        r = anon.get("/me")
        assert r.status_code == 401 and r.json()["setup"] is True
        owner, pid = project_with_team(url, labelers=("bob",))
        assert anon.post("/setup", json={"name": "eve", "password": PASSWORD}).status_code == 409
        assert client(url).post("/login", json={"name": "bob", "password": "wrong password"}
                                ).status_code == 401
        bob = client(url, "bob")
        assert bob.get("/me").json()["user"] == {"id": 2, "name": "bob", "role": "labeler"}
        assert bob.post("/projects", json={"name": "mine"}).status_code == 403
        assert bob.post(f"/projects/{pid}/prompts", content="hi\n").status_code == 403
        assert bob.get(f"/projects/{pid}/export").status_code == 403
        assert anon.get("/projects").status_code == 401
        r = owner.post("/users", json={"name": "bob", "password": PASSWORD})
        assert r.status_code == 400 and "already exists" in r.json()["error"]["message"]
        assert owner.post("/users", json={"name": "x", "password": "short"}).status_code == 400

        bad = jsonl([{"prompt": "fine"}, {"prompt": []}]) + "{broken\n"
        r = owner.post(f"/projects/{pid}/prompts", content=bad)
        assert r.status_code == 400
        message = r.json()["error"]["message"]
        assert "line 2:" in message and "line 3: not valid JSON" in message
        assert "line 1" not in message
        assert owner.get(f"/projects/{pid}").json()["stats"]["items"] == 0  # nothing imported
        r = owner.post(f"/projects/{pid}/prompts?format=text", content="one\n\ntwo\none\n")
        assert r.json() == {"added": 2, "duplicates": 1}
        r = owner.post(f"/projects/{pid}/prompts?format=csv", content="x\n")
        assert r.status_code == 400
        r = owner.put(f"/projects/{pid}", json={"instructions": "# Be kind\n"})
        assert r.json()["instructions"] == "# Be kind\n"


def test_write_compare_review_agreement_and_exports(database_url, memorised, tmp_path):
    from llmos.data.comparisons import read_comparisons
    from llmos.data.conversations import read_conversations
    from llmos.serve.served import load_models

    models = load_models([f"memo={memorised}"], max_batch=8)
    prompts = jsonl([{"prompt": "Hello!"},
                     {"prompt": "What is 347 * 29?", "answers": ["10063", "10000", "I can't"]}])
    with label_server(database_url, models) as url:
        owner, pid = project_with_team(url, prompts=prompts, answers=2)
        bob, cy = client(url, "bob"), client(url, "cy")

        # write: the model's draft comes from the served checkpoint
        item = bob.get(f"/projects/{pid}/next?kind=write").json()["item"]
        assert item["prompt"] == [{"role": "user", "content": "Hello!"}]
        draft = bob.post(f"/items/{item['id']}/draft").json()
        assert draft["model"] == "memo" and draft["draft"]
        for who, text in ((bob, "Hello! How can I help you today?"), (cy, "Hi! What can I do?")):
            r = who.post(f"/items/{item['id']}/labels",
                         json={"kind": "write", "content": text, "draft": draft["draft"]})
            assert r.status_code == 200, r.text
        # both labeled the first prompt, which the queue offered first; next is the second
        assert bob.get(f"/projects/{pid}/next?kind=write").json()["item"]["id"] != item["id"]

        # compare: the model's sampled answers are made once; both labelers see the same texts
        got = {}
        for who in (bob, cy):
            it = who.get(f"/projects/{pid}/next?kind=compare").json()["item"]
            got[it["id"]] = who.get(f"/items/{it['id']}/answers").json()["answers"]
            assert it["id"] == item["id"]  # the first item, until two labels are in
        assert len(got) == 1
        answers = next(iter(got.values()))
        assert len(answers) == 2
        best = answers[0]["id"]
        for who in (bob, cy):
            r = who.post(f"/items/{item['id']}/labels",
                         json={"kind": "compare", "ranking": [best], "reason": "friendlier"})
            assert r.status_code == 200, r.text
            assert len(r.json()["ranking"]) == 2  # the last place is implied
        # the uploaded answers of the arithmetic prompt: a full order, then only a best
        it = bob.get(f"/projects/{pid}/next?kind=compare").json()["item"]
        ids = {a["content"]: a["id"] for a in bob.get(f"/items/{it['id']}/answers").json()[
            "answers"]}
        bob.post(f"/items/{it['id']}/labels", json={"kind": "compare", "ranking": [
            ids["10063"], ids["I can't"], ids["10000"]]}).raise_for_status()
        cy.get(f"/items/{it['id']}/answers")
        cy.post(f"/items/{it['id']}/labels", json={"kind": "compare", "ranking": [
            ids["10000"]]}).raise_for_status()
        r = cy.post(f"/items/{it['id']}/labels",
                    json={"kind": "compare", "ranking": [ids["10063"]]})
        assert r.status_code == 409  # cy's label for this item exists already

        # review: the model critiques bob's write label; bob revises it, cy accepts hers
        mine = bob.get(f"/projects/{pid}/labels").json()
        write_label = next(x for x in mine if x["kind"] == "write")
        reviewed = bob.post(f"/labels/{write_label['id']}/critique").json()
        assert reviewed["critique"] and reviewed["model"] == "memo"
        r = bob.post(f"/labels/{write_label['id']}/revise",
                     json={"content": "Hello! How can I help you today? :)"})
        assert r.json()["status"] == "revised" and r.json()["revisions"] == 1
        cy_label = next(x for x in cy.get(f"/projects/{pid}/labels").json()
                        if x["kind"] == "write")
        assert cy.post(f"/labels/{cy_label['id']}/accept").json()["status"] == "accepted"
        assert cy.post(f"/labels/{write_label['id']}/accept").status_code == 404  # not hers

        stats = owner.get(f"/projects/{pid}").json()["stats"]
        assert stats["labels"] == {"write": 2, "compare": 4}
        assert stats["complete"] == {"write": 1, "compare": 2}
        agree = stats["agreement"]["compare"]
        assert agree["pairs"] == 2 and agree["same_best"] == 0.5
        assert stats["status"] == {"revised": 1, "accepted": 1, "submitted": 4}

        conv = owner.get(f"/projects/{pid}/export?kind=conversations")
        assert conv.headers["content-type"].startswith("application/x-ndjson")
        comp = owner.get(f"/projects/{pid}/export?kind=comparisons").text
    (tmp_path / "c.jsonl").write_text(conv.text)
    convs, skipped = read_conversations([str(tmp_path / "c.jsonl")])
    assert skipped.total == 0
    assert [c.messages[-1]["content"] for c in convs] == [
        "Hello! How can I help you today? :)", "Hi! What can I do?"]
    (tmp_path / "p.jsonl").write_text(comp)
    rows = [json.loads(x) for x in comp.splitlines()]
    arithmetic = [r for r in rows if r["prompt"][0]["content"] == "What is 347 * 29?"]
    got = [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in arithmetic]
    assert got == [("10063", "I can't"), ("10063", "10000"), ("I can't", "10000"),  # bob's order
                   ("10000", "10063"), ("10000", "I can't")]  # cy's best pick
    pairs = read_comparisons([str(tmp_path / "p.jsonl")])[0]
    assert len(pairs) == len(rows), (read_comparisons([str(tmp_path / "p.jsonl")])[1], comp)


def test_concurrent_submissions_all_land(database_url):
    n_labelers, n_items = 6, 5
    names = [f"lab{i}" for i in range(n_labelers)]
    prompts = jsonl([{"prompt": f"question {i}"} for i in range(n_items)])
    with label_server(database_url) as url:
        _, pid = project_with_team(url, labelers=names, prompts=prompts, overlap=n_labelers)
        clients = [client(url, n) for n in names]
        start, errors, codes = threading.Barrier(n_labelers), [], []

        def work(c, who):
            try:
                items = []
                for _ in range(n_items):
                    it = c.get(f"/projects/{pid}/next?kind=write&skip="
                               + ",".join(map(str, items))).json()["item"]
                    items.append(it["id"])
                start.wait()
                for iid in items:  # everyone posts at once; each label twice
                    for _ in range(2):
                        codes.append(c.post(f"/items/{iid}/labels", json={
                            "kind": "write", "content": f"{who} on {iid}"}).status_code)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(c, n)) for c, n in zip(clients, names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sorted(codes) == [200] * (n_labelers * n_items) + [409] * (n_labelers * n_items)
        owner = client(url, "ann")
        rows = owner.get(f"/projects/{pid}/export?kind=conversations").text.splitlines()
        assert len(rows) == n_labelers * n_items
        texts = {json.loads(r)["messages"][-1]["content"] for r in rows}
        assert len(texts) == n_labelers * n_items  # every labeler's own text, none lost


def test_a_restart_mid_session_loses_nothing(database_url):
    prompts = jsonl([{"prompt": f"question {i}", "answers": ["yes", "no"]} for i in range(3)])
    with label_server(database_url) as url:
        _, pid = project_with_team(url, labelers=("bob",), prompts=prompts)
        bob = client(url, "bob")
        first = bob.get(f"/projects/{pid}/next?kind=compare").json()["item"]
        answers = bob.get(f"/items/{first['id']}/answers").json()["answers"]
        bob.post(f"/items/{first['id']}/labels", json={
            "kind": "compare", "ranking": [answers[1]["id"]]}).raise_for_status()
        cookie = bob.cookies.get(accounts.COOKIE)
    # a new server on the same database: the same cookie still logs bob in
    with label_server(database_url) as url:
        bob = httpx.Client(base_url=url + "/label/api", cookies={accounts.COOKIE: cookie})
        assert bob.get("/me").json()["user"]["name"] == "bob"
        labels_ = bob.get(f"/projects/{pid}/labels").json()
        assert [x["item"] for x in labels_] == [first["id"]]
        assert labels_[0]["ranking"][0] == answers[1]["id"]
        again = bob.get(f"/items/{first['id']}/answers").json()["answers"]
        assert sorted(a["id"] for a in again) == sorted(a["id"] for a in answers)
        nxt = bob.get(f"/projects/{pid}/next?kind=compare").json()["item"]
        assert nxt["id"] != first["id"]  # the queue goes on where bob stopped
        answers = bob.get(f"/items/{nxt['id']}/answers").json()["answers"]
        r = bob.post(f"/items/{nxt['id']}/labels", json={"kind": "compare",
                                                         "ranking": [answers[0]["id"]]})
        assert r.status_code == 200
        assert len(bob.get(f"/projects/{pid}/labels").json()) == 2
        assert bob.post("/logout").status_code == 200
        assert bob.get("/me").status_code == 401


def test_llmos_serve_with_a_database_has_the_labeling_pages(database_url):
    from llmos.serve.app import create_app

    app = create_app({}, ["sk-key"], database=database_url)
    try:
        with run_server(app) as url:
            assert "llmos label" in httpx.get(url + "/label").text
            assert httpx.get(url + "/static/label.js").status_code == 200
            r = httpx.post(url + "/label/api/setup", json={"name": "ann", "password": PASSWORD})
            assert r.status_code == 200  # cookie login, not the API key
            r = httpx.get(url + "/label/api/me", cookies=r.cookies)
            assert r.json() == {"user": {"id": 1, "name": "ann", "role": "owner"}, "models": []}
    finally:
        app.state.database.dispose()


def test_cli_label_user_and_export(tmp_path, capsys, monkeypatch):
    from llmos import db
    from llmos.cli import build_parser, main

    url = str(tmp_path / "labels.db")
    monkeypatch.setenv("LLMOS_LABEL_PASSWORD", PASSWORD)
    main(["label", "user", "ann", "--role", "owner", "--db", url])
    main(["label", "--db", url, "user", "bob"])
    main(["label", "--db", url, "user", "bob"])  # again: a new password
    assert capsys.readouterr().out.splitlines() == [
        "added owner ann", "added labeler bob", "new password for bob"]
    engine = db.open_database(url)
    with db.session(engine) as s:
        p = store.add_project(s, "demo")
        store.add_items(s, p, store.parse_upload(b"hello\nhow are you?\n", "text"))
        for item_id, text in ((1, "Hi!"), (2, "Well, thanks.")):
            store.submit(s, s.get(store.Item, item_id), 2, "write", text)
    engine.dispose()
    out = tmp_path / "out" / "c.jsonl"
    main(["label", "export", "--db", url, "--project", "demo", "--out", str(out)])
    assert "exported 2 conversations" in capsys.readouterr().out
    assert json.loads(out.read_text().splitlines()[1]) == {"messages": [
        {"role": "user", "content": "how are you?"},
        {"role": "assistant", "content": "Well, thanks."}]}
    with pytest.raises(SystemExit):
        main(["label", "export", "--db", url, "--project", "nope", "--out", str(out)])
    assert "no project named 'nope' (projects: demo)" in capsys.readouterr().err
    args = build_parser().parse_args(["label", "--db", url, "--model", "m"])
    assert (args.verb, args.db, args.model) == (None, url, ["m"])
    with pytest.raises(SystemExit) as e:
        main(["label", "--help"])
    assert e.value.code == 0 and "--model" in capsys.readouterr().out


def test_a_review_request_is_cut_to_the_models_context(memorised):
    from types import SimpleNamespace

    from llmos import chat_format
    from llmos import tokenizer as tk

    tok = tk.load(memorised)
    label = store.Label(kind="write", content="Hello! How can I help you today?")
    messages = labeling.critique_messages(store.DEFAULT_INSTRUCTIONS,
                                          [{"role": "user", "content": "Hello!"}], label, {})
    full = len(chat_format.render(tok, messages, add_generation_prompt=True).ids)
    roomy = SimpleNamespace(tok=tok, context=full + 64)
    assert labeling.fit_instructions(roomy, messages, 64) == messages
    small = SimpleNamespace(tok=tok, context=full // 2 + 64)
    cut = labeling.fit_instructions(small, messages, 64)
    assert len(chat_format.render(tok, cut, add_generation_prompt=True).ids) + 64 <= small.context
    assert store.DEFAULT_INSTRUCTIONS.startswith(cut[0]["content"]) and cut[1:] == messages[1:]
    assert labeling.fit_instructions(SimpleNamespace(tok=tok, context=40), messages, 64) is None


def test_the_tables_match_their_migration(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from llmos import db

    engine = db.open_database(database_url)
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), db.Base.metadata)
    engine.dispose()
    assert [d for d in diff if "label_" in str(d)] == []
