"""Custom GPTs: profiles from TOML, checked; served as models of their own name, with their
instructions and their search_knowledge tool running on the server; and in `llmos chat`."""

from __future__ import annotations

import json

import pytest
import test_serve
from test_serve import run_server

from llmos.agent import profiles
from llmos.agent.knowledge import KnowledgeBase
from llmos.agent.knowledge_tool import knowledge_tool
from llmos.agent.memory import MemoryStore
from llmos.agent.tools import call_tool
from llmos.data.builtin.lookup import INSTRUCTIONS

TEA = '"""Tea."""\n\ndef steep(leaves):\n    """Soak the leaves in hot water."""\n    return 1\n'
QUESTION = "What does tea.steep do?"
ANSWER = "`tea.steep` soaks the leaves in hot water. [tea.py#1]"


def write_profile(path, **fields):
    base = {"name": "tea-helper", "model": "MODEL", "instructions": INSTRUCTIONS,
            "knowledge": ["tea"], "tools": ["search_knowledge", "calculator"]}
    base.update(fields)
    lines = [f"{k} = {json.dumps(v)}" for k, v in base.items() if not isinstance(v, dict)]
    for k, v in base.items():
        if isinstance(v, dict):
            lines += [f"[{k}]"] + [f"{a} = {json.dumps(b)}" for a, b in v.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_shipped_stdlib_helper_matches_its_training():
    p = profiles.load("stdlib-helper")
    assert p.instructions == INSTRUCTIONS  # the lookup conversations' system message
    assert p.knowledge == ["stdlib"] and "search_knowledge" in p.tools
    assert (p.passages, p.passage_chars) == (1, 240)
    assert "stdlib-helper" in profiles.shipped()


@pytest.mark.parametrize("fields, message", [
    ({"tools": ["search_knowledge", "browse_everything"]}, "unknown tool(s) browse_everything"),
    ({"tools": ["calculator"]}, "add it to tools"),
    ({"knowledge": []}, "needs knowledge bases"),
    ({"color": "blue"}, "unknown field(s) color"),
    ({"name": "../x"}, "bad name"),
    ({"model": ""}, "'model' is required"),
    ({"sampling": {"temperature": -1}}, "temperature must be a number >= 0"),
    ({"search": {"passages": 0}}, "passages must be 1-20"),
    ({"think": {"strategy": "ponder"}}, "strategy must be one of greedy"),
    ({"think": {"strategy": "vote", "n": 100}}, "n must be 1-64"),
    ({"think": {"strategy": "vote", "depth": 2}}, "takes strategy, n and answer_kind"),
])
def test_bad_profiles_say_what_is_wrong(tmp_path, fields, message):
    path = write_profile(tmp_path / "p.toml", **fields)
    with pytest.raises(profiles.ProfileError, match=message.replace("(", r"\(").replace(
            ")", r"\)").replace(".", r"\.")):
        profiles.load(str(path))


def test_missing_files_and_bases(tmp_path):
    with pytest.raises(profiles.ProfileError, match="not found"):
        profiles.load(str(tmp_path / "nope.toml"))
    with pytest.raises(profiles.ProfileError, match="one of: .*stdlib-helper"):
        profiles.load("no-such-profile")
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(profiles.ProfileError, match="not valid TOML"):
        profiles.load(str(tmp_path / "bad.toml"))
    p = profiles.load(str(write_profile(tmp_path / "p.toml")))
    with pytest.raises(profiles.ProfileError, match="no database at .*missing.db, where its "
                       "knowledge bases \\(tea\\)"):
        p.build_tools(str(tmp_path / "missing.db"))  # a mistyped path is not a new database
    assert not (tmp_path / "missing.db").exists()
    MemoryStore.open(str(tmp_path / "other.db"))  # a database without that knowledge base
    with pytest.raises(profiles.ProfileError, match="no knowledge base 'tea'"):
        p.build_tools(f"sqlite:///{tmp_path / 'other.db'}")


def test_instructions_come_first():
    p = profiles.parse({"name": "x", "model": "m", "instructions": "Be brief."})
    ask = [{"role": "user", "content": "Hi"}]
    assert p.messages(ask) == [{"role": "system", "content": "Be brief."}, *ask]
    own = [{"role": "system", "content": "Speak French."}, *ask]
    assert p.messages(own)[0]["content"] == "Be brief.\n\nSpeak French."
    assert profiles.parse({"name": "x", "model": "m"}).messages(ask) == ask


@pytest.fixture(scope="module")
def tea_profile(tmp_path_factory):
    """A knowledge base holding tea.py (cited as tea.py), a model that memorised one lookup
    conversation under the stdlib helper's instructions, and a profile joining them."""
    import os

    root = tmp_path_factory.mktemp("profile")
    (root / "tea.py").write_text(TEA)
    cwd = os.getcwd()
    os.chdir(root)  # the source is named as given: "tea.py"
    try:
        kb = KnowledgeBase.open(str(root / "k.db"), "tea", create=True)
        kb.add(["tea.py"])
    finally:
        os.chdir(cwd)
    tool = knowledge_tool([kb], 1, 240)
    passage = call_tool("search_knowledge", {"query": "tea.steep"}, {tool.name: tool})
    assert passage.startswith("[tea.py#1] tea.steep: Soak the leaves")
    call = {"id": "call_1", "type": "function",
            "function": {"name": "search_knowledge", "arguments": {"query": "tea.steep"}}}
    lookup = [{"role": "system", "content": INSTRUCTIONS},
              {"role": "user", "content": QUESTION},
              {"role": "assistant", "content": "", "tool_calls": [call]},
              {"role": "tool", "tool_call_id": "call_1", "content": passage},
              {"role": "assistant", "content": ANSWER}]
    plain = [{"role": "user", "content": QUESTION},
             {"role": "assistant", "content": "I do not know."}]
    model, loss = test_serve.build_memorised_checkpoint(
        root / "memo", steps=150, memorised=[(lookup, None), (plain, None)])
    assert loss < 0.05, f"the test model did not memorise its conversations (loss {loss})"
    path = write_profile(root / "tea-helper.toml", model=str(model),
                         database=str(root / "k.db"),
                         search={"passages": 1, "chars": 240}, sampling={"temperature": 0})
    return path, model


def test_a_profile_is_served_as_a_model_with_its_tools(tea_profile):
    from openai import OpenAI

    from llmos.serve.app import create_app
    from llmos.serve.served import add_profiles, load_models

    path, model = tea_profile
    models = load_models([f"memo={model}"], max_batch=4)
    add_profiles(models, [str(path)], max_batch=4)
    assert models["tea-helper"].scheduler is models["memo"].scheduler  # one copy of the model
    with run_server(create_app(models)) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        cards = {m.id: m for m in client.models.list().data}
        assert set(cards) == {"memo", "tea-helper"}
        assert cards["tea-helper"].model_extra["llmos_profile"]["knowledge"] == ["tea"]

        ask = [{"role": "user", "content": QUESTION}]
        r = client.chat.completions.create(model="tea-helper", messages=ask, temperature=0)
        message = r.choices[0].message
        assert message.content == ANSWER  # the instructions were there; the tool ran here
        events = message.model_extra["llmos_tool_events"]
        assert [e["name"] for e in events] == ["search_knowledge", "search_knowledge"]
        assert events[1]["content"].startswith("[tea.py#1] tea.steep: Soak the leaves")

        # The checkpoint itself, asked the same, has neither the instructions nor the tool.
        r = client.chat.completions.create(model="memo", messages=ask, temperature=0)
        assert r.choices[0].message.content == "I do not know."


def test_chat_with_a_profile(tea_profile, capsys):
    from llmos.cli import main

    path, _ = tea_profile
    main(["chat", "--profile", str(path), "-m", QUESTION])
    out = capsys.readouterr().out
    assert 'search_knowledge({"query": "tea.steep"})' in out
    assert "[tool result] [tea.py#1] tea.steep" in out and ANSWER in out
    with pytest.raises(SystemExit):
        main(["chat", "--profile", str(path), "--model", str(path.parent / "gone"), "-m", "x"])
    assert "not found" in capsys.readouterr().err


def test_ask_model_delegates_to_a_served_model(tea_profile):
    """One model asks another behind `llmos serve` on loopback, through the profile's tool."""
    from llmos.serve.app import create_app
    from llmos.serve.served import load_models

    _, model = tea_profile
    models = load_models([f"memo={model}"], max_batch=2)
    with run_server(create_app(models)) as url:
        p = profiles.parse({"name": "asker", "model": str(model), "tools": ["ask_model"],
                            "peers": [f"memo=openai:{url}/v1#memo"]})
        tools = p.build_tools()
        assert call_tool("ask_model", {"model": "memo", "question": QUESTION}, tools) == \
            "I do not know."
        assert "no model 'other'" in call_tool(
            "ask_model", {"model": "other", "question": "hi"}, tools)
    down = call_tool("ask_model", {"model": "memo", "question": QUESTION}, tools)
    assert down.startswith("error: model 'memo' did not answer")  # the server has stopped
    with pytest.raises(profiles.ProfileError, match="go together"):
        profiles.parse({"name": "asker", "model": "m", "tools": ["ask_model"]})
    with pytest.raises(profiles.ProfileError, match="not a checkpoint folder"):
        profiles.parse({"name": "asker", "model": "m", "tools": ["ask_model"],
                        "peers": ["/no/such/dir"]}).build_tools()


def test_a_tool_outside_the_grant_is_refused_with_a_reason():
    p = profiles.parse({"name": "calc", "model": "m", "tools": ["calculator"]})
    tools = p.build_tools()
    assert call_tool("calculator", {"expression": "2 + 3"}, tools) == "5"
    refused = call_tool("python", {"code": "print(1)"}, tools)
    assert refused == ("error: python (compute) is not allowed: profile 'calc' grants only "
                       "calculator")
    assert "browse (network) is not allowed" in call_tool("browse", {"url": "x"}, tools)
    assert {t.capability for t in tools.values()} >= {"compute", "network", "read-knowledge",
                                                      "call-model", "write-memory"}


def test_a_profile_fits_a_long_chat_where_a_plain_model_refuses(tea_profile):
    import httpx

    from llmos.serve.app import create_app
    from llmos.serve.served import add_profiles, load_models

    path, model = tea_profile
    models = load_models([f"memo={model}"], max_batch=2)
    add_profiles(models, [str(path)], max_batch=2)
    long = [{"role": "user", "content": "tea leaves " * 1500},  # beyond the 2,048-token window
            {"role": "assistant", "content": "I do not know."},
            {"role": "user", "content": QUESTION}]
    with run_server(create_app(models)) as url:
        plain = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "memo", "messages": long, "max_tokens": 20})
        assert plain.status_code == 400
        assert plain.json()["error"]["code"] == "context_length_exceeded"
        fitted = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "tea-helper", "messages": long, "max_tokens": 60, "temperature": 0})
        assert fitted.status_code == 200, fitted.text
        events = fitted.json()["choices"][0]["message"]["llmos_tool_events"]
        assert events[0] == {"type": "context",
                             "content": "dropped the 1 oldest turn (2 messages)"}
