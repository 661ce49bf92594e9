"""`--backend llamacpp`: llama.cpp decodes, llmos keeps the prompt, tools and stops. Greedy
tokens equal the engine's at F32, the GGUF is made once and again when the checkpoint changes,
a missing extra says how to install it, and the API answers alike on both backends (a real
server on loopback, a model that has memorised tool calls)."""

from __future__ import annotations

import json
import os
import sys
import threading

import pytest
import torch
from test_export import make_checkpoint
from test_serve import API_KEY, CALC_CHAT, WEATHER, build_memorised_checkpoint, run_server

from llmos import checkpoint
from llmos import tokenizer as tk
from llmos.agent.loop import STOP
from llmos.cli import main
from llmos.infer import llamacpp
from llmos.infer.engine import Engine, SamplingParams
from llmos.infer.llamacpp import LlamaCppDecoder, LlamaCppOptions, gguf_for

needs_llama_cpp = pytest.mark.skipif(
    not llamacpp.installed(), reason="needs llama-cpp-python (pip install 'llmos[llamacpp]'; "
    ".ci/run builds it)")
pytest.importorskip("gguf")
F32 = LlamaCppOptions("f32")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamacpp")
    return {name: make_checkpoint(root, name) for name in ("tied", "untied")}


def greedy(n=40, **kw):
    return SamplingParams(max_new_tokens=n, temperature=0, **kw)


@needs_llama_cpp
@pytest.mark.parametrize("name", ["tied", "untied"])
def test_greedy_tokens_equal_the_engines_at_f32(ckpts, name):
    ckpt = ckpts[name]
    model, tok = checkpoint.load_model(ckpt).eval(), tk.load(ckpt)
    decoder = LlamaCppDecoder(ckpt, F32, log=lambda *a: None)
    try:
        for text in ("The quick brown", "def f(x):\n", "Café 中文 😀 12345"):
            ids = tok.encode(text, add_special_tokens=False).ids
            want = Engine(model).generate([ids], greedy())[0]
            assert list(decoder.stream(ids, greedy())) == want, text
            # A stop token ends the answer where the engine's does, and is not part of it.
            stop = want[5]
            cut = Engine(model).generate([ids], greedy(stop_tokens=[stop]))[0]
            got = list(decoder.stream(ids, greedy(stop_tokens=[stop])))
            assert got == cut + [STOP] and stop not in cut
            # min_new_tokens keeps the stop token out until then, on both
            later = greedy(stop_tokens=[stop], min_new_tokens=len(cut) + 1)
            longer = Engine(model).generate([ids], later)[0]
            assert [t for t in decoder.stream(ids, later) if t != STOP] == longer
            assert len(longer) > len(cut)
        assert decoder.load()["requests"] == 9
        # The budget: max_new_tokens, and the context (160 here) for a long prompt.
        assert len(list(decoder.stream(ids, greedy(7)))) == 7
        assert len(list(decoder.stream([ids[0]] * 150, greedy(40)))) == 10
        assert list(decoder.stream([ids[0]] * 160, greedy(40))) == []
        with pytest.raises(ValueError, match="at least one token"):
            list(decoder.stream([], greedy()))
    finally:
        decoder.close()


@needs_llama_cpp
def test_sampling_is_seeded_and_the_vote_tie_break_scores_like_the_engine(ckpts):
    ckpt = ckpts["tied"]
    model, tok = checkpoint.load_model(ckpt).eval(), tk.load(ckpt)
    decoder = LlamaCppDecoder(ckpt, F32, log=lambda *a: None)
    try:
        ids = tok.encode("def f(x):\n", add_special_tokens=False).ids
        p = SamplingParams(max_new_tokens=30, temperature=1.0, top_k=50, seed=7)
        a, b = list(decoder.stream(ids, p)), list(decoder.stream(ids, p))
        c = list(decoder.stream(ids, SamplingParams(max_new_tokens=30, temperature=1.0, seed=8)))
        assert a == b and a != c
        from llmos.infer.think import mean_logprobs

        conts = [a[:10], c[:5], []]
        got, want = decoder.mean_logprobs(ids, conts), mean_logprobs(model, ids, conts)
        assert got[:2] == pytest.approx(want[:2], abs=1e-4) and got[2] == float("-inf")
    finally:
        decoder.close()


@needs_llama_cpp
def test_a_failed_decode_is_an_error_and_a_closed_decoder_says_so(ckpts):
    decoder = LlamaCppDecoder(ckpts["tied"], F32, log=lambda *a: None)
    real = decoder.llm

    class Failing:  # llama.cpp failing after one token (a real one first)
        def __getattr__(self, name):
            return getattr(real, name)

        def generate(self, prompt, **kw):
            yield next(real.generate(prompt, **kw))
            raise RuntimeError("llama_decode returned -1")

    decoder.llm = Failing()
    tokens = []
    with pytest.raises(RuntimeError, match="llama_decode returned -1"):
        for t in decoder.stream([1, 2, 3], greedy()):
            tokens.append(t)
    assert len(tokens) == 1  # what came before the failure, then the error, not a short answer
    decoder.llm = real
    assert len(list(decoder.stream([1, 2, 3], greedy(5)))) == 5  # it goes on serving
    cancel = threading.Event()
    cancel.set()  # given up before its turn: nothing decoded
    assert list(decoder.stream([1, 2, 3], greedy(5), cancel)) == []
    # submit: the same tokens to a sink on the decoding thread, a flush after each, and a
    # failure handed to the sink as the exception
    items, flushes, done = [], [], threading.Event()

    def sink(item):
        items.append((item, threading.get_ident()))
        if item is llamacpp.END or isinstance(item, BaseException):
            done.set()

    decoder.submit([1, 2, 3], greedy(5), sink, lambda: flushes.append(1))
    assert done.wait(30)
    assert [i for i, _ in items[:-1]] == list(decoder.stream([1, 2, 3], greedy(5)))
    assert {t for _, t in items} == {decoder._thread.ident} and len(flushes) == len(items)
    decoder.llm, items[:] = Failing(), []
    done.clear()
    decoder.submit([1, 2, 3], greedy(), sink, lambda: None)
    assert done.wait(30) and isinstance(items[-1][0], RuntimeError) and len(items) == 2
    decoder.llm = real
    decoder.close()
    with pytest.raises(RuntimeError, match="shut down"):
        list(decoder.stream([1, 2, 3], greedy(5)))
    decoder.close()  # twice is fine


@needs_llama_cpp
def test_a_server_leaves_a_core_to_its_own_python(ckpts):
    import argparse

    import torch

    from llmos.cli.flags import llamacpp_options

    args = argparse.Namespace(backend="llamacpp", gguf_type="f32", threads=None, device="cpu")
    decoder = LlamaCppDecoder(ckpts["tied"], llamacpp_options(args, spare=1), log=lambda *a: None)
    try:
        assert decoder.threads == max(1, torch.get_num_threads() - 1)
    finally:
        decoder.close()
    args.threads = 3  # a user's own number wins
    assert llamacpp_options(args, spare=1).threads == 3


def test_the_gguf_is_made_once_and_again_when_the_checkpoint_changes(ckpts, tmp_path):
    import shutil

    ckpt = shutil.copytree(ckpts["tied"], tmp_path / "ckpt")
    said = []
    path = gguf_for(ckpt, "f16", log=said.append)
    made = path.stat().st_mtime_ns
    assert path == ckpt / "gguf" / "model-f16.gguf" and len(said) == 1
    assert gguf_for(ckpt, "f16", log=said.append) == path and len(said) == 1
    # The same bytes written again (a new modification time): still the same GGUF.
    (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    gguf_for(ckpt, "f16", log=said.append)
    assert len(said) == 1 and path.stat().st_mtime_ns == made
    # A damaged stamp (a crash while writing it) means: make the GGUF again, no error.
    path.with_suffix(".json").write_text("{\"quick\": [")
    gguf_for(ckpt, "f16", log=said.append)
    assert len(said) == 2
    # Other weights: made again. Another type: a file of its own.
    model = checkpoint.load_model(ckpt)
    with torch.no_grad():
        model.norm.weight.mul_(2)
    checkpoint.save(ckpt, model, ckpt, {})
    gguf_for(ckpt, "f16", log=said.append)
    assert len(said) == 3 and not list((ckpt / "gguf").glob(".export-*"))
    assert gguf_for(ckpt, "q8_0", log=said.append).name == "model-q8_0.gguf" and len(said) == 4
    with pytest.raises(ValueError, match="unknown GGUF type 'q4'"):
        LlamaCppOptions("q4")
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        gguf_for(tmp_path, "f16")


def test_a_missing_extra_says_how_to_install_it(ckpts, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if never installed
    with pytest.raises(ValueError, match=r"pip install 'llmos\[llamacpp\]'"):
        LlamaCppDecoder(ckpts["tied"])
    for command in (["serve", "--model", str(ckpts["tied"]), "--backend", "llamacpp"],
                    ["chat", "--model", str(ckpts["tied"]), "--backend", "llamacpp", "-m", "hi"]):
        with pytest.raises(SystemExit) as e:
            main(command)
        assert e.value.code == 2 and "llmos[llamacpp]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(ckpts["tied"]), "--gguf-type", "f32"])
    assert "--gguf-type is for --backend llamacpp" in capsys.readouterr().err


# ---- the API on both backends -----------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """{backend: base URL}: the memorised tool-calling model served by the engine and by
    llama.cpp (F32)."""
    if not llamacpp.installed():
        pytest.skip("needs llama-cpp-python")
    from llmos.serve.app import create_app
    from llmos.serve.openai_schema import Limits
    from llmos.serve.served import load_models

    memo, loss = build_memorised_checkpoint(tmp_path_factory.mktemp("memo") / "memo")
    assert loss < 0.05
    urls = {}
    with run_server(create_app(load_models([f"memo={memo}"]), [API_KEY],
                               Limits(max_tokens=2048))) as native, \
            run_server(create_app(load_models([f"memo={memo}"], llamacpp=F32), [API_KEY],
                                  Limits(max_tokens=2048))) as cpp:
        urls["native"], urls["llamacpp"] = native, cpp
        yield urls


def chat(url, **body):
    import httpx

    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "memo", "temperature": 0,
                                                        **body},
                   headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
    assert r.status_code == 200, r.text
    return r


def strip(response):
    """What must agree: the choices and usage, without the call ids (random on each)."""
    if isinstance(response, dict):
        return {k: strip(v) for k, v in response.items()
                if k not in ("id", "tool_call_id", "created", "system_fingerprint")}
    return [strip(v) for v in response] if isinstance(response, list) else response


@pytest.mark.slow
def test_the_api_answers_alike_on_both_backends(servers):
    asks = [
        {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 40},
        # a call to the client's function: the answer ends with tool_calls
        {"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
         "tools": [WEATHER]},
        # the built-in calculator runs on the server, and the model goes on after its result
        {"messages": CALC_CHAT[:1]},
    ]
    for body in asks:
        a, b = (strip(chat(servers[k], **body).json()) for k in ("native", "llamacpp"))
        assert a == b, body
    weather = strip(chat(servers["llamacpp"], **asks[1]).json())["choices"][0]
    assert weather["finish_reason"] == "tool_calls"
    call = weather["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    calc = chat(servers["llamacpp"], **asks[2]).json()["choices"][0]["message"]["content"]
    assert calc == "347 * 29 = 10063."

    # streamed: the same text, chunk by chunk, in OpenAI's server-sent events
    streamed = chat(servers["llamacpp"], stream=True, **asks[0]).text
    events = [json.loads(x[6:]) for x in streamed.splitlines()
              if x.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "Hello! How can I help you today?" and streamed.rstrip().endswith("[DONE]")

    import httpx

    # completions: decoded on each backend's own thread (serve/posting.py), stop sequences too
    def complete(url, **body):
        r = httpx.post(f"{url}/v1/completions", json={"model": "memo", "temperature": 0,
                                                       "prompt": "Hello", **body},
                       headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
        assert r.status_code == 200, r.text
        return r

    for body in ({"max_tokens": 30}, {"max_tokens": 30, "stop": ["?"]},
                 {"max_tokens": 30, "stream": True}):
        a, b = (complete(servers[k], **body) for k in ("native", "llamacpp"))
        if body.get("stream"):
            a, b = ([e["choices"][0]["text"] for e in map(json.loads, (
                x[6:] for x in r.text.splitlines() if x.startswith("data: {")))] for r in (a, b))
            assert a == b and len(a) > 3
        else:
            assert strip(a.json()) == strip(b.json()), body
    stopped = complete(servers["llamacpp"], max_tokens=30, stop=["?"]).json()["choices"][0]
    assert stopped["finish_reason"] == "stop" and "?" not in stopped["text"]

    # a System-2 vote runs its samples through llama.cpp too
    r = chat(servers["llamacpp"], messages=asks[0]["messages"], max_tokens=40, temperature=0.7,
             seed=5, think={"strategy": "vote", "n": 4, "answer_kind": "text"}).json()
    assert r["think"]["samples"] == 4 and r["choices"][0]["message"]["content"]

    health = httpx.get(f"{servers['llamacpp']}/health", timeout=10).json()["models"]["memo"]
    assert health["backend"] == "llamacpp" and health["requests"] >= 8
    assert os.path.basename(health["gguf"]) == "model-f32.gguf"
