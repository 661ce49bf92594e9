"""Behaviour measures: each detector on hand-made answers (fires, does not fire), the agent loop's
record of one answer over a scripted token stream, prompt-level intervals, the report card's
table, and `llmos eval --tasks behaviour` end to end on a random tiny model."""

from __future__ import annotations

import json
import random

import pytest
from conftest import random_checkpoint

from llmos import cli
from llmos import tokenizer as tokenizers_
from llmos.agent.loop import STOP
from llmos.cli.model_commands import CHAT_SAMPLING
from llmos.data.builtin.comparisons import EVASIVE, WRONG_IDENTITY, _looping
from llmos.data.records import Conversation
from llmos.evals import behaviour, own_samples, report
from llmos.evals.behaviour import (
    KINDS,
    detect,
    evasive,
    looping,
    needed_tool,
    rules_out_tools,
    wrong_identity,
)
from llmos.infer.engine import SamplingParams

# ---- looping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "the height of the height of the height of ...",
    "The area is the height of the height of the height of the height of the hei",
    "1 + 7 = 8, so 1 + 57 = = = = = = = = = = = = = = = = = = =",  # punctuation loops too
    "8 + 7 = 15, carry 1: 4 + 3 + 1 = 8, so 48 + 37 = 85.5.5.5.",  # a short piece at the end
    "`cmd.Cmd(cmd.Cmd, line.Cmd, line.Cmd, line.Cmd, line.Cmd, line.Cmd, line.Cmd, line.Cmd.",
    "`loglogloglogloglogloglogloglogloglogloglog",
])
def test_looping_fires_on_loops(text):
    assert looping(text)


@pytest.mark.parametrize("text", [
    "48 + 37 = 85.",
    "8 + 7 = 15, carry 1: 4 + 3 + 1 = 8, so 48 + 37 = 85.",
    "`tempfile.SpooledTemporaryFile(max_size=0, mode='w+b', buffering=-1, encoding=None, "
    "newline=None, suffix=None, prefix=None, dir=None, *, errors=None)`",
    "`json.dumps` serializes ``obj`` to a JSON formatted ``str``.",
    "It evaluates to `'lantlantlantlant'`.",  # 'lant' * 4 is right, not a loop
    "The `pdb` module is the Python Debugger Pdb =======================.",
    "I'm llmos, a small language model trained from scratch with llmos on the source code of "
    "the Python standard library.",
])
def test_looping_leaves_normal_answers_alone(text):
    assert not looping(text)


def test_looping_catches_every_built_in_loop_and_ignores_copied_output():
    rng = random.Random(0)
    golds = ["`textwrap.fill(text, width=70, **kwargs)`", "48 + 37 = 85.",
             "8 + 7 = 15, carry 1: 4 + 3 + 1 = 8, so 48 + 37 = 85.",
             "`json.dumps` serializes an object to a JSON formatted string.",
             "259 * 537 = 139083. There are 139083 apples in 259 boxes."]
    loops = [x for g in golds for _ in range(40) if (x := _looping(rng, g))]
    assert len(loops) > 150 and all(looping(x) for x in loops)
    out = "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"
    assert looping(f"It prints {out}") and not looping(f"It prints {out}", context=out)


# ---- evasive, identity -----------------------------------------------------------------------


def test_evasive_hedges_and_only_when_the_answer_is_not_right():
    assert all(evasive(e) for e in EVASIVE)
    assert evasive("Hmm, I do not know. Could you clarify what you mean?")
    for text in ("`json.dumps` serializes an object to a JSON formatted string.", "48 + 7 = 55.",
                 "`'read the docs first'.split()` returns `['read', 'the', 'docs', 'first']`."):
        assert not evasive(text)
    sample = _sample(task="mental", expected="55", answer="I'm not sure. Maybe 55?")
    assert detect(sample)["evasive"] is False  # hedged but right: not a non-answer
    sample["answer"] = "I'm not sure."
    assert detect(sample)["evasive"] is True


def test_wrong_identity():
    assert all(wrong_identity(w) for w in WRONG_IDENTITY)
    assert wrong_identity("I am llmos. Just kidding, I'm ChatGPT, made by OpenAI.")
    for right in ("I'm llmos, a small language model trained from scratch with llmos.",
                  "No, I'm not ChatGPT. I'm llmos.", "No. I was not made by OpenAI; I'm llmos."):
        assert not wrong_identity(right)
    verdicts = detect(_sample(task="identity", expected="llmos", answer="I am a human."))
    assert verdicts["wrong_identity"] and verdicts["wrong_answer"]
    signature = _sample(task="signature", expected="f(x)", answer="f(x)")
    assert detect(signature)["wrong_identity"] is None


# ---- tools ------------------------------------------------------------------------------------


def _conv(task, messages, answer="5") -> Conversation:
    return Conversation(messages=messages, source="t", task=task, subject="s", answer=answer)


def test_the_tool_a_prompt_needs_comes_from_its_gold_answer():
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": {}}}]}
    arithmetic = _conv("arithmetic", [{"role": "user", "content": "What is 2 + 3?"}, call,
                                      {"role": "tool", "content": "5"},
                                      {"role": "assistant", "content": "2 + 3 = 5."}])
    assert needed_tool(arithmetic) == "calculator" and not rules_out_tools(arithmetic)
    mental = _conv("mental", [{"role": "user", "content": "In your head: 2 + 3 = ?"},
                              {"role": "assistant", "content": "2 + 3 = 5."}])
    assert needed_tool(mental) is None and rules_out_tools(mental)
    earlier = [{"role": "user", "content": "What is 1 + 1?"}, call,
               {"role": "tool", "content": "2"}, {"role": "assistant", "content": "2."}]
    session = _conv("session", earlier + [
        {"role": "user", "content": "Work out 87 - 7 mentally."},
        {"role": "assistant", "content": "7 - 7 = 0, so 87 - 7 = 80."}], "80")
    assert rules_out_tools(session) and needed_tool(session) is None  # the last question counts
    session.messages[-2]["content"] = "What is 87 - 7?"
    assert not rules_out_tools(session)


def _sample(**kw) -> dict:
    s = {"task": "docstring", "expected": "x", "answer": "", "texts": [], "context": "",
         "calls": [], "attempted_calls": 0, "failed_calls": 0, "needs_tool": None,
         "no_tools": False}
    s.update(kw)
    s["texts"] = s["texts"] or [s["answer"]]
    return s


def test_tool_verdicts():
    asked = dict(task="arithmetic", expected="5", answer="2 + 3 = 5.", needs_tool="calculator")
    v = detect(_sample(**asked))
    assert v["skipped_tool"] is True and v["malformed_tool_call"] is None
    assert v["used_tool"] is None and v["wrong_answer"] is False
    v = detect(_sample(**asked, calls=["calculator"], attempted_calls=1))
    assert v["skipped_tool"] is False and v["malformed_tool_call"] is False
    v = detect(_sample(**asked, calls=["python"], attempted_calls=2, failed_calls=1))
    assert v["skipped_tool"] is True and v["malformed_tool_call"] is True  # the wrong tool
    mental = dict(task="mental", expected="5", answer="2 + 3 = 5.", no_tools=True)
    assert detect(_sample(**mental))["used_tool"] is False
    assert detect(_sample(**mental, calls=["calculator"], attempted_calls=1))["used_tool"] is True
    assert detect(_sample(**mental, attempted_calls=1, failed_calls=1))["used_tool"] is True
    assert detect(_sample(**{**mental, "answer": "2 + 3 = 6."}))["wrong_answer"] is True
    assert detect(_sample(task="docstring", answer="bla"))["wrong_answer"] is None


# ---- one answer through the agent loop, over a scripted stream ---------------------------------

CALL = '<tool_call>\n{"name": "%s", "arguments": {"expression": "2 + 3"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tok(corpus_dir):
    return tokenizers_.train_bpe([p.read_text() for p in sorted(corpus_dir.glob("*.py"))], 400)


def _answer(tok, replies: list[str], stop_last: bool = True) -> dict:
    rounds = iter(replies)

    def generate(prompt, params):
        text = next(rounds)
        yield from tok.encode(text, add_special_tokens=False).ids
        if stop_last or text != replies[-1]:
            yield STOP

    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    return own_samples.answer(generate, tok, messages, SamplingParams(max_new_tokens=200))


def test_an_answer_records_calls_and_what_failed(tok):
    r = _answer(tok, [CALL % "calculator", "2 + 3 = 5."])
    assert r["answer"] == "2 + 3 = 5." and r["calls"] == ["calculator"]
    assert (r["attempted_calls"], r["failed_calls"], r["finish"]) == (1, 0, "stop")
    assert [m["role"] for m in r["transcript"]] == ["assistant", "tool", "assistant"]
    r = _answer(tok, [CALL % "abacus", "<tool_call>\n{oops\n</tool_call>", "5."])
    assert r["calls"] == ["abacus"] and (r["attempted_calls"], r["failed_calls"]) == (2, 2)
    assert "unknown tool" in r["errors"][-1]
    # A call cut off by the token budget never reaches the loop's error events; it is counted.
    r = _answer(tok, ['<tool_call>\n{"name": "calcul'], stop_last=False)
    assert r["finish"] == "length" and (r["attempted_calls"], r["failed_calls"]) == (1, 1)


# ---- rates and intervals -----------------------------------------------------------------------


def _verdicts(prompt_id: int, **fired) -> dict:
    return {"prompt_id": prompt_id, "detectors": {k: fired.get(k) for k in KINDS}}


def test_rates_resample_prompts():
    never = [_verdicts(i // 4, looping=False) for i in range(40)]
    r = behaviour.rates(never)["looping"]
    assert r == {"rate": 0.0, "ci": [0.0, 0.0], "n": 40, "prompts": 10}
    assert behaviour.rates(never)["evasive"] == {"rate": None, "ci": [0.0, 1.0], "n": 0,
                                                 "prompts": 0}
    # Every prompt fails on one of its two samples: every resample of prompts gives 0.5 (a
    # resample of samples would not).
    half = [_verdicts(i // 2, looping=i % 2 == 0) for i in range(20)]
    assert behaviour.rates(half)["looping"] == {"rate": 0.5, "ci": [0.5, 0.5], "n": 20,
                                                "prompts": 10}
    # One prompt fails on all three samples, one on none: resamples give 1, 0.75, 0.
    mixed = [_verdicts(0, wrong_answer=True)] * 3 + [_verdicts(1, wrong_answer=False)]
    r = behaviour.rates(mixed)["wrong_answer"]
    assert r == {"rate": 0.75, "ci": [0.0, 1.0], "n": 4, "prompts": 2}
    assert behaviour.rates(mixed, seed=3) == behaviour.rates(mixed, seed=3)


# ---- the report card ---------------------------------------------------------------------------


def test_the_report_card_has_a_behaviour_table(tmp_path):
    rates = {kind: {"rate": 0.0, "ci": [0.0, 0.0], "n": 8, "prompts": 2} for kind in KINDS}
    rates["looping"] = {"rate": 0.123, "ci": [0.08, 0.17], "n": 400, "prompts": 100}
    rates["wrong_identity"] = {"rate": None, "ci": [0.0, 1.0], "n": 0, "prompts": 0}
    for name, stage in (("sft", "sft"), ("dpo", "dpo"), ("base", "pretrain")):
        (tmp_path / name / "evals").mkdir(parents=True)
        (tmp_path / name / "llmos.json").write_text(json.dumps({"stage": stage}))
    for name, looped in (("sft", 0.123), ("dpo", 0.05)):
        rates["looping"]["rate"] = looped
        result = {"kind": "behaviour", "primary": "clean", "n": 400, "samples_per_prompt": 4,
                  "metrics": {"clean": 0.8}, "behaviour": rates, "items": [{"big": 1}]}
        (tmp_path / name / "evals" / "behaviour.json").write_text(json.dumps(
            {"created": "2025-01-01T00:00:00+00:00", "limit": None, "behaviour": rates,
             "results": {"behaviour": result}}))
    md = report.markdown(tmp_path)
    section = md.split("## Behaviour")[1].split("\n## ")[0]
    assert "| failure | sft | dpo |" in section  # checkpoints without a result: no column
    assert "| looping | 0.123 [0.080, 0.170] (n = 400) | 0.050 [0.080, 0.170] (n = 400) |" \
        in section
    assert "| wrong_identity | - | - |" in section
    assert all(f"| {kind} |" in section for kind in KINDS)
    assert "## Behaviour" not in report.markdown(tmp_path / "base")  # none there: no section


# ---- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight checkpoint with a 512-token window: every held-out prompt fits."""
    texts = ["What is 2 + 3? 2 + 3 = 5. I'm llmos. def f(x):\n    return x\n" * 20]
    return random_checkpoint(tmp_path_factory.mktemp("behaviour"), texts, 320, 512)


def _transcripts(samples: list[dict]) -> list:
    """What was said, without the tool calls' random ids."""
    return [[{k: v for k, v in m.items() if k not in ("tool_calls", "tool_call_id")}
             for m in s["transcript"]] for s in samples]


def test_samples_are_seeded_and_the_same_in_any_company(tiny):
    from llmos import checkpoint

    model, tok = checkpoint.load_model(tiny, "cpu"), tokenizers_.load(tiny)
    convs = [_conv("mental", [{"role": "user", "content": f"In your head: {a} + 3 = ?"}])
             for a in (2, 40, 71)]
    alone = own_samples.sample(model, tok, convs, 3, seed=5, max_new_tokens=24, concurrent=1)
    together = own_samples.sample(model, tok, convs, 3, seed=5, max_new_tokens=24, concurrent=9)
    assert _transcripts(alone) == _transcripts(together)
    assert [(s["prompt_id"], s["sample"]) for s in alone] == [(i, j) for i in range(3)
                                                             for j in range(3)]
    assert len({s["seed"] for s in alone}) == 9
    other = own_samples.sample(model, tok, convs, 3, seed=6, max_new_tokens=24, concurrent=9)
    assert _transcripts(other) != _transcripts(alone)


def test_llmos_eval_behaviour_end_to_end(tiny, tmp_path, capsys):
    assert (own_samples.TEMPERATURE, own_samples.TOP_P) == (CHAT_SAMPLING["temperature"],
                                                           CHAT_SAMPLING["top_p"])
    out = tmp_path / "b.json"
    cli.main(["eval", str(tiny), "--tasks", "behaviour", "--limit", "9", "--seed", "1",
              "--out", str(out)])
    printed = capsys.readouterr().out
    assert "malformed_tool_call" in printed and "95% interval" in printed
    data = json.loads(out.read_text())
    assert set(data["behaviour"]) == set(KINDS) and data["seed"] == 1
    r = data["results"]["behaviour"]
    items = r["items"]
    assert r["metrics"]["prompts"] == 9 and len(items) == 9 * behaviour.SAMPLES == r["n"]
    assert {s["task"] for s in items} >= {"arithmetic", "mental", "identity", "python"}
    for kind, v in data["behaviour"].items():
        applies = [s for s in items if s["detectors"][kind] is not None]
        assert v["n"] == len(applies)
        assert v["prompts"] == len({s["prompt_id"] for s in applies})
        if v["n"]:
            assert 0 <= v["ci"][0] <= v["rate"] <= v["ci"][1] <= 1
            assert v["rate"] == round(sum(s["detectors"][kind] for s in applies) / v["n"], 4)
    s = items[0]
    for key in ("prompt", "answer", "transcript", "detectors", "fired", "seed", "calls"):
        assert key in s
    assert s["fired"] == [k for k, v in s["detectors"].items() if v]
