"""Comparison data: the TRL shapes, skipped rows with their places, hf: and the built-in set."""

from __future__ import annotations

import json
import os
import random
import sys
import types

import pytest

from llmos.data import comparisons as cmp
from llmos.data.builtin import comparisons as builtin_cmp
from llmos.data.builtin.assistant import IDENTITY_HELDOUT
from llmos.data.builtin.turns import is_heldout
from llmos.data.records import ComparisonError, Conversation
from llmos.data.sources import SourceError


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "2+3"}}}]}
RESULT = {"role": "tool", "name": "calculator", "content": "5"}


def write_lines(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in records))
    return path


def test_conversational_plain_and_implicit_prompt_give_the_same_pair(tmp_path):
    rows = [
        {"prompt": [user("2 + 2?")], "chosen": [bot("4")], "rejected": [bot("5")]},
        {"prompt": "2 + 2?", "chosen": "4", "rejected": "5"},
        {"chosen": [user("2 + 2?"), bot("4")], "rejected": [user("2 + 2?"), bot("5")]},
    ]
    pairs, skips = cmp.read_comparisons([str(write_lines(tmp_path / "p.jsonl", rows))])
    assert skips.total == 0 and len(pairs) == 3
    for p in pairs:
        assert (p.prompt, p.chosen, p.rejected) == ([user("2 + 2?")], [bot("4")], [bot("5")])
    assert [p.source for p in pairs] == [f"{tmp_path / 'p.jsonl'}:{i}" for i in (1, 2, 3)]


def test_multi_turn_prompts_and_tool_answers_are_kept_whole(tmp_path):
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculator",
                                          "arguments": {"expression": "2 + 3"}}}]}
    chosen = [call, {"role": "tool", "name": "calculator", "content": "5"}, bot("2 + 3 = 5.")]
    row = {"prompt": [{"role": "system", "content": "Be brief."}, user("hi"), bot("Hello!"),
                      user("2 + 3?")], "chosen": chosen, "rejected": [bot("2 + 3 = 6.")]}
    (p,), _ = cmp.read_comparisons([str(write_lines(tmp_path / "p.jsonl", [row]))])
    assert len(p.prompt) == 4 and p.chosen == chosen
    again, _ = cmp.read_comparisons([str(write_lines(tmp_path / "q.jsonl", [p.to_dict()]))])
    assert (again[0].prompt, again[0].chosen, again[0].rejected) == (p.prompt, p.chosen,
                                                                      p.rejected)


def test_bad_rows_are_skipped_and_counted_with_their_lines(tmp_path):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    rows = [
        good,
        "{not json",                                                       # 2 malformed_json
        "[1, 2]",                                                          # 3 not_object
        {"prompt": "q", "chosen": "a"},                                    # 4 missing_field
        {"prompt": "q", "chosen": "a", "rejected": "a"},                   # 5 same_answers
        {"prompt": [user("q")], "chosen": [user("a")], "rejected": [bot("b")]},  # 6 no_assist.
        {"prompt": [], "chosen": [bot("a")], "rejected": [bot("b")]},      # 7 no_prompt
        {"prompt": "q", "chosen": 3, "rejected": "b"},                     # 8 missing_field
        {"prompt": [{"role": "wizard", "content": "q"}], "chosen": "a", "rejected": "b"},  # 9
        {"prompt": [user("q"), bot("a")], "chosen": [user("more")], "rejected": [bot("b")]},
        {"prompt": [user("q"), CALL], "chosen": [RESULT, bot("5")], "rejected": [RESULT, bot("6")]},
        good,
    ]
    path = write_lines(tmp_path / "p.jsonl", rows)
    pairs, skips = cmp.read_comparisons([str(path)])
    assert len(pairs) == 2
    assert skips.counts == {"malformed_json": 1, "not_object": 1, "missing_field": 2,
                            "same_answers": 1, "no_assistant": 1, "no_prompt": 1,
                            "unknown_role": 1, "bad_order": 1, "bad_answer": 1}
    assert skips.examples["missing_field"] == [f"{path}:4", f"{path}:8"]
    assert f"{path}:10" in skips.summary() and f"{path}:11" in skips.summary()


def test_missing_sources_and_empty_files_are_errors_that_say_what_is_accepted(tmp_path):
    with pytest.raises(SourceError, match="accepted comparison sources"):
        cmp.read_comparisons([str(tmp_path / "nope.jsonl")])
    with pytest.raises(ComparisonError, match="no usable comparison"):
        cmp.read_comparisons([str(write_lines(tmp_path / "bad.jsonl", ["{"]))])
    with pytest.raises(SourceError, match="unknown builtin"):
        cmp.read_comparisons(["builtin:nothing"])


def test_a_folder_is_read_in_order(tmp_path):
    for name in ("b.jsonl", "a.jsonl"):
        write_lines(tmp_path / name, [{"prompt": name, "chosen": "x", "rejected": "y"}])
    pairs, _ = cmp.read_comparisons([str(tmp_path)])
    assert [p.prompt[0]["content"] for p in pairs] == ["a.jsonl", "b.jsonl"]


def _fake_datasets(monkeypatch, load_dataset):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hf_offline_is_a_clear_error(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(SourceError, match="need network access.*builtin:comparisons"):
        cmp.read_comparisons(["hf:trl-lib/ultrafeedback_binarized@10"])


def test_hf_records_are_read_and_a_wrong_set_is_refused(monkeypatch):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}]
    _fake_datasets(monkeypatch, lambda *a, **k: iter(rows))
    pairs, skips = cmp.read_comparisons(["hf:org/prefs"])
    assert [p.source for p in pairs] == ["hf:org/prefs:0"]
    assert skips.examples == {"missing_field": ["hf:org/prefs:1"]}
    _fake_datasets(monkeypatch, lambda *a, **k: iter([{"messages": []}]))
    with pytest.raises(SourceError, match="no 'chosen' field"):
        cmp.read_comparisons(["hf:org/chats"])


def test_builtin_wrong_answers_are_plausible_and_wrong():
    calc = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculator",
                                          "arguments": {"expression": "12 * 34"}}}]}
    convs = [
        Conversation([user("What is 12 * 34?"), calc,
                      {"role": "tool", "name": "calculator", "content": "408"},
                      bot("12 * 34 = 408.")], "t", "arithmetic", "12 * 34", "408"),
        Conversation([user("What does `json.dumps` do?"), bot("`json.dumps` serializes obj.")],
                     "t", "docstring", "json.dumps", "Serialize obj."),
        Conversation([user("Who are you?"), bot("I'm llmos.")], "t", "identity", "Who", "llmos"),
        Conversation([user("In your head: 12 + 7 = ?"), bot("12 + 7 = 19.")], "t", "mental",
                     "12 + 7", "19"),
    ]
    pairs = builtin_cmp._pairs(convs * 20, "builtin:comparisons", builtin_cmp._Wrong())
    kinds = {p.kind for p in pairs}
    assert {"wrong_sum", "skipped_tool", "wrong_docstring", "wrong_identity", "used_tool",
            "evasive", "looping"} <= kinds
    for p in pairs:
        assert p.chosen != p.rejected and p.rejected[-1]["role"] == "assistant"
        if p.kind == "wrong_sum":  # the calculator was called and answered 408; the text lies
            assert p.rejected[1]["content"] == "408" and "408" not in p.rejected[-1]["content"]
        if p.kind == "skipped_tool":
            assert len(p.rejected) == 1 and "408" not in p.rejected[0]["content"]
        if p.kind == "used_tool":  # right, but with the calculator the user ruled out
            call = p.rejected[0]["tool_calls"][0]["function"]
            assert call == {"name": "calculator", "arguments": {"expression": "12 + 7"}}
            assert p.rejected[1]["content"] == "19" and p.rejected[-1] == p.chosen[0]
        if p.kind == "wrong_docstring":  # about json.dumps, but another function's summary
            text = p.rejected[0]["content"]
            assert text.startswith("`json.dumps`") and text != p.chosen[0]["content"]
        if p.kind == "looping":  # the gold answer's tool turns, then its text stuck in a loop
            assert p.rejected[:-1] == p.chosen[:-1]
            assert len(p.rejected[-1]["content"]) >= builtin_cmp.LOOP_CHARS[0]


@pytest.mark.parametrize("seed", range(40))
def test_a_looping_answer_starts_like_the_gold_one_and_repeats_a_span(seed):
    gold = "`json.dumps` serializes obj to a JSON formatted str."
    text = builtin_cmp._looping(random.Random(seed), gold)
    low, high = builtin_cmp.LOOP_CHARS
    assert low <= len(text) <= high
    head = os.path.commonprefix([text, gold])
    assert head and not gold.startswith(text)  # it leaves the gold answer partway
    tail = text[len(head.rstrip()):]
    # what follows the shared start is one short span over and over: periodic, two periods at least
    assert any(all(tail[i] == tail[i + n] for i in range(len(tail) - n))
               for n in range(1, len(tail) // 2 + 1))


@pytest.mark.slow
def test_builtin_set_keeps_the_assistant_split():
    train, held = builtin_cmp.builtin_comparisons()
    assert len(train) > 5 * len(held) > 0
    assert all(is_heldout(p.subject) or p.subject in IDENTITY_HELDOUT for p in held)
    assert not any(is_heldout(p.subject) for p in train)
    assert {p.kind for p in held} >= {"wrong_docstring", "wrong_sum", "skipped_tool", "evasive"}
    pairs, skips = cmp.read_comparisons(["builtin:comparisons:heldout"])
    assert skips.total == 0 and len(pairs) == len(held)
