"""Conversation data for SFT: file readers, validation with counted skips, the built-in set."""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import types

import pytest
from conftest import write_jsonl

from llmos.data.builtin.arithmetic import (
    MENTAL2_ITEMS,
    MENTAL_REPEATS,
    arithmetic_practice,
    two_digit_problems,
)
from llmos.data.builtin.assistant import HELDOUT_AT_LEAST, IDENTITY_HELDOUT, assistant_dataset
from llmos.data.builtin.turns import is_heldout
from llmos.data.conversations import parse_messages, parse_record, read_conversations
from llmos.data.records import (
    BadConversation,
    Conversation,
    ConversationError,
    ConversationSkips,
)
from llmos.data.sources import SourceError


def chat(*turns: str) -> dict:
    roles = ["user", "assistant"]
    return {"messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]}


def calc_call(arguments, call_id=None) -> dict:
    call = {"type": "function", "function": {"name": "calculator", "arguments": arguments}}
    if call_id:
        call["id"] = call_id
    return call


# --- reading files ----------------------------------------------------------------------------


def test_jsonl_openai_shape_with_tool_calls(tmp_path):
    record = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 347 * 29?", "weight": 1},
        {"role": "assistant", "content": None, "reasoning_content": "Use the tool.",
         "tool_calls": [calc_call('{"expression": "347 * 29"}', "call_1")]},
        {"role": "tool", "tool_call_id": "call_1", "content": "10063"},
        {"role": "assistant", "content": [{"type": "text", "text": "347 * 29 = 10063."}]},
    ], "id": "abc"}
    dict_args = {"messages": [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "Let me check.",
         "tool_calls": [calc_call({"expression": "2 + 2"})]},
        {"role": "tool", "name": "calculator", "content": "4"},
        {"role": "assistant", "content": "4."},
    ]}
    path = write_jsonl(tmp_path / "a.jsonl", [record, "", dict_args])
    convs, skips = read_conversations([path])
    assert skips.total == 0 and skips.summary() == "nothing skipped"
    assert [c.source for c in convs] == [f"{path}:1", f"{path}:3"]
    assert convs[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 347 * 29?"},
        {"role": "assistant", "content": "", "reasoning_content": "Use the tool.",
         "tool_calls": [{"type": "function", "function": {
             "name": "calculator", "arguments": {"expression": "347 * 29"}}}]},
        {"role": "tool", "content": "10063", "name": "calculator"},
        {"role": "assistant", "content": "347 * 29 = 10063."},
    ]
    assert convs[1].messages[1]["tool_calls"][0]["function"]["arguments"] == {
        "expression": "2 + 2"}
    assert convs[1].messages[1]["content"] == "Let me check."
    assert (convs[0].task, convs[0].subject, convs[0].answer) == ("chat", "", "")


def test_sharegpt_shape_maps_speakers_and_function_calls(tmp_path):
    records = [
        {"system": "You are terse.", "conversations": [
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
            {"from": "user", "value": "Weather in Oslo?"},
            {"from": "gpt", "value": "Checking."},  # text, then a call: one assistant turn
            {"from": "function_call",
             "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": "-3 C"},
            {"from": "gpt", "value": "It is -3 C in Oslo."},
        ]},
        {"conversations": [
            {"from": "system", "value": "Use tools."}, {"from": "human", "value": "5 * 6?"},
            {"from": "function_call",
             "value": '{"name": "calculator", "arguments": "{\\"expression\\": \\"5 * 6\\"}"}'},
            {"from": "tool", "value": "30"}, {"from": "assistant", "value": "30."},
        ]},
    ]
    convs, skips = read_conversations([write_jsonl(tmp_path / "s.jsonl", records)])
    assert skips.total == 0
    first = convs[0].messages
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user", "assistant",
                                          "tool", "assistant"]
    assert first[0]["content"] == "You are terse."
    assert first[4] == {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]}
    assert first[5] == {"role": "tool", "content": "-3 C", "name": "weather"}
    second = convs[1].messages
    assert second[2]["tool_calls"][0]["function"]["arguments"] == {"expression": "5 * 6"}
    assert second[3]["name"] == "calculator"


GOOD = chat("Hello", "Hi there.")
BAD_LINES = {  # reason -> a line that breaks exactly that rule
    "malformed_json": '{"messages": [',
    "not_object": "[1, 2, 3]",
    "missing_messages": {"text": "a pretraining document"},
    "bad_message": {"messages": ["just a string", {"role": "assistant", "content": "x"}]},
    "unknown_role": {"messages": [{"role": "bot", "content": "Hi"},
                                  {"role": "assistant", "content": "Hi"}]},
    "empty_content": chat("   ", "An answer to nothing."),
    "malformed_tool_call": {"messages": [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "", "tool_calls": [calc_call("{expression: 2 + 2")]},
        {"role": "tool", "name": "calculator", "content": "4"},
        {"role": "assistant", "content": "4."}]},
    "no_assistant": {"messages": [{"role": "system", "content": "S"},
                                  {"role": "user", "content": "Anyone there?"}]},
    "bad_order": {"messages": [{"role": "system", "content": "S"},
                               {"role": "assistant", "content": "I speak first."},
                               {"role": "user", "content": "Odd."}]},
    "orphan_tool": {"messages": [{"role": "user", "content": "Hi"},
                                 {"role": "tool", "name": "calculator", "content": "4"},
                                 {"role": "assistant", "content": "4."}]},
    "unanswered_tool_call": {"messages": [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "", "tool_calls": [calc_call({"expression": "2+2"})]},
        {"role": "assistant", "content": "4."}]},
    "too_many_messages": chat(*["turn"] * 10),
    "overlong": chat("Tell me a long story.", "x" * 500),
}


def test_each_bad_line_is_counted_with_its_line_number_and_good_lines_kept(tmp_path):
    records, where = [], {}
    for reason, bad in BAD_LINES.items():
        records.append(GOOD)
        records.append(bad)
        where[reason] = len(records)
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    convs, skips = read_conversations([path], max_messages=8, max_chars=400)
    assert [c.source for c in convs] == [f"{path}:{i}" for i in range(1, len(records), 2)]
    assert all(c.messages == GOOD["messages"] for c in convs)
    assert skips.counts == {reason: 1 for reason in BAD_LINES}
    assert skips.examples == {reason: [f"{path}:{n}"] for reason, n in where.items()}
    assert skips.total == len(BAD_LINES)
    assert skips.to_dict() == {"counts": skips.counts, "examples": skips.examples}
    assert f"malformed_json=1 ({path}:{where['malformed_json']})" in skips.summary()
    assert skips.summary().startswith("skipped ")


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
     {"role": "assistant", "content": "c"}],  # two user turns in a row
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "assistant", "content": "c"}],  # two answers in a row
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "system", "content": "c"}, {"role": "user", "content": "d"},
     {"role": "assistant", "content": "e"}],  # a system message in the middle
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}],  # ends without an answer
])
def test_turn_order_rules(messages):
    with pytest.raises(BadConversation) as err:
        parse_messages(messages)
    assert err.value.reason == "bad_order"


def test_tool_results_match_calls_by_id_or_name():
    calls = [calc_call({"expression": "1 + 1"}, "a"),
             {"type": "function", "id": "b",
              "function": {"name": "python", "arguments": {"code": "print(2)"}}}]
    base = [{"role": "user", "content": "go"},
            {"role": "assistant", "content": "", "tool_calls": calls}]
    done = {"role": "assistant", "content": "2 and 2"}
    by_id = parse_messages(base + [{"role": "tool", "tool_call_id": "b", "content": "2"},
                                   {"role": "tool", "tool_call_id": "a", "content": "2"}, done])
    assert [m.get("name") for m in by_id[2:4]] == ["python", "calculator"]
    by_name = parse_messages(base + [{"role": "tool", "name": "python", "content": "2"},
                                     {"role": "tool", "name": "calculator", "content": "2"},
                                     done])
    assert [m["name"] for m in by_name[2:4]] == ["python", "calculator"]
    with pytest.raises(BadConversation) as err:  # a result for a tool nobody called
        parse_messages(base + [{"role": "tool", "name": "browser", "content": "?"}, done])
    assert err.value.reason == "orphan_tool"
    with pytest.raises(BadConversation) as err:  # one of two results missing
        parse_messages(base + [{"role": "tool", "name": "python", "content": "2"}, done])
    assert err.value.reason == "unanswered_tool_call"


def test_overlong_is_skipped_never_truncated(tmp_path):
    fits = chat("q" * 10, "a" * 90)  # exactly 100 characters
    path = write_jsonl(tmp_path / "long.jsonl", [fits, chat("q" * 10, "a" * 91)])
    convs, skips = read_conversations([path], max_chars=100)
    assert len(convs) == 1 and convs[0].messages == fits["messages"]
    assert skips.counts == {"overlong": 1} and skips.examples["overlong"] == [f"{path}:2"]


def test_missing_file_and_wrong_type_are_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        read_conversations([str(tmp_path / "nope.jsonl")])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match=r"\.jsonl"):
        read_conversations([str(tmp_path / "notes.txt")])
    with pytest.raises(SourceError, match="unknown builtin"):
        read_conversations(["builtin:nothing"])


def test_all_bad_file_is_an_error_naming_the_file_and_the_skips(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["not json", "[]", chat("only a question")])
    with pytest.raises(ConversationError) as err:
        read_conversations([path])
    message = str(err.value)
    assert repr(str(path)) in message
    assert f"malformed_json=1 ({path}:1)" in message
    assert f"not_object=1 ({path}:2)" in message
    assert "no_assistant=1" in message


def test_folder_reads_jsonl_and_json_files_in_order(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    write_jsonl(root / "b.jsonl", [chat("b1", "B1")])
    (root / "a.json").write_text(json.dumps([chat("a0", "A0"), "oops", chat("a2", "A2")]))
    write_jsonl(root / "sub" / "c.jsonl", [chat("c1", "C1")])
    (root / "README.md").write_text("about this data")
    convs, skips = read_conversations([str(root)])
    assert [c.messages[0]["content"] for c in convs] == ["a0", "a2", "b1", "c1"]
    assert convs[1].source == f"{root / 'a.json'}#2"
    assert skips.counts == {"not_object": 1, "unsupported_type": 1}
    assert skips.examples["not_object"] == [f"{root / 'a.json'}#1"]


def test_to_dict_round_trips_through_a_file(tmp_path):
    train, _ = assistant_dataset(max_items=60)
    path = write_jsonl(tmp_path / "set.jsonl", [c.to_dict() for c in train])
    convs, skips = read_conversations([path])
    assert skips.total == 0
    assert [(c.messages, c.task, c.subject, c.answer) for c in convs] == [
        (c.messages, c.task, c.subject, c.answer) for c in train]


# --- hf: ---------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets installed")
def test_hf_without_datasets_says_how_to_install():
    with pytest.raises(SourceError, match=r"pip install datasets.*llmos\[hf\]"):
        read_conversations(["hf:HuggingFaceTB/smoltalk:all@10"])


def _fake_datasets(monkeypatch, load_dataset):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hf_offline_says_network_is_needed(monkeypatch):
    def load_dataset(*args, **kwargs):  # what the library does with no network
        raise ConnectionError("Couldn't reach 'HuggingFaceTB/smoltalk' on the Hub")

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(SourceError, match="hf: sources need network access"):
        read_conversations(["hf:HuggingFaceTB/smoltalk@10"])


def test_hf_records_are_read_like_lines(monkeypatch):
    records = [chat("q0", "a0"), {"messages": []}, chat("q2", "a2"), chat("q3", "a3")]
    seen = {}

    def load_dataset(name, config, split, streaming):
        seen.update(name=name, config=config, split=split, streaming=streaming)
        return iter(records)

    _fake_datasets(monkeypatch, load_dataset)
    convs, skips = read_conversations(["hf:org/chats:default@3"])
    assert seen == {"name": "org/chats", "config": "default", "split": "train",
                    "streaming": True}
    assert [c.source for c in convs] == ["hf:org/chats:0", "hf:org/chats:2"]
    assert skips.examples == {"missing_messages": ["hf:org/chats:1"]}

    _fake_datasets(monkeypatch, lambda *a, **k: iter([{"prompt": "x", "chosen": "y"}]))
    with pytest.raises(SourceError, match="no 'messages' or 'conversations' field"):
        read_conversations(["hf:org/prefs"])


# --- the built-in set ----------------------------------------------------------------------------

TASKS = {"docstring", "signature", "followup", "identity", "arithmetic", "python", "mental",
         "mental2", "lookup", "session"}


@pytest.fixture(scope="module")
def builtin():
    return assistant_dataset()


def _digest(train, heldout) -> str:
    blob = json.dumps([[c.to_dict() for c in train], [c.to_dict() for c in heldout]])
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.mark.slow  # a second process parses the stdlib again: about 8 s on 2 cores
def test_builtin_is_deterministic_across_processes(builtin):
    code = ("from llmos.data.builtin.assistant import assistant_dataset; import json, hashlib; "
            "t, h = assistant_dataset(); "
            "print(hashlib.sha256(json.dumps([[c.to_dict() for c in t], [c.to_dict() for c in h]"
            "]).encode()).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345")  # set and dict order must not leak in
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == _digest(*builtin)


def test_builtin_split_by_subject_with_every_task_in_both(builtin):
    train, heldout = builtin
    train_subjects = {c.subject for c in train}
    heldout_subjects = {c.subject for c in heldout}
    assert not train_subjects & heldout_subjects
    assert all(not is_heldout(s) for s in train_subjects)
    # Held out by the hash, or asked only in evaluation (identity questions in new words).
    assert all(is_heldout(s) or s in IDENTITY_HELDOUT for s in heldout_subjects)
    assert 0.05 < len(heldout) / (len(train) + len(heldout)) < 0.15
    assert 8000 <= len(train) <= 25000
    assert set(collections.Counter(c.task for c in heldout)) == TASKS
    counts = collections.Counter(c.task for c in train)
    assert set(counts) == TASKS
    # the mental ones, the lookups and the sessions come on top of the tuned shares
    rest = len(train) - sum(counts[t] for t in ("mental", "mental2", "lookup", "session"))
    share = {t: n / rest for t, n in counts.items()}
    assert 0.15 < share["arithmetic"] < 0.25 and 0.06 < share["python"] < 0.14
    assert share["docstring"] + share["signature"] + share["followup"] > 0.6
    # The held-out set is grown where the split leaves it short, never from training's problems.
    held = collections.Counter(c.task for c in heldout)
    assert held["mental2"] == held["python"] == HELDOUT_AT_LEAST
    first = {" ".join(map(str, p)) for p in two_digit_problems()[:MENTAL2_ITEMS]}
    assert {c.subject for c in train if c.task == "mental2"} <= first
    assert first <= {c.subject for c in train + heldout if c.task == "mental2"}
    assert {c.source for c in train} == {"builtin:assistant"}
    assert {c.source for c in heldout} == {"builtin:assistant:heldout"}


def test_builtin_passes_the_file_validation(builtin):
    for c in builtin[0] + builtin[1]:
        again = parse_record(c.to_dict(), c.source)
        assert again.messages == c.messages
        assert c.answer and c.subject
    system = sum(c.messages[0]["role"] == "system" for c in builtin[0]) / len(builtin[0])
    assert 0.25 < system < 0.35
    convs, skips = read_conversations(["builtin:assistant:heldout"])
    assert skips.total == 0 and len(convs) == len(builtin[1])


def test_builtin_tool_messages_follow_a_matching_call(builtin):
    for c in builtin[0] + builtin[1]:
        for i, m in enumerate(c.messages):
            if m["role"] == "tool":
                prev = c.messages[i - 1]
                names = [t["function"]["name"] for t in prev.get("tool_calls", [])]
                assert prev["role"] == "assistant" and names == [m["name"]]
                expected = {"arithmetic": "calculator", "python": "python",
                            "lookup": "search_knowledge"}
                # a session chains questions of those tasks: each call matches its question's
                assert m["name"] == expected[c.task] if c.task != "session" \
                    else m["name"] in ("calculator", "python")


def test_builtin_arithmetic_is_right(builtin):
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}
    n = 0
    for c in builtin[0] + builtin[1]:
        if c.task != "arithmetic":
            continue
        expr = c.messages[-3]["tool_calls"][0]["function"]["arguments"]["expression"]
        a, op, b = expr.split()
        a, b = int(a), int(b)
        assert 10 <= a <= 999 and 10 <= b <= 999
        if op == "/":
            assert a % b == 0
            want = a // b
        else:
            want = ops[op](a, b)
        assert expr == c.subject and c.answer == str(want) == c.messages[-2]["content"]
        assert c.messages[-1]["content"].startswith(f"{expr} = {want}.")
        n += 1
    assert n > 1000


def _holds(equation: str) -> bool:
    left, right = equation.split(" = ")
    terms = left.split()
    value = int(terms[0])
    for op, x in zip(terms[1::2], terms[2::2]):
        value = value + int(x) if op == "+" else value - int(x)
    return value == int(right)


def test_builtin_mental_arithmetic_is_right_and_rules_the_tool_out(builtin):
    train, heldout = builtin
    for task, low in (("mental", 1), ("mental2", 10)):
        items = [c for c in train + heldout if c.task == task]
        subjects = collections.Counter(c.subject for c in items)
        assert len(subjects) == (2430 if task == "mental" else len(items))  # each asked once
        for c in items:
            question, answer = c.messages[-2]["content"], c.messages[-1]["content"]
            a, op, b = c.subject.split()
            a, b = int(a), int(b)
            assert low <= b <= 99 and low <= a <= 99 and op in "+-" and (op == "+" or a >= b)
            want = a + b if op == "+" else a - b
            assert c.answer == str(want) and answer.endswith(f", so {c.subject} = {want}.")
            steps = re.findall(r"\d+(?: [-+] \d+)+ = \d+", answer)
            assert len(steps) >= 2 and all(_holds(s) for s in steps)  # every step holds
            assert len(c.messages) in (2, 3)  # no tool call: the user ruled the calculator out
            assert re.search(r"without|in your head|no tools|mentally|don't use", question.lower())
        # A training problem is asked several times in different words, a held-out one once.
        held = {c.subject for c in heldout if c.task == task}
        assert held and all(subjects[s] == 1 for s in held)
        repeats = MENTAL_REPEATS if task == "mental" else 1
        assert all(subjects[s] == repeats for s in subjects if s not in held)


def test_arithmetic_practice_is_every_mental_problem_split_like_the_set(builtin):
    train, heldout = arithmetic_practice()
    tasks = collections.Counter(c.task for c in train)
    two_digit = 90 * 90 + 90 * 91 // 2  # a + b, and a - b with a >= b
    assert tasks["mental2"] + len(heldout) == two_digit
    assert tasks["mental"] == 2430 - sum(is_heldout(c.subject) for c in builtin[1]
                                         if c.task == "mental")
    assert {c.task for c in heldout} == {"mental2"}  # scored on the two-digit problems
    assert all(not is_heldout(c.subject) for c in train) and all(is_heldout(c.subject)
                                                                for c in heldout)
    # the finetuning set's training problems are practised; none of its held-out ones is
    practised = {c.subject for c in train}
    for c in builtin[0] + builtin[1]:
        if c.task in ("mental", "mental2"):
            assert (c.subject in practised) == (c.source == "builtin:assistant")


def test_builtin_python_answers_are_the_real_output(builtin):
    items = [c for c in builtin[0] + builtin[1] if c.task == "python"]
    assert all(c.answer in c.messages[-1]["content"] for c in items)  # what the eval checks
    for c in random.Random(0).sample(items, 25):
        code = c.messages[-3]["tool_calls"][0]["function"]["arguments"]["code"]
        real = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.rstrip("\n")  # as the python tool does
        assert c.answer == real == c.messages[-2]["content"]
        assert real in c.messages[-1]["content"]


def test_builtin_docstring_answers(builtin):
    by_subject = {c.subject: c for c in builtin[0] + builtin[1] if c.task == "docstring"}
    dumps = by_subject["json.dumps"]
    assert dumps.answer.startswith("Serialize ``obj`` to a JSON formatted ``str``")
    assert dumps.messages[-1]["content"].startswith("`json.dumps` serializes ``obj``")
    sigs = {c.subject: c.answer for c in builtin[0] + builtin[1] if c.task == "signature"}
    assert sigs["textwrap.fill"] == "textwrap.fill(text, width=70, **kwargs)"
    for c in builtin[0]:
        if c.task in ("docstring", "signature"):
            assert len(c.answer) <= 200 and f"`{c.subject}" in c.messages[-1]["content"]
        if c.task in ("signature", "followup"):
            assert c.answer in c.messages[-1]["content"]
        if c.task == "identity":
            assert c.answer == "llmos" and "llmos" in c.messages[-1]["content"]


def test_builtin_max_items_caps_before_splitting(builtin):
    train, heldout = assistant_dataset(max_items=500)
    assert len(train) + len(heldout) == 500
    full = {json.dumps(c.to_dict()) for c in builtin[0] + builtin[1]}
    assert all(json.dumps(c.to_dict()) in full for c in train + heldout)
    assert len({c.task for c in train}) >= 5


def test_conversation_and_skips_shapes():
    c = Conversation(messages=[], source="x.jsonl:1")
    assert (c.task, c.subject, c.answer) == ("chat", "", "")
    skips = ConversationSkips()
    for i in range(5):
        skips.add("overlong", f"f.jsonl:{i}")
    assert skips.summary() == "skipped overlong=5 (f.jsonl:0, f.jsonl:1, f.jsonl:2, ...)"


def test_builtin_sessions_chain_questions_from_one_side_of_the_split(builtin):
    from llmos.data.builtin.turns import is_heldout

    train, heldout = builtin
    asked = {}
    for c in train + heldout:
        if c.task != "session" and c.messages[0]["role"] == "user":
            asked.setdefault(c.messages[0]["content"], set()).add(is_heldout(c.subject))
    sessions = [(c, side) for side, split in ((False, train), (True, heldout))
                for c in split if c.task == "session"]
    assert len(sessions) > 1000
    for c, side in sessions:
        questions = [m["content"] for m in c.messages if m["role"] == "user"]
        assert 2 <= len(questions) <= 3
        # every question comes from the same side of the split as the session
        assert all(asked.get(q, {side}) == {side} for q in questions)
        assert c.answer in c.messages[-1]["content"]  # the last answer holds its number
