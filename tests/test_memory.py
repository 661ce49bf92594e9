"""Memory: facts saved per user in the database (SQLite and PostgreSQL), the remember / recall
tools, and end to end through `llmos serve`: a fact the model saved survives a server restart,
and a deleted one is gone from the next answer."""

from __future__ import annotations

import json

import pytest
import test_serve
from test_serve import run_server

from llmos.agent.memory import MemoryStore, memory_tools, with_memories
from llmos.agent.tools import call_tool
from llmos.cli import main

FACT = "The user's name is Ada."


def test_store_tools_and_restart(database_url):
    store = MemoryStore.open(database_url)
    first = store.add("ada", "Likes  green tea.")
    assert store.add("ada", "Likes green tea.") == first  # saved once
    store.add("ada", FACT)
    store.add("bob", "Owns a kettle.")
    assert [m["text"] for m in store.list("ada")] == [FACT, "Likes green tea."]

    tools = memory_tools(MemoryStore.open(database_url), "ada")  # a restart: a new connection
    assert call_tool("recall", {"query": "what tea"}, tools) == "- Likes green tea."
    assert call_tool("recall", {"query": "kettle"}, tools) == "nothing saved about that"
    assert call_tool("remember", {"fact": "Lives in Leeds."}, tools) == "saved"
    assert call_tool("remember", {"fact": " "}, tools) == "error: an empty memory"
    assert "at most 500" in call_tool("remember", {"fact": "x" * 501}, tools)

    assert not store.forget("bob", first)  # one user cannot delete another's
    assert store.forget("ada", first)
    assert [m["text"] for m in store.list("ada")] == ["Lives in Leeds.", FACT]
    assert store.clear("ada") == 2 and store.list("ada") == []
    assert [m["text"] for m in store.list("bob")] == ["Owns a kettle."]


def test_memories_join_the_system_message():
    saved = [{"text": FACT}]
    ask = [{"role": "user", "content": "Hi"}]
    assert with_memories(ask, saved)[0] == {
        "role": "system", "content": f"What you know about the user:\n- {FACT}"}
    own = with_memories([{"role": "system", "content": "Be brief."}, *ask], saved)
    assert own[0]["content"] == f"Be brief.\n\nWhat you know about the user:\n- {FACT}"
    assert with_memories(ask, []) == ask


def test_memory_command(tmp_path, capsys):
    db = str(tmp_path / "m.db")
    main(["memory", "add", FACT, "--user", "ada", "--db", db])
    main(["memory", "list", "--user", "ada", "--db", db])
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.endswith(FACT)
    with pytest.raises(SystemExit):
        main(["memory", "forget", "999", "--user", "ada", "--db", db])
    assert "no memory 999" in capsys.readouterr().err
    main(["memory", "forget", line.split()[0], "--user", "ada", "--db", db])
    main(["memory", "list", "--user", "ada", "--db", db])
    assert "no memories for 'ada'" in capsys.readouterr().out


@pytest.fixture(scope="module")
def pal_model(tmp_path_factory):
    """A checkpoint that learned three conversations by heart: told a name, it calls remember;
    asked for it, it answers from its memories or says it does not know."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "remember", "arguments": {"fact": FACT}}}
    tell = [{"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "saved"},
            {"role": "assistant", "content": "I will remember that."}]
    known = [{"role": "system", "content": f"What you know about the user:\n- {FACT}"},
             {"role": "user", "content": "What is my name?"},
             {"role": "assistant", "content": "Your name is Ada."}]
    unknown = [{"role": "user", "content": "What is my name?"},
               {"role": "assistant", "content": "I do not know your name."}]
    model, loss = test_serve.build_memorised_checkpoint(
        tmp_path_factory.mktemp("memo") / "memo", steps=150,
        memorised=[(tell, None), (known, None), (unknown, None)])
    assert loss < 0.05, f"the test model did not memorise its conversations (loss {loss})"
    return model


def pal_profile(tmp_path, model) -> tuple[str, str]:
    db = str(tmp_path / "llmos.db")
    profile = tmp_path / "pal.toml"
    profile.write_text(f'name = "pal"\nmodel = {json.dumps(str(model))}\n'
                       f'database = {json.dumps(db)}\ntools = ["remember", "recall"]\n')
    return str(profile), db


def test_a_saved_fact_survives_a_restart_and_a_deleted_one_is_gone(tmp_path, pal_model):
    from openai import OpenAI

    from llmos.serve.app import create_app
    from llmos.serve.served import add_profiles

    profile, db = pal_profile(tmp_path, pal_model)

    def ask(text: str, user: str = "ada") -> str:
        models: dict = {}
        add_profiles(models, [profile], max_batch=2)  # a fresh server each time
        with run_server(create_app(models)) as url:
            client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
            r = client.chat.completions.create(
                model="pal", messages=[{"role": "user", "content": text}], temperature=0,
                user=user)
        for m in models.values():
            m.scheduler.close()
        return r.choices[0].message.content

    assert ask("What is my name?") == "I do not know your name."
    assert ask("My name is Ada.") == "I will remember that."  # the model called remember
    assert [m["text"] for m in MemoryStore.open(db).list("ada")] == [FACT]
    assert ask("What is my name?") == "Your name is Ada."  # after a restart
    assert ask("What is my name?", user="bob") == "I do not know your name."
    main(["memory", "clear", "--user", "ada", "--db", db])
    assert ask("What is my name?") == "I do not know your name."


def test_the_memory_page_lists_and_deletes(tmp_path, browser):
    """/memory in headless Chromium: one user's memories, and a delete that reaches the
    database; the API routes behind it refuse what is not there."""
    import httpx

    from llmos.serve.app import create_app

    db = str(tmp_path / "llmos.db")
    store = MemoryStore.open(db)
    store.add("ada", FACT)
    store.add("ada", "Likes green tea.")
    store.add("bob", "Owns a kettle.")
    with run_server(create_app({}, database=db)) as url:
        page = browser.new_page()
        page.goto(f"{url}/memory")
        page.fill("#user", "ada")
        page.click("#who button[type=submit]")
        page.wait_for_function("document.getElementById('status').textContent"
                               ".startsWith('2 memories')")
        assert page.locator("#memories .text").all_inner_texts() == ["Likes green tea.", FACT]
        page.locator("#memories li", has_text="green tea").get_by_role("button").click()
        page.wait_for_function("document.getElementById('status').textContent"
                               ".startsWith('1 memory for ada')")
        assert [m["text"] for m in store.list("ada")] == [FACT]
        assert [m["text"] for m in store.list("bob")] == ["Owns a kettle."]
        page.close()
        r = httpx.delete(f"{url}/v1/llmos/memories/999", params={"user": "ada"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "memory_not_found"
    with run_server(create_app({})) as url:  # no database, no profile with memory
        r = httpx.get(f"{url}/v1/llmos/memories")
        assert r.status_code == 404 and "keeps no memories" in r.json()["error"]["message"]


def test_the_web_chat_asks_before_a_memory_is_saved(tmp_path, pal_model, browser):
    """A tool with side effects waits for the user in the web chat: declined, nothing is
    saved; allowed, the memory is saved and the answer goes on from the tool's result."""
    import httpx

    from llmos.serve.app import create_app
    from llmos.serve.served import add_profiles

    profile, db = pal_profile(tmp_path, pal_model)
    models: dict = {}
    add_profiles(models, [profile], max_batch=2)
    store = MemoryStore.open(db)
    with run_server(create_app(models)) as url:
        page = browser.new_page()
        page.goto(url)
        page.click("#toggle-settings")
        page.fill("#temperature", "0")
        page.fill("#user", "ada")
        page.fill("#input", "My name is Ada.")
        page.click("#send")
        box = page.locator(".tool.confirm")
        box.wait_for()
        assert "remember" in box.locator("summary").inner_text()
        assert store.list("ada") == []  # nothing runs before the user says so
        box.get_by_role("button", name="Deny").click()
        page.wait_for_selector(".tool.confirm pre")
        assert "declined" in box.locator("pre").inner_text()
        page.wait_for_function("document.querySelectorAll('.msg.assistant[data-done]')"
                               ".length == 2")  # the model read the refusal and answered
        assert store.list("ada") == []

        page.click("#new-chat")
        page.fill("#input", "My name is Ada.")
        page.click("#send")
        page.locator(".tool.confirm").get_by_role("button", name="Allow").click()
        page.wait_for_function("document.querySelectorAll('.msg.assistant[data-done]')"
                               ".length == 2")
        assert [m["text"] for m in store.list("ada")] == [FACT]
        assert "saved" in page.locator(".tool.confirm pre").inner_text()
        last = page.locator(".msg.assistant").last.locator(".content").inner_text()
        assert last == "I will remember that."
        page.close()
        # Only calls that wait for the user run through the confirmation route.
        r = httpx.post(f"{url}/v1/llmos/tool_calls", json={
            "model": "pal", "name": "calculator", "arguments": {"expression": "1+1"}})
        assert r.status_code == 400 and r.json()["error"]["code"] == "not_confirmable"
    for m in models.values():
        m.scheduler.close()


def test_the_terminal_asks_before_a_tool_with_side_effects(tmp_path):
    """`llmos chat` at a terminal: a "no" reaches the model as a refusal and saves nothing; a
    "yes" runs the call; tools without side effects, or not granted, are not asked about."""
    from llmos.agent.tools import BUILTIN_TOOLS, with_confirmation

    store = MemoryStore.open(str(tmp_path / "llmos.db"))
    asked, answers = [], iter([False, True])

    def ask(name, args):
        asked.append((name, args))
        return next(answers)

    tools = with_confirmation({**BUILTIN_TOOLS, **memory_tools(store, "ada")}, ask,
                              {"remember", "recall", "calculator"})
    call = {"fact": FACT}
    assert call_tool("remember", call, tools) == "error: the user declined this call"
    assert store.list("ada") == []
    assert "saved" in call_tool("remember", call, tools)
    assert [m["text"] for m in store.list("ada")] == [FACT]
    assert call_tool("calculator", {"expression": "2+2"}, tools) == "4"
    assert asked == [("remember", call), ("remember", call)]  # recall and math never ask
