"""The chat format: the Python renderer, the Jinja template under transformers, the loss mask,
and parsing what the model writes."""

from __future__ import annotations

import json

import pytest

from llmos import chat_format
from llmos import tokenizer as tokenizers_

CALC = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}

CONVERSATIONS = {
    "plain": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    "system": [{"role": "system", "content": "Be brief."},
               {"role": "user", "content": "What does `len` do?"},
               {"role": "assistant", "content": "Returns the number of items."},
               {"role": "user", "content": "Thanks. ünïcode ✓"},
               {"role": "assistant", "content": "You're welcome."}],
    "tools": [{"role": "user", "content": "What is 347 * 29?"},
              {"role": "assistant", "content": "", "tool_calls": [
                  {"type": "function", "function": {"name": "calculator",
                                                    "arguments": {"expression": "347 * 29"}}}]},
              {"role": "tool", "name": "calculator", "content": "10063"},
              {"role": "assistant", "content": "347 * 29 = 10063."}],
    "two_calls_with_text": [
        {"role": "system", "content": "You can compute."},
        {"role": "user", "content": "1+1 and 2+2?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"type": "function", "function": {"name": "calculator",
                                              "arguments": {"expression": "1+1"}}},
            {"type": "function", "function": {"name": "calculator",
                                              "arguments": {"expression": "2+2"}}}]},
        {"role": "tool", "name": "calculator", "content": "2"},
        {"role": "tool", "name": "calculator", "content": "4"},
        {"role": "assistant", "content": "2 and 4."}],
    "string_arguments": [  # OpenAI clients send arguments as a JSON string
        {"role": "user", "content": "2*3?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "calculator", "arguments": '{"expression":"2*3"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "6"},
        {"role": "assistant", "content": "6."}],
    "think": [{"role": "user", "content": "Is 7 prime?"},
              {"role": "assistant", "content": "Yes.", "reasoning_content": "7 has no divisors."}],
}


@pytest.fixture(scope="module")
def tok(corpus_dir):
    texts = [p.read_text() for p in sorted(corpus_dir.glob("*.py"))]
    texts.append(" ".join(json.dumps(m) for c in CONVERSATIONS.values() for m in c))
    return tokenizers_.train_bpe(texts, 400)


@pytest.fixture(scope="module")
def hf_tok(tok, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("tok")
    tokenizers_.save(tok, out, max_len=256)
    return transformers.AutoTokenizer.from_pretrained(str(out))


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("with_tools", [False, True])
def test_template_and_renderer_give_the_same_tokens(tok, hf_tok, name, with_tools):
    messages = CONVERSATIONS[name]
    tools = [CALC] if with_tools else None
    for prompt_only in (False, True):
        msgs = messages[:-1] if prompt_only else messages
        ours = chat_format.render(tok, msgs, tools, add_generation_prompt=prompt_only)
        text = hf_tok.apply_chat_template(msgs, tools=tools, tokenize=False,
                                          add_generation_prompt=prompt_only)
        theirs = hf_tok.apply_chat_template(msgs, tools=tools, tokenize=True,
                                            add_generation_prompt=prompt_only)
        if not isinstance(theirs, list):  # newer transformers return a BatchEncoding
            theirs = theirs["input_ids"]
        assert text == chat_format.render_text(msgs, tools, prompt_only)[0]
        assert ours.ids == list(theirs)


def test_loss_mask_covers_exactly_the_assistant_turns(tok):
    messages = CONVERSATIONS["two_calls_with_text"]
    out = chat_format.render(tok, messages, [CALC])
    trained = tok.decode([i for i, m in zip(out.ids, out.mask) if m], skip_special_tokens=False)
    assert trained == (
        'Let me check.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}'
        '\n</tool_call>\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}'
        "\n</tool_call><|im_end|>2 and 4.<|im_end|>")
    assert len(out.mask) == len(out.ids)
    # Nothing of the system prompt, tools, user turn or tool output is trained.
    untrained = tok.decode([i for i, m in zip(out.ids, out.mask) if not m],
                           skip_special_tokens=False)
    for text in ("You can compute.", "1+1 and 2+2?", "<tool_response>\n2\n</tool_response>",
                 "<|im_start|>assistant\n"):
        assert text in untrained


def test_think_block_is_trained_and_parsed_back(tok):
    out = chat_format.render(tok, CONVERSATIONS["think"])
    trained = tok.decode([i for i, m in zip(out.ids, out.mask) if m], skip_special_tokens=False)
    assert trained == "<think>\n7 has no divisors.\n</think>\nYes.<|im_end|>"
    turn = chat_format.parse_assistant(trained)
    assert (turn.reasoning, turn.content, turn.tool_calls) == ("7 has no divisors.", "Yes.", [])


def test_string_arguments_are_written_as_sent_and_must_be_json_objects():
    as_string = [{"role": "user", "content": "x"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "c1", "type": "function",
                      "function": {"name": "calculator", "arguments": '{"expression": "2*3"}'}}]}]
    text, _ = chat_format.render_text(as_string)
    assert '{"name": "calculator", "arguments": {"expression": "2*3"}}' in text
    as_string[1]["tool_calls"][0]["function"]["arguments"] = "{not json"
    with pytest.raises(chat_format.ChatFormatError, match="not valid JSON"):
        chat_format.render_text(as_string)


def test_unknown_role_is_a_clear_error():
    with pytest.raises(chat_format.ChatFormatError, match="unknown role 'robot'"):
        chat_format.render_text([{"role": "robot", "content": "beep"}])


def test_parse_assistant_reads_tool_calls_and_reports_malformed_ones():
    turn = chat_format.parse_assistant(
        'Sure.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+2"}}\n'
        "</tool_call><|im_end|>")
    assert turn.content == "Sure."
    assert [c["function"] for c in turn.tool_calls] == [
        {"name": "calculator", "arguments": {"expression": "1+2"}}]
    assert turn.tool_calls[0]["id"].startswith("call_") and not turn.errors

    bad = chat_format.parse_assistant('<tool_call>\n{"name": "calculator", "arguments": [1]}\n'
                               "</tool_call>\n<tool_call>{oops</tool_call>\n<tool_call>{")
    assert bad.tool_calls == [] and len(bad.errors) == 3
    assert "no closing </tool_call>" in bad.errors[-1]
