"""The arena pages of `llmos serve --db`: a battle round trip in headless Chromium against a real
server, votes in a real database (SQLite and PostgreSQL), the rules that keep votes honest
(identity reveals, one vote per battle, per-voter limits), the leaderboard and the export."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import test_serve
from conftest import ARTIFACTS
from sqlalchemy import inspect, select
from test_serve import run_server

from llmos import db
from llmos.agent.peers import parse_peer
from llmos.evals import battles

memorised = test_serve.memorised  # the session's tiny model that recites its conversations
HELLO_ANSWER = "Hello! How can I help you today?"


@pytest.fixture(scope="module")
def remote(memorised):
    """Another `llmos serve` on loopback: the arena's OpenAI-endpoint contestant."""
    from llmos.serve.app import create_app
    from llmos.serve.served import load_models

    with run_server(create_app(load_models([f"memo={memorised}"], max_batch=4))) as url:
        yield url


def arena_app(memorised, database_url, names, extra=(), **settings):
    from llmos.serve.app import create_app
    from llmos.serve.arena import ArenaSettings, mount_arena
    from llmos.serve.served import load_models

    models = load_models([f"{n}={memorised}" for n in names], max_batch=4)
    app = create_app(models)
    mount_arena(app, database_url, models, [parse_peer(s) for s in extra],
                settings=ArenaSettings(temperature=0.0, max_tokens=64, **settings))
    return app


def battle(client: httpx.Client, prompt: str) -> tuple[str, dict, dict]:
    """Start a battle through the API: (id, {"a": text, "b": text}, the end event)."""
    texts, end, bid = {"a": "", "b": ""}, {}, None
    with client.stream("POST", "/arena/api/battles", json={"prompt": prompt}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            bid = ev.get("battle", bid)
            if "delta" in ev:
                texts[ev["side"]] += ev["delta"]
            if ev.get("end"):
                end = ev
    return bid, texts, end


def vote(client: httpx.Client, bid: str, winner: str) -> httpx.Response:
    return client.post(f"/arena/api/battles/{bid}/vote", json={"winner": winner})


def rows(database_url) -> list:
    from llmos.serve.arena import ArenaBattle

    engine = db.connect(database_url)
    with db.session(engine) as s:
        out = s.scalars(select(ArenaBattle).order_by(ArenaBattle.tstamp)).all()
    engine.dispose()
    return out


# ---- the browser round trip ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(browser):
    return browser.new_context(viewport={"width": 1100, "height": 800}).new_page()


def play_round(page, prompt: str, button: str) -> tuple[str, str]:
    page.fill("#input", prompt)
    page.press("#input", "Enter")
    page.wait_for_function("document.getElementById('side-a').dataset.done == '1' && "
                           "document.getElementById('side-b').dataset.done == '1'",
                           timeout=30_000)
    page.wait_for_selector("#votes:not([hidden])", timeout=10_000)
    assert page.locator(".name").all_inner_texts() == ["", ""]  # anonymous until the vote
    page.click(button)
    page.wait_for_selector("#side-b .name:not([hidden])", timeout=10_000)
    a, b = (t.removeprefix("· ") for t in page.locator(".name").all_inner_texts())
    return a, b


def test_arena_round_trip_in_the_browser(memorised, remote, database_url, page, tmp_path):
    from llmos.serve.app import create_app
    from llmos.serve.served import load_models

    models = load_models([f"alpha={memorised}"], max_batch=4)
    app = create_app(models, database=database_url,  # the hook `llmos serve --db` uses
                     contestants=[parse_peer(f"beta=openai:{remote}/v1#memo")])
    with run_server(app) as url:
        page.goto(url + "/arena")
        page.wait_for_function("document.getElementById('model-count').textContent"
                               ".includes('2 models')")
        voter = next(c["value"] for c in page.context.cookies()
                     if c["name"] == "llmos_arena_voter")
        a, b = play_round(page, "Hello!", "#vote-a")
        assert {a, b} == {"alpha", "beta"}
        assert "counts" in page.inner_text("#status")
        assert page.locator("#side-a").get_attribute("class").split().count("winner") == 1
        answers = page.locator(".answer").all_inner_texts()
        assert all(answers)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "arena_battle.png"), full_page=True)

        page.click("#new-round")
        assert page.locator(".answer").all_inner_texts() == ["", ""]
        assert page.locator("#votes").is_hidden()
        a2, b2 = play_round(page, "What is 347 * 29?", "#vote-bothbad")

        stored = rows(database_url)
        assert [(r.model_a, r.model_b, r.winner) for r in stored] == [
            (a, b, "model_a"), (a2, b2, "tie (bothbad)")]
        first = stored[0]
        assert first.voter == voter and first.anony is True and first.turn == 1
        assert first.conversation_a == [{"role": "user", "content": "Hello!"},
                                        {"role": "assistant", "content": answers[0].strip()}]
        assert first.conversation_b[-1]["content"] == answers[1].strip()

        page.goto(url + "/arena/leaderboard")
        page.wait_for_selector("#board:not([hidden])", timeout=30_000)
        shown = page.locator("#board tbody td:nth-child(2)").all_inner_texts()
        assert sorted(shown) == ["alpha", "beta"]
        assert "2 votes, 2 counted" in page.inner_text("#summary")
        page.wait_for_function("document.getElementById('plot').naturalWidth > 0")
        page.screenshot(path=str(ARTIFACTS / "arena_leaderboard.png"), full_page=True)

        png = httpx.get(url + "/arena/leaderboard.png", timeout=30)
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        exported = httpx.get(url + "/arena/api/battles.jsonl", timeout=30).text
    (tmp_path / "votes.jsonl").write_text(exported)
    got, _ = battles.read_battles(tmp_path / "votes.jsonl")
    assert [(g["model_a"], g["winner"], g["voter"]) for g in got] == [
        (a, "model_a", voter), (a2, "tie (bothbad)", voter)]


# ---- the rules, through the HTTP API -------------------------------------------------------------


def test_identity_reveals_are_stored_but_do_not_count(memorised, database_url):
    # "today" is a word of the memorised greeting: any answer to "Hello!" names that model
    app = arena_app(memorised, database_url, ["alpha", "today"])
    with run_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        bid, texts, end = battle(c, "Hello!")
        assert texts == {"a": HELLO_ANSWER, "b": HELLO_ANSWER} and end["votable"]
        r = vote(c, bid, "model_a").json()
        assert r["counted"] is False and "names its model" in r["reason"]
        assert {r["model_a"], r["model_b"]} == {"alpha", "today"}
        bid, texts, _ = battle(c, "What is 347 * 29?")
        assert texts["a"] == texts["b"] == "347 * 29 = 10063."
        assert vote(c, bid, "tie").json()["counted"] is True
        board = c.get("/arena/api/leaderboard", params={"bootstrap": 0}).json()
        assert board["votes"] == 2 and board["counted"] == 1
        assert board["dropped"]["reveals_identity"] == 1
        assert len(c.get("/arena/api/battles.jsonl").text.splitlines()) == 2  # kept in the DB


def test_vote_rules(memorised, database_url):
    app = arena_app(memorised, database_url, ["alpha", "beta"])
    with run_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        bid, _, _ = battle(c, "Hello!")
        assert vote(c, bid, "draw").status_code == 400
        assert vote(c, "0" * 32, "tie").status_code == 404
        with httpx.Client(base_url=url, timeout=60) as stranger:  # another voter's battle
            assert vote(stranger, bid, "model_a").status_code == 403
        assert vote(c, bid, "model_a").status_code == 200
        assert vote(c, bid, "model_b").status_code == 409  # one vote per battle
        assert c.post("/arena/api/battles", json={"prompt": ""}).status_code == 400
        assert c.post("/arena/api/battles", json={"prompt": " \n"}).status_code == 400
        assert c.post("/arena/api/battles", json={"prompt": "x" * 5000}).status_code == 400


def test_a_failed_answer_cannot_be_voted_on(memorised, database_url):
    app = arena_app(memorised, database_url, ["alpha"],
                    extra=["dead=openai:http://127.0.0.1:9/v1#m"])  # nothing listens on 9
    with run_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        bid, texts, end = battle(c, "Hello!")
        assert end == {"end": True, "votable": False}
        assert HELLO_ANSWER in texts.values()  # the other side still answered
        assert vote(c, bid, "model_a").status_code == 404  # the battle is gone
    assert rows(database_url) == []


def test_one_voter_cannot_flood_the_board(memorised, database_url):
    from llmos.serve.arena import ArenaBattle, client_hash

    app = arena_app(memorised, database_url, ["alpha", "beta"], votes_per_hour=2,
                    client_votes_per_hour=3, battles_per_minute=4, voter_cap=1)
    with run_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        ids = [battle(c, "Hello!")[0] for _ in range(4)]
        r = c.post("/arena/api/battles", json={"prompt": "Hello!"})
        assert r.status_code == 429 and "battles a minute" in r.json()["error"]["message"]
        assert [vote(c, b, "model_a").status_code for b in ids[:2]] == [200, 200]
        r = vote(c, ids[2], "model_a")
        assert r.status_code == 429 and "per voter" in r.json()["error"]["message"]

        # a fresh cookie is a new voter, but its address is the same one
        other = "ab" * 16
        with httpx.Client(base_url=url, timeout=60, cookies={"llmos_arena_voter": other}) as o:
            r = o.post("/arena/api/battles", json={"prompt": "Hello!"})
            assert r.status_code == 429  # this address started 4 battles this minute
            engine = db.connect(database_url)
            conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi"}]
            with db.session(engine) as s:  # two battles it was shown two minutes ago
                for k in range(2):
                    s.add(ArenaBattle(id=f"{k:032x}", model_a="beta", model_b="alpha",
                                      voter=other, client=client_hash("127.0.0.1"),
                                      conversation_a=conv, conversation_b=conv, turn=1,
                                      anony=True, tstamp=time.time() - 120))
            engine.dispose()
            assert vote(o, f"{0:032x}", "model_b").status_code == 200
            r = vote(o, f"{1:032x}", "model_b")
            assert r.status_code == 429 and "one address" in r.json()["error"]["message"]

        board = c.get("/arena/api/leaderboard", params={"bootstrap": 0}).json()
        assert board["votes"] == 3 and board["counted"] == 2  # voter_cap: 1 per voter and pair
        assert board["dropped"]["over_voter_cap"] == 1


def test_export_command_and_schema(memorised, database_url, tmp_path, capsys):
    from llmos.cli import main
    from llmos.serve.arena import ArenaBattle

    app = arena_app(memorised, database_url, ["alpha", "beta"])
    with run_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        for winner in ("model_a", "tie"):
            bid, _, _ = battle(c, "Hello!")
            vote(c, bid, winner)
        battle(c, "Hello!")  # not voted: not exported
    out = tmp_path / "votes.jsonl"
    main(["arena", "export", "--db", database_url, "--out", str(out)])
    assert "exported 2 votes" in capsys.readouterr().err
    got, _ = battles.read_battles(out)
    assert [g["winner"] for g in got] == ["model_a", "tie"]
    assert all(g["anony"] and g["judge"].startswith("arena_user_") for g in got)
    main(["arena", "leaderboard", str(out), "--bootstrap", "0"])
    assert "alpha" in capsys.readouterr().out
    # the ORM class and the migration agree
    engine = db.connect(database_url)
    columns = {c["name"] for c in inspect(engine).get_columns("arena_battles")}
    engine.dispose()
    assert columns == set(ArenaBattle.__table__.columns.keys())


def test_serve_arena_flags(memorised, capsys):
    from llmos.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", str(memorised), "--arena-contestant",
              "x=openai:http://127.0.0.1:9/v1#m"])
    assert e.value.code == 2
    assert "--arena-contestant needs --db" in capsys.readouterr().err
