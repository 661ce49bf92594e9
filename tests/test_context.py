"""The context window as RAM: prompts fitted to the budget in the policy's order (old tool
outputs, then old turns, then the end of the last message), never silently."""

from __future__ import annotations

import pytest

from llmos import chat_format
from llmos import tokenizer as tk
from llmos.agent.context import STUB, ContextBudget, fit
from llmos.agent.loop import STOP, respond
from llmos.infer.engine import SamplingParams

WORDS = "the kettle boils water when the switch is on and the light glows red".split()


@pytest.fixture(scope="module")
def tok():
    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 30
    return tk.train_bpe(texts + ["What is 48 + 7? 55. calculator tool result"] * 10, 400)


def size(tok, msgs):
    return len(chat_format.render(tok, msgs, add_generation_prompt=True).ids)


def chat(turns: int, with_tools: bool = True) -> list[dict]:
    msgs = [{"role": "system", "content": "the kettle"}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"{' '.join(WORDS)} {i}"})
        if with_tools:
            call = {"id": f"c{i}", "type": "function",
                    "function": {"name": "calculator", "arguments": {"expression": "1+1"}}}
            msgs += [{"role": "assistant", "content": "", "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": f"c{i}", "content": " ".join(WORDS * 8)}]
        msgs.append({"role": "assistant", "content": " ".join(WORDS[:6])})
    msgs.append({"role": "user", "content": "What is 48 + 7?"})
    return msgs


def test_a_conversation_that_fits_is_left_alone(tok):
    msgs = chat(1)
    fitted = fit(tok, msgs, ContextBudget(4096))
    assert fitted.messages == msgs and fitted.notes == []


def test_old_tool_outputs_give_way_first(tok):
    msgs = chat(3)
    full = size(tok, msgs)
    stubbed = [dict(m, content=STUB) if m["role"] == "tool" else m for m in msgs]
    budget = ContextBudget(size(tok, stubbed) + 10, reserve=10)
    assert full > budget.prompt
    fitted = fit(tok, msgs, budget)
    assert fitted.messages == stubbed and fitted.notes == ["dropped 3 old tool outputs"]
    assert msgs[3]["content"] != STUB  # the conversation itself is not changed


def test_then_the_oldest_turns_and_what_is_kept(tok):
    msgs = chat(12)
    budget = ContextBudget(200, reserve=40)
    fitted = fit(tok, msgs, budget)
    assert fitted.tokens == size(tok, fitted.messages) <= budget.prompt
    assert fitted.messages[0]["role"] == "system"
    assert fitted.messages[0]["content"].startswith("the kettle\n\n(")  # the note joins it
    assert "earlier turns left out" in fitted.messages[0]["content"]
    assert fitted.messages[-1] == msgs[-1]  # the question being answered is whole
    assert fitted.notes[0] == "dropped 12 old tool outputs"
    assert fitted.notes[1].startswith("dropped the ") and "oldest turns" in fitted.notes[1]


def test_the_model_can_summarise_what_gives_way(tok):
    seen = []

    def summarize(older):
        seen.append(older)
        return "the user asked about kettles"

    fitted = fit(tok, chat(12), ContextBudget(220, reserve=40), summarize)
    assert len(seen) == 1 and seen[0][0]["role"] == "user"  # asked once, oldest turns first
    assert ("Summary of the earlier conversation: the user asked about kettles"
            in fitted.messages[0]["content"])
    assert fitted.notes[1].startswith("summarised the ")


def test_one_message_longer_than_the_window_keeps_its_end(tok):
    msgs = [{"role": "user", "content": " ".join(WORDS * 40) + " What is 48 + 7?"}]
    fitted = fit(tok, msgs, ContextBudget(64, reserve=16))
    assert fitted.tokens <= 48 and fitted.messages[0]["content"].endswith("What is 48 + 7?")
    assert fitted.notes[0].startswith("kept the last ")


def test_the_loop_fits_every_round_and_says_so(tok):
    prompts = []
    answer = tok.encode("55.", add_special_tokens=False).ids

    def generate(prompt, params):
        prompts.append(prompt)
        yield from answer
        yield STOP

    budget = ContextBudget(200, reserve=40)
    events = list(respond(generate, tok, chat(12), SamplingParams(max_new_tokens=40),
                          tools={}, window=budget))
    assert max(len(p) for p in prompts) <= budget.prompt
    context = [e for e in events if e.kind == "context"]
    assert len(context) == 1 and "oldest turns" in context[0].text
    assert events[-1].data["finish_reason"] == "stop"


def test_a_lone_system_message_and_a_long_tool_result_of_this_turn(tok):
    alone = [{"role": "system", "content": " ".join(WORDS * 40)}]
    fitted = fit(tok, alone, ContextBudget(64, reserve=16))  # returns, nothing to give way
    assert fitted.messages == alone
    call = {"id": "c", "type": "function",
            "function": {"name": "browse", "arguments": {"url": "http://x"}}}
    msgs = [{"role": "user", "content": "What is 48 + 7?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c", "content": " ".join(WORDS * 40)}]
    budget = ContextBudget(200, reserve=16)
    assert size(tok, msgs) > budget.prompt
    fitted = fit(tok, msgs, budget)
    assert fitted.tokens <= budget.prompt and fitted.messages[0] == msgs[0]  # the question whole
    assert fitted.messages[2]["content"] == STUB
    assert fitted.notes == ["dropped 1 tool output of this turn"]


def test_what_was_read_this_turn_stays_while_a_short_answer_fits(tok):
    """The passage the answer comes from gives way only when fewer than min_answer tokens
    would be left for the answer, not to keep the whole reserve free."""
    call = {"id": "c", "type": "function",
            "function": {"name": "search_knowledge", "arguments": {"query": "kettle"}}}
    msgs = [{"role": "user", "content": "What is 48 + 7?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c", "content": " ".join(WORDS * 3)}]
    n = size(tok, msgs)
    roomy = ContextBudget(n + 20, reserve=64, min_answer=16)  # 20 tokens left: enough
    assert n > roomy.prompt
    kept = fit(tok, msgs, roomy)
    assert kept.messages == msgs and kept.notes == []
    tight = ContextBudget(n + 10, reserve=64, min_answer=16)  # 10 left: the passage goes
    dropped = fit(tok, msgs, tight)
    assert dropped.messages[2]["content"] == STUB
    assert dropped.tokens <= tight.hard_prompt
