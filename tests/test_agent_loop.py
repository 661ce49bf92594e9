"""The tool loop over a scripted token stream (the model's side is replayed from text, so each
round's behaviour is exact), and the held-out scoring rules."""

from __future__ import annotations

import pytest

from llmos import tokenizer as tokenizers_
from llmos.agent.loop import STOP, forced_call, respond
from llmos.agent.tools import BUILTIN_TOOLS
from llmos.envs.verifiers import contains_number, score, word_f1
from llmos.infer.engine import SamplingParams

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "%s"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tok(corpus_dir):
    return tokenizers_.train_bpe([p.read_text() for p in sorted(corpus_dir.glob("*.py"))], 400)


def scripted(tok, replies: list[str]):
    """A TokenStream that answers round k with replies[k], then a stop; records the prompts."""
    prompts = []

    def generate(prompt, params):
        prompts.append(tok.decode(prompt, skip_special_tokens=False))
        yield from tok.encode(replies[len(prompts) - 1], add_special_tokens=False).ids
        yield STOP

    return generate, prompts


def run(tok, replies, **kw):
    generate, prompts = scripted(tok, replies)
    events = list(respond(generate, tok, [{"role": "user", "content": "What is 347 * 29?"}],
                          SamplingParams(max_new_tokens=200), **kw))
    return events, prompts


def test_a_tool_call_runs_and_its_result_reaches_the_next_round(tok):
    events, prompts = run(tok, [CALL % "347 * 29", "347 * 29 = 10063."])
    kinds = [e.kind for e in events]
    assert kinds.count("tool_call") == 1 and kinds[-1] == "done"
    assert [e.text for e in events if e.kind == "tool_result"] == ["10063"]
    assert "<tool_response>\n10063\n</tool_response>" in prompts[1]
    done = events[-1].data
    assert done["finish_reason"] == "stop"
    assert [m["role"] for m in done["messages"]] == ["assistant", "tool", "assistant"]
    assert done["messages"][-1]["content"] == "347 * 29 = 10063."


def test_a_malformed_call_is_told_to_the_model_not_raised(tok):
    events, prompts = run(tok, ["<tool_call>\n{oops\n</tool_call>", "Sorry."])
    assert [e.kind for e in events if e.kind == "error"] == ["error"]
    assert "error: malformed tool call" in prompts[1]
    assert events[-1].data["finish_reason"] == "stop"


def test_the_last_round_does_not_run_tools_nobody_will_read(tok):
    events, prompts = run(tok, [CALL % "1+1", CALL % "2+2"], max_rounds=2)
    assert len(prompts) == 2
    assert [e.text for e in events if e.kind == "tool_result"] == ["2"]  # round 1 only
    assert events[-1].data["finish_reason"] == "tool_rounds"


def test_a_declared_function_ends_the_loop_for_the_client(tok):
    declared = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
    events, prompts = run(tok, [CALL % "5*5"], tools={}, declared=declared)
    assert events[-1].data["finish_reason"] == "tool_calls"
    assert not [e for e in events if e.kind == "tool_result"]
    assert "# Tools" in prompts[0]  # the declared function is described to the model
    assert "# Tools" not in run(tok, ["hi"], tools=BUILTIN_TOOLS)[1][0]  # built-ins are not


@pytest.mark.parametrize("force, continuation", [
    ("", ' "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'),
    ("calculator", ' {"expression": "6*7"}}\n</tool_call>')])
def test_a_forced_turn_starts_as_the_call_and_the_model_goes_on_from_there(
        tok, force, continuation):
    declared = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
    events, prompts = run(tok, [continuation], tools={}, declared=declared, force=force)
    start = forced_call(force)
    assert start.endswith(":")  # cut where the tokenizer cuts a whole call too
    assert prompts[0].endswith("<|im_start|>assistant\n" + start)
    assert events[0].kind == "text" and events[0].text == start
    (call,) = [e.data for e in events if e.kind == "tool_call"]
    assert call["function"] == {"name": "calculator", "arguments": {"expression": "6*7"}}
    assert events[-1].data["finish_reason"] == "tool_calls"
    (turn,) = [e.data for e in events if e.kind == "turn"]
    assert turn["content"] == "" and turn["tool_calls"][0]["function"]["name"] == "calculator"


def test_running_out_of_tokens_mid_answer_is_length(tok):
    generate, _ = scripted(tok, ["a long answer that goes on"])
    events = list(respond(lambda p, params: (t for t in generate(p, params) if t != STOP),
                          tok, [{"role": "user", "content": "x"}],
                          SamplingParams(max_new_tokens=3)))
    assert events[-1].data["finish_reason"] == "length"


@pytest.mark.parametrize("task, expected, answer, right", [
    ("arithmetic", "10063", "347 * 29 = 10063.", True),
    ("arithmetic", "123", "It is -123.", False),
    ("arithmetic", "31", "March 2031 has 30 days.", False),
    ("arithmetic", "1234", "The result is 1,234.", True),
    ("python", "31", "It has 31 days.", True),
    ("python", "1", "The gcd is 12.", False),
    ("python", "['a', 'b']", "It returns `['a', 'b']`.", True),
    ("signature", "`f(a, b=2)`", "It is called like `f(a, b=2)`.", True),
    ("identity", "", "I'm llmos, a small model.", True),
])
def test_scoring_rules(task, expected, answer, right):
    assert (score(task, expected, answer) == 1.0) is right


def test_number_matching_and_word_f1():
    assert contains_number("x = 2.5", "2.5") and not contains_number("x = 2.55", "2.5")
    assert word_f1("returns the current DTD handler", "Returns the current DTD handler.") == 1.0
    assert word_f1("nothing alike", "Returns the handler") == 0.0
