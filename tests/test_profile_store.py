"""Profiles kept in the database: stored, edited, renamed and deleted (SQLite and PostgreSQL),
exported to TOML and imported back, through `llmos profile`, through the API of `llmos serve`
(served at once as models of their own names) and through the /profiles editor in headless
Chromium."""

from __future__ import annotations

import httpx
import pytest
from conftest import random_checkpoint
from test_serve import run_server

from llmos.agent import profiles
from llmos.agent.profile_store import ProfileExists, ProfileStore, find
from llmos.cli import main


def tea(name="tea", model="MODEL", **fields) -> profiles.Profile:
    return profiles.parse({"name": name, "model": model, "description": "Makes tea.",
                           "instructions": "Answer about tea.", **fields})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return random_checkpoint(root, ["tea and biscuits, " * 20], vocab=300, max_seq_len=64)


def test_to_toml_and_back_is_the_same_profile():
    p = tea(tools=["browse", "remember"], browse={"hosts": ["docs.python.org"]},
            sampling={"temperature": 0.2}, search={"passages": 2, "chars": 300},
            think={"strategy": "best-of", "n": 4})
    again = profiles.from_toml(p.to_toml())
    assert again.to_dict() == p.to_dict() and again.hosts == ["docs.python.org"]
    assert again.think == {"strategy": "best-of", "n": 4}
    assert profiles.parse({"name": "x", "model": "m", "tools": []}).to_dict()["tools"] == []
    assert "database" not in tea().to_dict()  # defaults are left out of the file


def test_store_saves_edits_renames_and_deletes(database_url):
    store = ProfileStore.open(database_url)
    assert store.save(tea()) is True
    with pytest.raises(ProfileExists, match="stored already"):
        store.save(tea(description="Another."))  # nothing is overwritten unasked
    assert store.get("tea").description == "Makes tea."
    assert store.save(tea(description="Green tea."), replace=True) is False
    store.save(tea("coffee"))
    with pytest.raises(ProfileExists, match="'coffee' is stored already"):
        store.rename("tea", tea("coffee"))  # a rename onto another profile is refused
    store.rename("tea", tea("green-tea", description="Green tea."))
    assert store.names() == ["coffee", "green-tea"] and store.get("tea") is None
    assert [p.description for p in store.all()] == ["Makes tea.", "Green tea."]
    assert store.delete("coffee") and not store.delete("coffee")
    assert find("green-tea", database_url).name == "green-tea"
    with pytest.raises(profiles.ProfileError, match="stored in .*: green-tea"):
        find("coffee", database_url)


def test_profile_command_imports_exports_lists_and_deletes(tmp_path, capsys):
    db = str(tmp_path / "llmos.db")
    main(["profile", "list", "--db", db])
    assert "stdlib-helper" in capsys.readouterr().out
    assert not (tmp_path / "llmos.db").exists()  # listing makes no database
    src = tmp_path / "tea.toml"
    src.write_text(tea().to_toml())
    main(["profile", "import", str(src), "--db", db])
    def fails(argv, message):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err

    fails(["profile", "import", str(src), "--db", db], "stored already; --replace overwrites")
    main(["profile", "import", str(src), "--db", db, "--replace"])
    main(["profile", "list", "--db", db])
    assert "tea                              database  Makes tea." in capsys.readouterr().out
    out = tmp_path / "out.toml"
    main(["profile", "export", "tea", "--db", db, "-o", str(out)])
    assert profiles.load(str(out)).to_dict() == tea().to_dict()
    fails(["profile", "export", "stdlib-helper", "--db", db, "-o", str(out)],
          "give --force")  # a file is never overwritten unasked
    main(["profile", "delete", "tea", "--db", db])
    fails(["profile", "delete", "tea", "--db", db], "no profile 'tea'")
    fails(["profile", "delete", "tea", "--db", str(tmp_path / "typo.db")], "no database at")


def test_stored_profiles_are_served_and_edited_live(tmp_path, checkpoint):
    from llmos.serve.app import create_app
    from llmos.serve.served import load_models

    db = str(tmp_path / "llmos.db")
    ProfileStore.open(db).save(tea(model=str(checkpoint)))
    ProfileStore.open(db).save(tea("gone", model=str(tmp_path / "deleted-run")))
    models = load_models([f"base={checkpoint}"], max_batch=2)
    with run_server(create_app(models, database=db)) as url:
        def ids():
            return [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]

        assert ids() == ["base", "tea"]  # a stored profile is served from the start
        listing = {p["name"]: p for p in httpx.get(f"{url}/v1/llmos/profiles").json()["data"]}
        assert listing["tea"]["served"] and listing["tea"]["source"] == "database"
        assert "not found" in listing["gone"]["problem"]  # stored, not served, and why

        coffee = tea("coffee", model=str(checkpoint)).to_dict()
        r = httpx.post(f"{url}/v1/llmos/profiles", json=coffee)
        assert r.status_code == 201 and "coffee" in ids()
        r = httpx.post(f"{url}/v1/chat/completions", json={
            "model": "coffee", "max_tokens": 3,
            "messages": [{"role": "user", "content": "tea?"}]})
        assert r.status_code == 200, r.text
        assert "think" not in r.json()  # no System-2 setting: a plain answer
        thinker = {**coffee, "name": "thinker", "think": {"strategy": "vote", "n": 2}}
        assert httpx.post(f"{url}/v1/llmos/profiles", json=thinker).status_code == 201
        r = httpx.post(f"{url}/v1/chat/completions", json={
            "model": "thinker", "max_tokens": 3,
            "messages": [{"role": "user", "content": "tea?"}]})
        assert r.json()["think"]["strategy"] == "vote" and r.json()["think"]["samples"] == 2
        assert httpx.post(f"{url}/v1/llmos/profiles", json=coffee).status_code == 409
        assert httpx.post(f"{url}/v1/llmos/profiles", json={**coffee, "name": "base"}
                          ).status_code == 409  # the name of a served checkpoint
        bad = httpx.post(f"{url}/v1/llmos/profiles", json={**coffee, "name": "x",
                                                            "tools": ["teleport"]})
        assert bad.status_code == 400 and "unknown tool(s) teleport" in bad.text
        missing = httpx.post(f"{url}/v1/llmos/profiles", json={
            **coffee, "name": "y", "model": str(tmp_path / "nope")})
        assert missing.status_code == 400 and "not found" in missing.text
        assert ProfileStore.open(db).get("y") is None  # refused: nothing stored

        r = httpx.put(f"{url}/v1/llmos/profiles/coffee",
                      json={**coffee, "name": "espresso", "description": "Strong."})
        assert r.status_code == 200 and "espresso" in ids() and "coffee" not in ids()
        card = httpx.get(f"{url}/v1/models/espresso").json()
        assert card["llmos_profile"]["description"] == "Strong."
        toml = httpx.get(f"{url}/v1/llmos/profiles/espresso/export")
        assert 'filename="espresso.toml"' in toml.headers["content-disposition"]
        assert profiles.from_toml(toml.text).description == "Strong."

        assert httpx.delete(f"{url}/v1/llmos/profiles/espresso").status_code == 200
        assert "espresso" not in ids() and ProfileStore.open(db).get("espresso") is None
        # a row named like a served checkpoint, written by another process meanwhile: deleting
        # it does not take the checkpoint away
        ProfileStore.open(db).save(tea("base", model=str(checkpoint)))
        assert httpx.delete(f"{url}/v1/llmos/profiles/base").status_code == 200
        assert "base" in ids()
        r = httpx.post(f"{url}/v1/llmos/profiles/import", content=toml.text)
        assert r.status_code == 415  # as a form or a no-cors fetch from another site sends it
        assert "espresso" not in ids()
        as_toml = {"Content-Type": "application/toml"}
        r = httpx.post(f"{url}/v1/llmos/profiles/import", content=toml.text, headers=as_toml)
        assert r.status_code == 201 and "espresso" in ids()  # back from its file
        r = httpx.post(f"{url}/v1/llmos/profiles/import", content=toml.text, headers=as_toml)
        assert r.status_code == 409
        r = httpx.post(f"{url}/v1/llmos/profiles/import?replace=true", headers=as_toml,
                       content=toml.text.replace("Strong.", "Stronger."))
        assert r.status_code == 201
        assert ProfileStore.open(db).get("espresso").description == "Stronger."
        r = httpx.post(f"{url}/v1/llmos/profiles/import", content="name = [", headers=as_toml)
        assert r.status_code == 400 and "not valid TOML" in r.text
    with run_server(create_app(load_models([str(checkpoint)], max_batch=2))) as url:
        r = httpx.get(f"{url}/v1/llmos/profiles")
        assert r.status_code == 404 and "--db" in r.json()["error"]["message"]


def test_the_profile_editor_creates_edits_duplicates_and_deletes(tmp_path, checkpoint,
                                                                  browser):
    from llmos.serve.app import create_app
    from llmos.serve.served import add_profiles, load_models

    db = str(tmp_path / "llmos.db")
    shipped = tmp_path / "file.toml"
    shipped.write_text(tea("from-file", model=str(checkpoint)).to_toml())
    models = load_models([str(checkpoint)], max_batch=2)
    add_profiles(models, [str(shipped)], max_batch=2)
    store = ProfileStore.open(db)
    with run_server(create_app(models, database=db)) as url:
        page = browser.new_page()
        page.on("dialog", lambda d: d.accept())  # the delete confirmation
        page.goto(f"{url}/profiles")

        def click(selector, then):  # click, and wait for the page to say `then`
            page.evaluate("document.getElementById('status').textContent = ''")
            page.click(selector)
            page.wait_for_function("t => document.getElementById('status').textContent"
                                   ".startsWith(t)", arg=then)

        page.click("#new")
        page.fill("#f-name", "kettle")
        page.fill("#f-model", str(checkpoint))
        page.fill("#f-instructions", "Boil water.")
        page.check("#f-tools input[value=remember]")
        click("#save", "saved kettle")
        saved = store.get("kettle")
        assert saved.instructions == "Boil water." and "remember" in saved.tools
        assert "★" in page.locator("#f-tools label", has_text="remember").inner_text()

        page.fill("#f-description", "Boils.")
        page.fill("#f-temperature", "0.3")
        page.select_option("#f-think", "vote")
        page.fill("#f-think-n", "4")
        click("#save", "saved kettle")
        assert store.get("kettle").description == "Boils."
        assert store.get("kettle").sampling == {"temperature": 0.3}
        assert store.get("kettle").think == {"strategy": "vote", "n": 4}

        click("#duplicate", "duplicated as kettle-copy")
        assert store.get("kettle-copy").description == "Boils."

        page.locator("#profile-list li", has_text="from-file").click()
        page.wait_for_function("document.getElementById('f-name').value == 'from-file'")
        assert page.locator("#save").is_disabled()  # a file's profile is read-only here
        click("#duplicate", "duplicated as from-file-copy")
        assert store.get("from-file-copy").instructions == "Answer about tea."

        page.locator("#profile-list li", has_text="kettle-copy").click()
        page.wait_for_function("document.getElementById('f-name').value == 'kettle-copy'")
        click("#delete", "deleted kettle-copy")
        assert store.get("kettle-copy") is None
        served = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert "kettle" in served and "kettle-copy" not in served

        page.locator("#profile-list li", has_text="kettle").first.click()
        page.wait_for_function("document.getElementById('f-name').value == 'kettle'")
        page.fill("#f-model", str(tmp_path / "no-such-run"))
        click("#save", "profile 'kettle': model")  # the server's reason, shown; nothing changed
        assert store.get("kettle").model == str(checkpoint)
        page.close()


def test_a_stored_profile_that_cannot_be_read_does_not_stop_the_server(tmp_path, checkpoint):
    import sqlalchemy as sa

    from llmos.agent.profile_store import table
    from llmos.serve.app import create_app
    from llmos.serve.served import load_models

    db = str(tmp_path / "llmos.db")
    store = ProfileStore.open(db)
    store.save(tea(model=str(checkpoint)))
    with store.engine.begin() as c:  # as an older or newer llmos might have written it
        c.execute(sa.insert(table).values(name="odd", body='{"name": "odd", "colour": 1}',
                                          created=0, updated=0))
    with run_server(create_app(load_models([str(checkpoint)], max_batch=2),
                               database=db)) as url:
        listing = {p["name"]: p for p in httpx.get(f"{url}/v1/llmos/profiles").json()["data"]}
        assert listing["tea"]["served"] and "unknown field" in listing["odd"]["problem"]
        r = httpx.get(f"{url}/v1/llmos/profiles/odd")
        assert r.status_code == 409 and "cannot be read" in r.text
