"""`llmos serve` end to end: a real uvicorn server on loopback, the official `openai` client,
and a tiny model that has memorised a few conversations (one calls a client's function, one the
built-in calculator), so tool calls really come out of the model."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import httpx
import pytest
import torch

from llmos import chat_format, checkpoint
from llmos import tokenizer as tk
from llmos.config import ModelConfig
from llmos.model import Transformer
from llmos.serve.background import run_in_background

API_KEY = "sk-test-key"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
WEATHER_CALL = {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
HELLO = [{"role": "user", "content": "Hello!"},
         {"role": "assistant", "content": "Hello! How can I help you today?"}]
WEATHER_CHAT = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    {"role": "assistant", "content": "It is sunny and 21 C in Paris."},
]
CALC_CHAT = [
    {"role": "user", "content": "What is 347 * 29?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_2", "type": "function",
         "function": {"name": "calculator", "arguments": {"expression": "347 * 29"}}}]},
    {"role": "tool", "tool_call_id": "call_2", "content": "10063"},
    {"role": "assistant", "content": "347 * 29 = 10063."},
]
# (conversation, tools the server renders for it: only the client's functions are listed)
MEMORISED = [(HELLO, None), (WEATHER_CHAT, [WEATHER]), (CALC_CHAT, None)]


@contextlib.contextmanager
def one_thread():
    """A model this small trains fastest on one thread, and far faster than on two cores that
    another process is also using."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_memorised_checkpoint(out, steps: int = 120, memorised=MEMORISED):
    """A 2-layer, dim-64 model trained to recite `memorised` [(conversation, client tools)]
    (about 5 s on one CPU core)."""
    torch.manual_seed(0)
    texts = [chat_format.render_text(c, t)[0] for c, t in memorised]
    filler = "The quick brown fox jumps over the lazy dog. Hello there, how are you? " * 20
    tok = tk.train_bpe(texts * 20 + [filler], 600)
    tok_dir = out.parent / f"{out.name}-tokenizer"
    tk.save(tok, tok_dir, max_len=2048)
    model = Transformer(ModelConfig(vocab_size=tok.get_vocab_size(), dim=64, n_layers=2,
                                    n_heads=4, n_kv_heads=2, max_seq_len=2048))
    rows = [chat_format.render(tok, c, t) for c, t in memorised]
    T = max(len(r.ids) for r in rows)
    x = torch.tensor([r.ids[:-1] + [0] * (T - len(r.ids)) for r in rows])
    y = torch.tensor([[t if m else -100 for t, m in zip(r.ids[1:], r.mask[1:])]
                      + [-100] * (T - len(r.ids)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    with one_thread():
        for _ in range(steps):
            loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    checkpoint.save(out, model, tok_dir, {"stage": "test", "loss": loss.item()})
    return out, loss.item()


run_server = run_in_background  # the other server tests import it from here


@pytest.fixture(scope="session")
def memorised(tmp_path_factory):
    out, loss = build_memorised_checkpoint(tmp_path_factory.mktemp("serve") / "memo")
    assert loss < 0.05, f"the test model did not memorise its conversations (loss {loss})"
    return out


@pytest.fixture(scope="module")
def server(memorised):
    from llmos.serve.app import create_app
    from llmos.serve.openai_schema import Limits
    from llmos.serve.served import load_models

    models = load_models([f"memo={memorised}"], max_batch=8)
    app = create_app(models, [API_KEY], Limits(max_messages=32, max_tokens=2048, max_n=4))
    with run_server(app) as url:
        yield url


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def post(server, path, body, key=API_KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    kw.setdefault("timeout", 60)
    if isinstance(body, (bytes, str)):
        headers["Content-Type"] = "application/json"
        return httpx.post(server + path, content=body, headers=headers, **kw)
    return httpx.post(server + path, json=body, headers=headers, **kw)


def health(server) -> dict:
    return httpx.get(server + "/health", timeout=10).json()["models"]["memo"]


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---- the OpenAI API through the official client -----------------------------------------------


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["memo"]
    assert client.models.retrieve("memo").id == "memo"
    load = health(server)
    assert {"active", "queued", "tokens_generated", "rows_per_step"} <= set(load)


def test_chat_completion(client):
    r = client.chat.completions.create(model="memo", messages=ask("Hello!"), temperature=0,
                                       max_tokens=40)
    assert r.object == "chat.completion" and r.model == "memo"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello! How can I help you today?"
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert r.usage.completion_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.5, "seed": 3,
                                                            "top_p": 0.95}])
def test_streaming_assembles_to_the_same_answer(client, sampling):
    kw = dict(model="memo", messages=ask("Tell me a story about Paris."), max_tokens=30,
              **sampling)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(text) > 0
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == whole.choices[0].finish_reason and reasons[:-1] == [None] * (
        len(reasons) - 1)
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    # Really streamed: the visible text came in several pieces (a sampled answer may be
    # mostly hidden tool-call markup, so the number of chunks alone says little).
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 1


def test_sse_wire_format(server):
    body = {"model": "memo", "messages": ask("Hello!"), "temperature": 0, "stream": True}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in first  # only with stream_options.include_usage


def test_client_tool_call_round_trip(client):
    messages = ask("What is the weather in Paris?")
    r = client.chat.completions.create(model="memo", messages=messages, tools=[WEATHER],
                                       temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str)
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    final = client.chat.completions.create(model="memo", messages=messages, tools=[WEATHER],
                                           temperature=0)
    assert final.choices[0].message.content == "It is sunny and 21 C in Paris."
    assert final.choices[0].finish_reason == "stop"

    # streaming: the call arrives as a tool_calls delta, the text shows no markup
    chunks = list(client.chat.completions.create(
        model="memo", messages=messages[:1], tools=[WEATHER], temperature=0, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    (streamed,) = [t for d in deltas for t in d.tool_calls or []]
    assert streamed.function.name == "get_weather" and streamed.index == 0
    assert json.loads(streamed.function.arguments) == {"city": "Paris"}
    assert "".join(d.content or "" for d in deltas) == ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_required_or_named_is_honoured(client, server):
    # The forced start itself is tested on the loop (test_agent_loop.py); here, through the
    # API, streamed and not, on the question this small model memorised a call for.
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        for stream in (False, True):
            r = client.chat.completions.create(
                model="memo", messages=ask("What is the weather in Paris?"), tools=[WEATHER],
                tool_choice=choice, temperature=0, stream=stream)
            if stream:
                chunks = list(r)
                calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
                content = "".join(c.choices[0].delta.content or "" for c in chunks)
                finish = chunks[-1].choices[0].finish_reason
            else:
                calls, content = r.choices[0].message.tool_calls, r.choices[0].message.content
                finish = r.choices[0].finish_reason
            assert finish == "tool_calls", (choice, stream)
            assert [c.function.name for c in calls] == ["get_weather"]
            assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
            assert not content  # the forced start shows no markup
    # Forced, the greeting the model memorised is not what comes back.
    forced = client.chat.completions.create(
        model="memo", messages=ask("Hello!"), tools=[WEATHER], temperature=0, max_tokens=40,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert forced.choices[0].message.content != "Hello! How can I help you today?"
    r = post(server, "/v1/chat/completions", {**CHAT, "tool_choice": "required"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"


def test_builtin_tool_runs_on_the_server(client):
    r = client.chat.completions.create(model="memo", messages=ask("What is 347 * 29?"),
                                       temperature=0)
    message = r.choices[0].message
    assert message.content == "347 * 29 = 10063." and not message.tool_calls
    assert r.choices[0].finish_reason == "stop"
    events = message.model_extra["llmos_tool_events"]
    assert [e["type"] for e in events] == ["tool_call", "tool_result"]
    assert events[0]["name"] == "calculator"
    assert json.loads(events[0]["arguments"]) == {"expression": "347 * 29"}
    assert events[1]["content"] == "10063"

    chunks = list(client.chat.completions.create(
        model="memo", messages=ask("What is 347 * 29?"), temperature=0, stream=True))
    streamed = [e for c in chunks for e in (c.choices[0].delta.model_extra or {}).get(
        "llmos_tool_events", [])]
    assert [e["type"] for e in streamed] == ["tool_call", "tool_result"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content

    # tool_choice "none": no tool runs; a call the model writes anyway gets an error back
    r = client.chat.completions.create(model="memo", messages=ask("What is 347 * 29?"),
                                       temperature=0, tool_choice="none", max_tokens=60)
    results = [e["content"] for e in r.choices[0].message.model_extra.get(
        "llmos_tool_events", []) if e["type"] == "tool_result"]
    assert results and all(text.startswith("error: unknown tool") for text in results)


def test_the_output_guard_checks_answers_before_they_are_sent(memorised):
    """`llmos serve --guard`: an answer that does what the policy forbids is withheld, streamed
    or not, and says why; an answer the policy allows, and a tool call, pass unchanged."""
    from openai import OpenAI

    from llmos.agent.policy import parse_policy
    from llmos.serve.app import create_app
    from llmos.serve.served import load_models

    policy = parse_policy({"name": "test", "forbidden": [
        {"request": "Greet me", "markers": ["help you today"]}]})
    app = create_app(load_models([f"memo={memorised}"], max_batch=4), guard_policy=policy)
    with run_server(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="memo", messages=ask("Hello!"), temperature=0)
        message = r.choices[0].message
        assert message.content == "[withheld by the output guard: it does what the policy forbids]"
        assert [e["type"] for e in message.model_extra["llmos_tool_events"]] == ["guard"]
        chunks = list(client.chat.completions.create(model="memo", messages=ask("Hello!"),
                                                     temperature=0, stream=True))
        pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
        assert pieces == [message.content]  # held, then sent whole
        allowed = client.chat.completions.create(model="memo", temperature=0,
                                                 messages=ask("What is 347 * 29?"))
        assert allowed.choices[0].message.content == "347 * 29 = 10063."
        call = client.chat.completions.create(model="memo", temperature=0, tools=[WEATHER],
                                              messages=ask("What is the weather in Paris?"))
        assert call.choices[0].message.tool_calls[0].function.name == "get_weather"



def test_stop_sequences_seed_and_n(client):
    r = client.chat.completions.create(model="memo", messages=ask("Hello!"), temperature=0,
                                       stop=["help", "zzz"])
    assert r.choices[0].message.content == "Hello! How can I "
    assert r.choices[0].finish_reason == "stop"
    kw = dict(model="memo", messages=ask("Tell me about tools."), temperature=1.5, seed=11,
              max_tokens=20, n=3)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices]  # a seed repeats
    assert a.usage.completion_tokens >= 3
    # Choice i samples with seed + i. Checked on plain text: a chat answer sampled this hot may
    # be all hidden tool-call markup, so its visible texts can be equal ("" three times).
    kw = dict(model="memo", prompt="The quick brown", temperature=1.5, seed=11, max_tokens=20,
              n=3)
    plain = [c.text for c in client.completions.create(**kw).choices]
    assert plain == [c.text for c in client.completions.create(**kw).choices]
    assert len(set(plain)) > 1


def test_completions_endpoint(client):
    kw = dict(model="memo", prompt="The quick brown", max_tokens=12, temperature=0)
    r = client.completions.create(**kw)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True))
    assert streamed == r.choices[0].text
    fixed = client.completions.create(**kw, extra_body={"ignore_eos": True, "min_tokens": 12})
    assert fixed.usage.completion_tokens == 12 and fixed.choices[0].finish_reason == "length"
    echoed = client.completions.create(**kw, echo=True)
    assert echoed.choices[0].text == "The quick brown" + r.choices[0].text


# ---- bad requests: a 4xx with OpenAI's error body ---------------------------------------------

CHAT = {"model": "memo", "messages": ask("Hello!")}
BAD_REQUESTS = {
    "malformed JSON": (b'{"model": "memo", "messages": [', 400, None),
    "messages not a list": ({"model": "memo", "messages": "hi"}, 400, "messages"),
    "temperature not a number": ({**CHAT, "temperature": "hot"}, 400, "temperature"),
    "max_tokens not an int": ({**CHAT, "max_tokens": "ten"}, 400, "max_tokens"),
    "temperature out of range": ({**CHAT, "temperature": 3}, 400, "temperature"),
    "unknown role": ({"model": "memo", "messages": [{"role": "wizard", "content": "x"}]}, 400,
                     "messages.0.role"),
    "no messages": ({"model": "memo", "messages": []}, 400, "messages"),
    "too many messages": ({"model": "memo", "messages": ask("hi") * 40}, 400, "messages"),
    "max_tokens over the cap": ({**CHAT, "max_tokens": 5000}, 400, "max_tokens"),
    "n over the cap": ({**CHAT, "n": 9}, 400, "n"),
    "unknown model": ({**CHAT, "model": "gpt-9"}, 404, "model"),
    "tool without a name": ({**CHAT, "tools": [{"type": "function", "function": {}}]}, 400,
                            "tools.0.function.name"),
    "tool of another type": ({**CHAT, "tools": [{"type": "retrieval"}]}, 400, "tools.0.type"),
    "tool_choice naming no tool": ({**CHAT, "tools": [WEATHER], "tool_choice": {
        "type": "function", "function": {"name": "nope"}}}, 400, "tool_choice"),
    "tool call arguments not JSON": ({"model": "memo", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "get_weather", "arguments": "{city"}}]}]}, 400, "messages"),
    "prompt longer than the context": ({"model": "memo", "messages": ask("Paris weather " * 2000)},
                                       400, "messages"),
    "unknown think strategy": ({**CHAT, "think": {"strategy": "ponder"}}, 400,
                               "think.strategy"),
    "think budget over the cap": ({**CHAT, "think": {"n": 33}}, 400, "think.n"),
    "think with n choices": ({**CHAT, "n": 2, "think": {"n": 4}}, 400, "n"),
    "think with tools": ({**CHAT, "tools": [WEATHER], "think": {"n": 4}}, 400, "think"),
    "think with stop": ({**CHAT, "stop": "\n", "think": {"n": 4}}, 400, "stop"),
    "think with an unknown field": ({**CHAT, "think": {"n": 4, "depth": 3}}, 400, "think.depth"),
    "oversized body": ({"model": "memo", "messages": ask("x" * (1 << 20))}, 413, None),
    # Valid JSON, but no text: it cannot be encoded, tokenized or stored.
    "lone surrogate": (b'{"model": "memo", "messages": [{"role": "user", "content": "a\\ud800"}]}',
                       400, "messages[0].content"),
    "lone surrogate in a tool": (b'{"model": "memo", "messages": [{"role": "user", "content": '
                                 b'"hi"}], "tools": [{"type": "function", "function": {"name": '
                                 b'"f", "description": "\\udfff"}}]}', 400,
                                 "tools[0].function.description"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_openai_errors(server, case):
    body, status, param = BAD_REQUESTS[case]
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param


def test_other_bad_requests(server):
    r = post(server, "/v1/completions", {"model": "memo", "prompt": {"text": "hi"}})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("prompt")
    r = post(server, "/v1/completions", {"model": "memo", "prompt": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = post(server, "/v1/completions", {"model": "memo", "prompt": "hi " * 3000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.get(server + "/v1/nothing-here", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 404 and "message" in r.json()["error"]
    r = post(server, "/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}})
    assert r.status_code == 400


def test_api_keys(server):
    import openai

    for key, problem in ((None, "no API key"), ("sk-wrong", "not valid")):
        r = post(server, "/v1/chat/completions", CHAT, key=key)
        assert r.status_code == 401 and problem in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(server + "/v1/models", headers={"Authorization": "Bearer sk-wrong"})
    assert r.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert httpx.get(server + "/health").status_code == 200  # no key needed
    assert httpx.get(server + "/").status_code == 200


# ---- System 2 through the API -------------------------------------------------------------------


def test_think_votes_over_samples_decoded_in_one_batch(client, server):
    before = health(server)["rows_per_step"]
    r = client.chat.completions.create(
        model="memo", messages=ask("Hello!"), max_tokens=40, temperature=0.7, seed=5,
        extra_body={"think": {"strategy": "vote", "n": 6, "answer_kind": "text"}})
    spent = r.model_extra["think"]
    assert spent["strategy"] == "vote" and spent["budget"] == 6 and spent["samples"] == 6
    assert spent["tokens"] == r.usage.completion_tokens > 6 and spent["seconds"] > 0
    votes = {c["answer"]: c["votes"] for c in spent["candidates"]}
    assert sum(votes.values()) <= 6 and max(votes.values()) >= 2
    assert r.choices[0].message.content == "Hello! How can I help you today?"
    assert spent["answer"] == "hello how can i help you today"
    after = health(server)["rows_per_step"]
    grew = [int(k) for k, v in after.items() if v > before.get(k, 0)]
    assert max(grew) >= 4, f"the samples were not decoded together: {grew}"
    # Streamed, the answer comes as content and the spending with the finishing chunk.
    chunks = list(client.chat.completions.create(
        model="memo", messages=ask("Hello!"), max_tokens=40, temperature=0.7, seed=5,
        stream=True, extra_body={"think": {"strategy": "vote", "n": 6, "answer_kind": "text"}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["think"]["samples"] == 6


# ---- batching, cancellation -------------------------------------------------------------------

CONCURRENT = ["Hello!", "What is the weather in Paris?", "What is 347 * 29?",
              "Tell me a story about Paris."]


def test_concurrent_requests_share_a_batch(client, server):
    def answer(text):
        r = client.chat.completions.create(model="memo", messages=ask(text), temperature=0,
                                           max_tokens=24)
        return r.choices[0].message.content

    alone = [answer(t) for t in CONCURRENT]
    before = health(server)["rows_per_step"]
    results, barrier = [None] * len(CONCURRENT), threading.Barrier(len(CONCURRENT))

    def run(i):
        barrier.wait()
        results[i] = answer(CONCURRENT[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(CONCURRENT))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = health(server)["rows_per_step"]
    shared = {int(k): v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
    assert max(shared) >= 2, f"the requests never decoded together: {shared}"
    assert results == alone


def test_client_disconnect_stops_generation(server):
    start = health(server)["tokens_generated"]
    body = {**CHAT, "stream": True, "max_tokens": 2000, "ignore_eos": True,
            "min_tokens": 2000}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
        assert health(server)["active"] == 1
    deadline = time.time() + 5
    while health(server)["active"] and time.time() < deadline:
        time.sleep(0.02)
    assert health(server)["active"] == 0, "the row kept decoding after the client left"
    stopped_at = health(server)["tokens_generated"]
    time.sleep(0.3)
    assert health(server)["tokens_generated"] == stopped_at
    assert stopped_at - start < 1500

    # a non-streaming request whose client gives up is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        post(server, "/v1/chat/completions", {**body, "stream": False}, timeout=0.5)
    deadline = time.time() + 5
    while health(server)["active"] and time.time() < deadline:
        time.sleep(0.02)
    assert health(server)["active"] == 0


# ---- the parts, without a server --------------------------------------------------------------


def test_serve_command_explains_its_flags(capsys):
    from llmos.cli import build_parser, main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    for action in serve._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and action.option_strings[-1] in text


def test_model_names():
    from llmos.serve.served import model_names

    assert list(model_names(["runs/a/sft"])) == ["sft"]
    named = model_names(["runs/a/sft", "runs/b/sft", "runs/a/base"])
    assert set(named) == {"a/sft", "b/sft", "base"}
    assert set(model_names(["mine=runs/a/sft", "runs/b/sft"])) == {"mine", "sft"}
    assert set(model_names(["sft=runs/x", "runs/b/sft"])) == {"sft", "b/sft"}
    for twice in (["a=x", "a=y"], ["runs/a/sft", "runs/a/sft"]):
        with pytest.raises(ValueError):
            model_names(twice)


RAW_TURNS = [
    "  Hello there!  ",
    "<think>\nplan it\n</think>\nThe answer is 4.",
    'Let me check.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\nand then <b>more</b> <too',
    "<think>unclosed reasoning",
]


@pytest.mark.parametrize("raw", RAW_TURNS)
def test_streamed_turn_text_adds_up_to_the_parsed_turn(raw):
    from llmos.chat_format import TurnText

    want = chat_format.parse_assistant(raw)
    for size in (1, 2, 3, 7, len(raw)):
        turn, got = TurnText(), {"content": "", "reasoning_content": ""}
        for i in range(0, len(raw), size):
            for key, text in turn.push(raw[i:i + size]):
                got[key] += text
        for key, text in turn.finish():
            got[key] += text
        assert got == {"content": want.content, "reasoning_content": want.reasoning}, size


def test_stop_text_across_pieces():
    from llmos.chat_format import StopText

    stop = StopText(["END", "xyz"])
    out = [stop.push(p) for p in ["abc E", "N", "D tail"]]
    assert out == [("abc ", False), ("", False), ("", True)]
    stop = StopText(["END"])
    assert stop.push("EN") == ("", False) and stop.flush() == "EN"


def test_scheduler_matches_the_engine_with_staggered_joins():
    from llmos.agent.loop import STOP
    from llmos.infer.batching import Scheduler
    from llmos.infer.engine import Engine, SamplingParams

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=128))
    model.reset_parameters(std=0.3)  # varied greedy output
    prompts = [[5, 17, 42, 7, 99], [3], [250, 251, 252, 1, 2, 3, 4, 5, 6, 7, 8],
               list(range(1, 40))]
    greedy = SamplingParams(max_new_tokens=30, temperature=0)
    want = Engine(model).generate(prompts, greedy)
    sched = Scheduler(model, max_batch=8)
    try:
        got = [None] * len(prompts)
        seeded = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, top_k=40, seed=5)
        alone = list(sched.stream(prompts[0], seeded))

        def run(i):
            time.sleep(0.01 * i)  # join a running batch at different steps
            got[i] = list(sched.stream(prompts[i], greedy))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        side = threading.Thread(target=lambda: got.append(list(sched.stream(prompts[0], seeded))))
        for t in threads + [side]:
            t.start()
        for t in threads + [side]:
            t.join()
        assert got[:4] == want
        assert got[4] == alone  # a seeded row samples the same in company
        assert sched.load()["max_rows"] >= 2
        # a stop token ends the row with STOP; the context caps generation
        stop = want[0][10]
        out = list(sched.stream(prompts[0], SamplingParams(30, 0, stop_tokens=[stop])))
        assert out == want[0][:want[0].index(stop)] + [STOP]
        assert len(list(sched.stream([1] * 120, SamplingParams(50, 0)))) == 8
        # closing the stream drops the row
        stream = sched.stream([1, 2, 3], SamplingParams(100_000, 0))
        next(stream)
        stream.close()
        deadline = time.time() + 2
        while sched.load()["active"] and time.time() < deadline:
            time.sleep(0.01)
        assert sched.load()["active"] == 0
    finally:
        sched.close()


def test_submit_hands_a_row_its_tokens_on_the_schedulers_thread():
    """Scheduler.submit: the stream's tokens through a callback, a flush once a step for the rows
    that share it, a sink that says "enough" drops its row, and no room gives END at once."""
    from llmos.infer.batching import Scheduler
    from llmos.infer.engine import END, STOP, SamplingParams

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=128))
    model.reset_parameters(std=0.3)
    sched = Scheduler(model, max_batch=8)
    try:
        greedy = SamplingParams(max_new_tokens=25, temperature=0)
        want = [list(sched.stream(p, greedy)) for p in ([5, 17, 42], [3, 4])]
        got, threads, flushes, done = [[], [], []], set(), [], threading.Event()

        def sink(i, limit=None):
            def take(item):
                threads.add(threading.get_ident())
                got[i].append(item)
                if item is END and all(g and g[-1] is END for g in got):
                    done.set()
                return limit is not None and len(got[i]) >= limit
            return take

        def flush():
            flushes.append(1)

        sched.submit([5, 17, 42], greedy, sink(0), flush)
        sched.submit([3, 4], greedy, sink(1), flush)
        sched.submit([3, 4], SamplingParams(max_new_tokens=1000, temperature=0), sink(2, 5),
                     flush)
        assert done.wait(10)
        assert got[0] == want[0] + [END] and got[1] == want[1] + [END]
        assert got[2][:5] == want[1][:5] and got[2][5:] == [END]  # dropped after its 5th
        assert threads == {sched._thread.ident}
        # one flush a step however many rows it served (the three rows decode together)
        assert len(flushes) <= max(len(g) for g in got) + 2
        stopped, nothing = [], []
        sched.submit([5, 17, 42], SamplingParams(30, 0, stop_tokens=[want[0][3]]),
                     stopped.append, lambda: None)
        sched.submit([1] * 128, greedy, nothing.append, lambda: None)  # no room: END at once
        assert nothing == [END]
        deadline = time.time() + 5
        while (not stopped or stopped[-1] not in (STOP, END)) and time.time() < deadline:
            time.sleep(0.01)
        assert stopped == want[0][:3] + [STOP]
        # a sink that raises loses its own row; the scheduler goes on serving
        calls = []

        def broken(item):
            calls.append(item)
            raise ValueError("a bug in a sink")

        sched.submit([5, 17, 42], SamplingParams(50, 0), broken, lambda: None)
        assert list(sched.stream([3, 4], greedy)) == want[1]
        deadline = time.time() + 5
        while sched.load()["active"] and time.time() < deadline:
            time.sleep(0.01)
        assert len(calls) == 1 and sched.load()["active"] == 0
    finally:
        sched.close()


def test_a_completions_stop_sequence_ends_the_text_and_the_row(server):
    """Completions come through serve/posting.py (no thread per request): a stop sequence cuts
    the text before it, says "stop", and drops the row, which stops counting tokens."""
    kw = dict(model="memo", prompt="The quick brown", max_tokens=24, temperature=0)
    full = post(server, "/v1/completions", kw).json()["choices"][0]
    stop = full["text"][len(full["text"]) // 2:][:2]
    cut = full["text"].index(stop)
    assert cut > 0
    body = post(server, "/v1/completions", {**kw, "stop": [stop]}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == full["text"][:cut]
    assert body["usage"]["completion_tokens"] < post(
        server, "/v1/completions", kw).json()["usage"]["completion_tokens"]


def test_per_row_sampling_and_min_tokens():
    from llmos.infer.engine import Engine, SamplingParams, sample_rows

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    rows = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=1),
            SamplingParams(temperature=1.0, top_p=1e-6), SamplingParams(temperature=5.0)]
    draws = {tuple(sample_rows(logits, rows, [None] + [torch.Generator().manual_seed(s)
                                                       for s in (1, 2, 3)]).tolist())
             for _ in range(3)}
    assert len(draws) == 1  # seeded rows repeat
    (draw,) = draws
    assert list(draw[:3]) == logits[:3].argmax(-1).tolist()  # greedy, top-k 1, tiny top-p
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=40, dim=32, n_layers=1, n_heads=2, n_kv_heads=2,
                                    max_seq_len=64))
    greedy = Engine(model).generate([[1, 2]], SamplingParams(10, 0))[0]
    held = Engine(model).generate([[1, 2]], SamplingParams(10, 0, stop_tokens=[greedy[0]],
                                                           min_new_tokens=5))[0]
    assert len(held) >= 5 and greedy[0] not in held[:5]
