"""Comparisons for reward modelling and DPO: readers and validation.

A *comparison spec* names where pairs come from:

- a ``.jsonl`` file, one pair per line in TRL's preference shape, either conversational
  ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`` or plain
  ``{"prompt": "text", "chosen": "text", "rejected": "text"}`` (the prompt becomes a user
  message, each answer an assistant message). Without ``prompt`` (TRL's "implicit prompt"),
  ``chosen`` and ``rejected`` are whole conversations and their shared first messages are the
  prompt. A ``.json`` list of such records, or a folder of these files, works too.
- ``hf:NAME[:CONFIG][@N]`` - a Hugging Face dataset's train split, streamed (opt-in: needs
  ``datasets`` and network).
- ``builtin:comparisons`` / ``builtin:comparisons:heldout`` - made from ``builtin:assistant``
  (see `llmos.data.builtin.comparisons`), no download. The held-out pairs have the held-out
  prompts of ``builtin:assistant:heldout``, so a model tuned on the train pairs never saw them.

Messages are checked by the conversation rules (`llmos.data.conversations`): prompt + chosen
and prompt + rejected must each be a valid conversation, and each answer starts with an
assistant message. A record that breaks a rule is skipped and counted with its place
(``file:line``) under the conversation reasons or these: ``missing_field`` (no ``chosen`` /
``rejected``, or a field of the wrong type), ``no_prompt`` (nothing before the answers),
``bad_answer`` (an answer that does not start with an assistant message), ``same_answers``
(chosen equals rejected: nothing to learn).
"""

from __future__ import annotations

import os

from llmos.data.builtin import comparisons as builtin_comparisons
from llmos.data.conversations import normalized_messages, parse_messages
from llmos.data.record_sources import RecordKind, parse_all, split_specs
from llmos.data.records import (
    BadConversation,
    Comparison,
    ComparisonError,
    ConversationSkips,
)

ACCEPTED_FORMS = (
    "accepted comparison sources: a .jsonl file ({\"prompt\", \"chosen\", \"rejected\"} per "
    "line, messages or plain strings), a .json list of those, a folder of them, "
    "'hf:NAME[:CONFIG][@N]', 'builtin:comparisons' or 'builtin:comparisons:heldout'"
)

COMPARISONS = RecordKind(
    "comparison", ACCEPTED_FORMS, ("chosen",), "a .jsonl file or builtin:comparisons",
    {builtin_comparisons.SPECS[0]: lambda: builtin_comparisons.builtin_comparisons()[0],
     builtin_comparisons.SPECS[1]: lambda: builtin_comparisons.builtin_comparisons()[1]})


# --- one record ---------------------------------------------------------------------------------


def _as_messages(value, role: str, field: str) -> list:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value:
        return value
    raise BadConversation("missing_field", f"'{field}' must be a string or a non-empty list")


def _shared_prefix(a: list, b: list) -> int:
    """How many first messages two conversations share, stopping before an assistant message
    (an answer starts there)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    while n > 0 and isinstance(a[n - 1], dict) and a[n - 1].get("role") == "assistant":
        n -= 1
    return n


def parse_comparison(record, where: str, max_messages: int = 64,
                     max_chars: int = 32000) -> Comparison:
    """One JSON record -> Comparison; raises `BadConversation` (with its reason) to skip it."""
    if not isinstance(record, dict):
        raise BadConversation("not_object", f"a {type(record).__name__}, not an object")
    if "chosen" not in record or "rejected" not in record:
        raise BadConversation("missing_field", "a comparison needs 'chosen' and 'rejected'")
    prompt = record.get("prompt")
    if prompt is None:  # implicit prompt: two whole conversations sharing their start
        chosen, rejected = record["chosen"], record["rejected"]
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise BadConversation("missing_field", "without 'prompt', 'chosen' and 'rejected' "
                                  "must be conversations (lists of messages)")
        n = _shared_prefix(chosen, rejected)
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    else:
        prompt = _as_messages(prompt, "user", "prompt") if prompt != [] else []
        chosen = _as_messages(record["chosen"], "assistant", "chosen")
        rejected = _as_messages(record["rejected"], "assistant", "rejected")
    if not prompt:
        raise BadConversation("no_prompt", "nothing comes before the answers")
    n_prompt = len(normalized_messages(prompt))  # as normalized (ShareGPT calls can merge)
    full = [parse_messages(prompt + answer, max_messages, max_chars)
            for answer in (chosen, rejected)]
    answers = [f[n_prompt:] for f in full]
    for name, answer in zip(("chosen", "rejected"), answers):
        if not answer or answer[0]["role"] != "assistant":
            raise BadConversation("bad_answer", f"'{name}' must start with an assistant message")
    if answers[0] == answers[1]:
        raise BadConversation("same_answers", "chosen and rejected are the same")
    extra = {k: record[k] for k in ("task", "subject", "answer", "kind")
             if isinstance(record.get(k), str)}
    return Comparison(full[0][:n_prompt], answers[0], answers[1], where, **extra)


def read_comparisons(specs: list[str], max_messages: int = 64, max_chars: int = 32000
                     ) -> tuple[list[Comparison], ConversationSkips]:
    """Every usable comparison of the specs, in order, plus what was skipped and why.

    Raises SourceError for a spec that cannot be read (missing file, no `datasets`, offline)
    and ComparisonError for one that gives no usable comparison at all."""
    if isinstance(specs, str | os.PathLike):
        specs = [specs]
    if not specs:
        raise ComparisonError(f"no comparison sources given; {ACCEPTED_FORMS}")
    return parse_all(specs, COMPARISONS,
                     lambda record, where: parse_comparison(record, where, max_messages, max_chars),
                     ComparisonError)


def split_sources(specs: list[str], val_fraction: float
                  ) -> tuple[list[Comparison], list[Comparison], str]:
    """(train, heldout, skip summary). The built-in set keeps builtin:assistant's split; other
    sources are split by a hash of the prompt, so every pair of one prompt lands on one side
    and the split never changes between runs."""
    return split_specs(specs, read_comparisons, builtin_comparisons.SPECS, lambda c: c.prompt,
                       val_fraction)
