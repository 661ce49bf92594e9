"""Arena contestants, judges and `llmos arena battle`: checkpoints answer through the agent loop,
an OpenAI-compatible contestant and an LLM judge talk to a real `llmos serve` on loopback."""

from __future__ import annotations

import json

import pytest
import test_serve
import torch
from test_serve import API_KEY, run_server

from llmos import checkpoint
from llmos.agent.peers import (
    CheckpointPeer,
    OpenAIPeer,
    answer,
    parse_peer,
    parse_peers,
)
from llmos.config import ModelConfig
from llmos.evals import autoarena, battles, judges
from llmos.model import Transformer

memorised = test_serve.memorised  # the session's tiny model that recites its conversations
HELLO_ANSWER = "Hello! How can I help you today?"


@pytest.fixture(scope="module")
def random_model(memorised):
    """Random weights on the memorised model's tokenizer: answers that are never right."""
    torch.manual_seed(1)
    from llmos import tokenizer as tk

    tok_dir = memorised.parent / f"{memorised.name}-tokenizer"
    vocab = tk.load(memorised).get_vocab_size()
    model = Transformer(ModelConfig(vocab_size=vocab, dim=32, n_layers=1, n_heads=4,
                                    n_kv_heads=2, max_seq_len=256))
    out = memorised.parent / "random"
    checkpoint.save(out, model, tok_dir, {"stage": "test"})
    return out


@pytest.fixture(scope="module")
def server(memorised):
    from llmos.serve.app import create_app
    from llmos.serve.served import load_models

    with run_server(create_app(load_models([f"memo={memorised}"], max_batch=4),
                               [API_KEY])) as url:
        yield url


# ---- contestants ---------------------------------------------------------------------------


def test_parse_contestant_specs(memorised, tmp_path):
    c = parse_peer(str(memorised))
    assert isinstance(c, CheckpointPeer) and c.name == memorised.name
    assert parse_peer(f"mine={memorised}").name == "mine"
    o = parse_peer("gpt=openai:https://api.example.com/v1#gpt-4o-mini;key=MY_KEY")
    assert isinstance(o, OpenAIPeer)
    assert (o.name, o.base_url, o.model, o.key_env) == (
        "gpt", "https://api.example.com/v1", "gpt-4o-mini", "MY_KEY")
    assert parse_peer("openai:http://h:1/v1#m").name == "m"
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        parse_peer(f"x={tmp_path}")
    with pytest.raises(ValueError, match="BASE_URL#MODEL"):
        parse_peer("x=openai:http://h:1/v1")
    with pytest.raises(ValueError, match="two contestants are named"):
        parse_peers([f"a={memorised}", f"a={memorised}"], noun="contestant")


def test_checkpoint_and_endpoint_contestants_give_the_same_answer(memorised, server,
                                                                  monkeypatch):
    hello = [{"role": "user", "content": "Hello!"}]
    local = parse_peer(f"memo={memorised}")
    pieces = list(local.stream(hello, max_tokens=64, temperature=0))
    assert "".join(pieces).strip() == HELLO_ANSWER and len(pieces) > 3  # streamed
    monkeypatch.setenv("ARENA_TEST_KEY", API_KEY)
    remote = parse_peer(f"remote=openai:{server}/v1#memo;key=ARENA_TEST_KEY")
    pieces = list(remote.stream(hello, max_tokens=64, temperature=0))
    assert "".join(pieces).strip() == HELLO_ANSWER and len(pieces) > 3
    # the built-in calculator runs in the loop for a checkpoint, as in `llmos chat`
    calc = [{"role": "user", "content": "What is 347 * 29?"}]
    assert answer(local, calc, 64) == "347 * 29 = 10063."
    assert answer(remote, calc, 64) == "347 * 29 = 10063."
    monkeypatch.delenv("ARENA_TEST_KEY")
    with pytest.raises(ValueError, match="ARENA_TEST_KEY"):
        answer(parse_peer(f"r=openai:{server}/v1#memo;key=ARENA_TEST_KEY"), hello)


# ---- judges --------------------------------------------------------------------------------


def test_verifier_judge():
    v = judges.VerifierJudge()
    item = judges.Item([{"role": "user", "content": "What is 6 * 7?"}], "arithmetic", "42")
    assert v(item, "6 * 7 = 42.", "It is 41.").winner == "model_a"
    assert v(item, "It is 41.", "42").winner == "model_b"
    assert v(item, "42", "That is 42.").winner == "tie"
    assert v(item, "41", "43").winner == "tie (bothbad)"
    assert v(judges.Item(item.messages), "42", "41").winner is None  # no reference answer


def test_parse_verdict():
    assert judges.parse_verdict("A is clearer. [[A]]") == "model_a"
    assert judges.parse_verdict("Verdict: [[ B ]]") == "model_b"
    assert judges.parse_verdict("[[C]]") == "tie"
    assert judges.parse_verdict("[[A]] ... on reflection [[A]]") == "model_a"
    assert judges.parse_verdict("[[A]] or maybe [[B]]") is None  # two different verdicts
    assert judges.parse_verdict("A is better") is None
    assert judges.parse_verdict("") is None
    msgs = judges.judge_prompt(judges.Item([{"role": "user", "content": "Q?"}]), "one", "two")
    assert "[[A]]" in msgs[0]["content"] and "Q?" in msgs[1]["content"]
    assert msgs[1]["content"].index("one") < msgs[1]["content"].index("two")


def test_llm_judge_on_a_real_server_counts_unparseable_and_failed_verdicts(server, monkeypatch):
    monkeypatch.setenv("ARENA_TEST_KEY", API_KEY)
    judge = judges.make_judge(f"openai:{server}/v1#memo;key=ARENA_TEST_KEY")
    assert judge.name == "openai:memo"
    judge.max_tokens = 16
    item = judges.Item([{"role": "user", "content": "Hello!"}])
    v = judge(item, "Hi!", "Go away.")  # the tiny model says whatever it says
    assert v.winner == judges.parse_verdict(v.raw)
    if v.winner is None:
        assert v.note == "unparseable verdict"
    dead = judges.make_judge("openai:http://127.0.0.1:9/v1#memo")  # nothing listens on port 9
    dead.endpoint.timeout = 5
    v = dead(item, "Hi!", "Go away.")
    assert v.winner is None and v.note.startswith("judge error")


def test_reward_judge_prefers_the_higher_reward_in_both_orders(memorised, tmp_path):
    from llmos import reward_model
    from llmos import tokenizer as tk

    torch.manual_seed(2)
    vocab = tk.load(memorised).get_vocab_size()
    rm = reward_model.RewardModel(Transformer(ModelConfig(
        vocab_size=vocab, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=128)))
    torch.nn.init.normal_(rm.score.weight)  # a random but decided preference
    reward_model.save_reward_model(tmp_path / "rm", rm,
                                   memorised.parent / f"{memorised.name}-tokenizer", {})
    judge = judges.make_judge(f"reward:{tmp_path / 'rm'}")
    item = judges.Item([{"role": "user", "content": "Hello!"}])
    x, y = "Hello! How can I help you today?", "The lazy dog."
    model, tok = reward_model.load_reward_model(tmp_path / "rm")
    rx, ry = reward_model.score(model, tok, [item.messages + [{"role": "assistant", "content": t}]
                                             for t in (x, y)])
    assert rx != ry
    assert judge(item, x, y).winner == ("model_a" if rx > ry else "model_b")
    assert judge(item, y, x).winner == ("model_b" if rx > ry else "model_a")
    assert judge(item, x, x).winner == "tie"


def test_make_judge_rejects_unknown_and_says_when_reward_models_are_missing():
    with pytest.raises(ValueError, match="unknown judge"):
        judges.make_judge("coin-flip")
    try:
        import llmos.train.reward  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="not available"):
            judges.make_judge("reward:nowhere")


# ---- automatic battles ----------------------------------------------------------------------


def write_prompts(path):
    rows = [{"prompt": "Hello!", "answer": "Hello! How can I help you today?"},
            {"prompt": "What is 347 * 29?", "answer": "10063", "task": "arithmetic"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_arena_battle_command(memorised, random_model, server, tmp_path, monkeypatch, capsys):
    from llmos.cli import main

    monkeypatch.setenv("ARENA_TEST_KEY", API_KEY)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "battles.jsonl"
    main(["arena", "battle", "--contestant", f"memo={memorised}", "--contestant",
          f"noise={random_model}", "--contestant",
          f"remote=openai:{server}/v1#memo;key=ARENA_TEST_KEY", "--prompts", str(prompts),
          "--judge", "verifier", "--out", str(out), "--max-tokens", "64", "--bootstrap", "50"])
    got, _ = battles.read_battles(out)
    assert len(got) == 3 * 2 * 2  # 3 pairs x 2 prompts x 2 orders
    orders = {(b["model_a"], b["model_b"], b["prompt_index"]) for b in got}
    assert all((b, a, i) in orders for a, b, i in orders)  # every judgement in both orders
    assert all(b["judge"] == "verifier" and b["anony"] for b in got)
    for b in got:
        if {b["model_a"], b["model_b"]} == {"memo", "remote"}:
            assert b["winner"] == "tie"  # the same model behind the API answers the same
        elif b["model_a"] == "noise":
            assert b["winner"] == "model_b"
        elif b["model_b"] == "noise":
            assert b["winner"] == "model_a"
    printed = capsys.readouterr()
    assert "wrote 12 battles" in printed.err
    assert "the same verdict in both orders on 6 of 6 pair-prompts" in printed.err  # verifier
    table = printed.out.splitlines()
    assert table[0].split()[:2] == ["rank", "model"]
    assert table[-1].split()[1] == "noise"  # last: it never wins
    # the file is what `llmos arena leaderboard` reads
    main(["arena", "leaderboard", str(out), "--bootstrap", "0", "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in rows} == {"memo", "noise", "remote"}


@pytest.mark.slow  # builds the built-in assistant set from the standard library (about 8 s)
def test_builtin_heldout_prompts_have_reference_answers():
    items = autoarena.load_prompts("builtin:assistant-heldout", limit=5)
    assert len(items) == 5 and all(i.answer and i.messages[-1]["role"] == "user" for i in items)


def test_battle_needs_two_contestants_and_prompts(memorised, tmp_path):
    one = parse_peers([f"memo={memorised}"])
    with pytest.raises(ValueError, match="two contestants"):
        autoarena.run(one, [judges.Item([])], judges.VerifierJudge(), tmp_path / "b.jsonl")
