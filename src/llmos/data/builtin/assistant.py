"""The built-in assistant set, ``builtin:assistant``: conversations made on the spot from the
running Python's standard library, so finetuning works offline with nothing to download.

Tasks (``Conversation.task``):

- ``docstring`` - "What does `json.dumps` do?" answered from the docstring's first sentence;
  modules, classes, functions and methods. The model saw these docstrings in pretraining, so
  held-out subjects test recall of pretraining knowledge in a chat format.
- ``signature`` - "What are the parameters of `textwrap.fill`?" -> `textwrap.fill(text,
  width=70, **kwargs)`, built from the ``def`` line (annotations left out).
- ``followup`` - a docstring question and answer, then "And its signature?" or "Which module is
  it in?".
- ``identity`` - who the assistant is: llmos, a small model trained from scratch on the standard
  library, with a calculator and a Python tool.
- ``arithmetic`` - 2-3 digit + - * / problems answered through the ``calculator`` tool.
- ``mental`` - a 2-digit number plus or minus a 1-digit one, where the question says to do it
  without the calculator, worked digit by digit ("What is 48 + 7? Answer without the
  calculator." -> "8 + 7 = 15, carry 1: 4 + 1 = 5, so 48 + 7 = 55."); every such problem,
  each training one asked three times.
- ``mental2`` - the same for two 2-digit numbers ("8 + 7 = 15, carry 1: 4 + 3 + 1 = 8, so
  48 + 37 = 85."), 1,200 of the 12,195 problems; ``arithmetic_practice`` has all of them, for
  online RL.
- ``python`` - small questions answered by running a snippet with the ``python`` tool; the tool
  output is what the snippet really prints (it is run here, in-process: it is our own code).

The pieces live beside this module: `stdlib_api` (the library read with `ast`), `arithmetic`,
`python_questions`, and `turns` (the seed, the held-out split by subject, message builders).
"""

from __future__ import annotations

import itertools
import random

from llmos.data.builtin.arithmetic import (
    MENTAL2_ITEMS,
    calculator_items,
    mental2_items,
    mental_conversation,
    mental_items,
    two_digit_problems,
)
from llmos.data.builtin.lookup import lookup_items
from llmos.data.builtin.python_questions import python_items
from llmos.data.builtin.sessions import session_items
from llmos.data.builtin.stdlib_api import ApiEntry, describe, stdlib_api
from llmos.data.builtin.turns import SEED, assistant, conversation, is_heldout, user
from llmos.data.records import Conversation

SPECS = ("builtin:assistant", "builtin:assistant:heldout")
FOLLOWUP_FRACTION = 0.45  # share of functions, classes and methods that also get a follow-up
# Shares of the whole set; the stdlib questions are as many as the stdlib gives, these follow.
TOOL_SHARES = {"arithmetic": 0.20, "python": 0.10, "identity": 0.02}


DOC_QUESTIONS = {
    "function": ("What does `{n}` do?", "What is `{n}` for?", "Explain `{n}` in one sentence.",
                 "Can you tell me what `{n}` does?", "What's the purpose of `{n}`?",
                 "Describe `{n}` briefly.", "What does the function `{n}` do?",
                 "In Python, what does {n} do?"),
    "method": ("What does `{n}` do?", "What is `{n}` for?", "What does the method `{n}` do?",
               "Explain the method `{n}`.", "Can you tell me what `{n}` does?"),
    "class": ("What is `{n}`?", "What is the `{n}` class for?", "Describe the class `{n}`.",
              "What does `{n}` represent?", "What is `{n}` used for?"),
    "module": ("What is the `{n}` module for?", "What does the `{n}` module do?",
               "Describe the `{n}` module.", "What is `{n}` in the standard library?",
               "What is the purpose of the Python module {n}?"),
}
SIGNATURE_QUESTIONS = ("What are the parameters of `{n}`?", "What is the signature of `{n}`?",
                       "How do I call `{n}`?", "What arguments does `{n}` take?",
                       "Show me the signature of `{n}`.")
CLASS_SIGNATURE_QUESTIONS = ("How do I create a `{n}`?", "What arguments does the `{n}` "
                             "constructor take?", "What are the parameters of `{n}`?")
SIGNATURE_ANSWERS = ("`{s}`", "The signature is `{s}`.", "Call it as `{s}`.",
                     "`{n}` is called like this: `{s}`.")
FOLLOWUP_SIGNATURE = ("And its signature?", "What parameters does it take?", "How do I call it?",
                      "What arguments does it accept?")
FOLLOWUP_MODULE = ("Which module is it in?", "Where is it defined?", "What module is that from?",
                   "Which module do I import it from?")


def _doc_question(rng: random.Random, entry: ApiEntry) -> str:
    return rng.choice(DOC_QUESTIONS[entry.kind]).format(n=entry.name)


def _signature_answer(rng: random.Random, entry: ApiEntry) -> str:
    return rng.choice(SIGNATURE_ANSWERS).format(s=entry.signature, n=entry.name)


def _module_answer(entry: ApiEntry) -> str:
    if entry.kind == "method":
        cls = entry.name.rsplit(".", 2)[-2]
        return f"It is a method of the `{cls}` class in the `{entry.module}` module."
    return f"It is in the `{entry.module}` module."


def stdlib_items(api: tuple[ApiEntry, ...]) -> list[Conversation]:
    rng = random.Random(f"{SEED}:stdlib")
    out = []
    for e in api:
        out.append(conversation(rng, "docstring", e.name, e.summary,
                                [user(_doc_question(rng, e)), assistant(describe(e))]))
        if e.signature:
            questions = CLASS_SIGNATURE_QUESTIONS if e.kind == "class" else SIGNATURE_QUESTIONS
            question = rng.choice(questions).format(n=e.name)
            out.append(conversation(rng, "signature", e.name, e.signature,
                                    [user(question), assistant(_signature_answer(rng, e))]))
        if e.kind != "module" and rng.random() < FOLLOWUP_FRACTION:
            turns = [user(_doc_question(rng, e)), assistant(describe(e))]
            if e.signature and rng.random() < 0.5:
                turns += [user(rng.choice(FOLLOWUP_SIGNATURE)),
                          assistant(_signature_answer(rng, e))]
            else:
                turns += [user(rng.choice(FOLLOWUP_MODULE)), assistant(_module_answer(e))]
            # The gold answer is the whole reply: word overlap with a bare module name would
            # mark every full-sentence answer wrong.
            out.append(conversation(rng, "followup", e.name, turns[-1]["content"], turns))
    return out


# --- identity -------------------------------------------------------------------------------------

_ME = ("I'm llmos, a small language model trained from scratch with llmos on the source code "
       "of the Python standard library.")
_TOOLS = "I can use a calculator for arithmetic and run Python code when that helps."
IDENTITY = [  # (questions, answers): every answer states the same facts
    (("What is your name?", "What's your name?", "What should I call you?", "Who are you?",
      "Tell me about yourself.", "Introduce yourself.", "What are you?",
      "Which model are you?", "What kind of AI are you?", "Hi! Who am I talking to?"),
     (f"{_ME} {_TOOLS}", "My name is llmos. I'm a small language model, trained from scratch "
      "with llmos on the Python standard library.",
      f"{_ME} Ask me about Python's standard library.")),
    (("Are you ChatGPT?", "Are you GPT-4?", "Are you Claude?", "Are you Llama?",
      "Are you a human?", "Am I talking to a person?"),
     (f"No. {_ME}", f"No, I'm not. {_ME} {_TOOLS}")),
    (("Who made you?", "Who created you?", "Who trained you?", "Who built you?",
      "Where do you come from?", "How were you made?"),
     ("I was trained from scratch with llmos, an open-source system for training language "
      "models, on the Python standard library. My name is llmos too.",
      f"{_ME} Everything, from the tokenizer to this conversation format, was trained with "
      "llmos.")),
    (("What were you trained on?", "What data did you learn from?", "Were you trained from "
      "scratch?", "What do you know about?", "How big are you?"),
     (f"{_ME} So I know the standard library's modules and functions best, and I'm a small "
      "model: check what I say.", f"{_ME} Then I was finetuned on conversations like this one.")),
    (("What can you do?", "Can you use tools?", "Can you do math?", "Can you run code?",
      "What tools do you have?", "What are you good at?", "Can you browse the internet?",
      "What are your limitations?"),
     (f"I'm llmos. {_TOOLS} I know the Python standard library best. I can't browse the web, "
      "and as a small model I make mistakes.", f"{_ME} {_TOOLS} I have no web access.")),
    (("Hi", "Hello!", "Hey there", "Good morning!", "Hello, how are you?"),
     (f"Hello! {_ME} How can I help?", f"Hi! I'm llmos. {_TOOLS} What would you like to know?")),
]


def identity_items(n: int) -> list[Conversation]:
    rng = random.Random(f"{SEED}:identity")
    pairs = [(q, a) for questions, answers in IDENTITY for q in questions for a in answers]
    out = []
    for i in range(n):
        question, answer = pairs[i % len(pairs)]
        if i >= len(pairs) and rng.random() < 0.5:
            question = question.lower().rstrip("?!.")  # how people type
        out.append(conversation(rng, "identity", pairs[i % len(pairs)][0], "llmos",
                                [user(question), assistant(answer)]))
    return out


# --- the set --------------------------------------------------------------------------------------


def assistant_dataset(max_items: int | None = None
                      ) -> tuple[list[Conversation], list[Conversation]]:
    """The built-in set as (train, heldout), deterministic for a given Python. `max_items` caps
    the total before splitting: a fixed shuffle is cut, so the task mix stays the same."""
    stdlib = stdlib_items(stdlib_api())
    total = len(stdlib) / (1 - sum(TOOL_SHARES.values()))
    # Lookups come on top: the shares of the other tasks stay those they were tuned at.
    items = (stdlib + lookup_items(stdlib_api(), _doc_question)
             + calculator_items(round(total * TOOL_SHARES["arithmetic"]))
             + python_items(round(total * TOOL_SHARES["python"]))
             + identity_items(round(total * TOOL_SHARES["identity"]))
             + mental_items() + mental2_items(MENTAL2_ITEMS))
    items += session_items(items)
    random.Random(f"{SEED}:order").shuffle(items)
    if max_items is not None:
        items = items[:max(0, max_items)]
    train, heldout = [], []
    for c in items:
        if is_heldout(c.subject):
            c.source = SPECS[1]
            heldout.append(c)
        else:
            train.append(c)
    if max_items is None:
        heldout += extra_heldout(heldout, round(total * TOOL_SHARES["python"]))
    return train, heldout


# Held-out questions per task at least, so that a 10-point change between two models stands out
# of the noise (two proportions near 0.5 at n = 400: a 95% interval of about +-7 points on their
# difference). The split by subject gives some tasks far fewer: 104 two-digit problems, 149
# Python questions, 21 identity questions asked 16 ways.
HELDOUT_AT_LEAST = 400

# Identity questions worded as no training conversation words them, asked only in evaluation.
IDENTITY_HELDOUT = (
    "May I ask your name?", "Do you have a name?", "Which AI am I chatting with?",
    "How should I address you?", "What is this assistant called?", "Identify yourself, please.",
    "State your name.", "Describe yourself in one sentence.", "Tell me who you are.",
    "Which chatbot is this?", "What language model is this?", "Who am I speaking with?",
    "Are you Gemini?", "Are you Mistral?", "Are you Copilot?", "Are you Siri?",
    "Are you an OpenAI model?", "Are you a real person?", "Is this a bot?",
    "Are you a large language model?", "Which company made you?", "Who is your developer?",
    "What organization trained you?", "Were you made by Google?", "Were you made by Meta?",
    "Who owns you?", "What's your origin story?", "What did you learn from?",
    "What dataset were you trained on?", "Did someone finetune you?", "What are your skills?",
    "Do you have any tools?", "Can you calculate things?", "Can you execute Python?",
    "Can you search the web?", "Hey, who's this?", "Hi there, what are you?",
    "Good evening! Who are you?", "Yo, what's your name?", "Before we start, who are you?",
)


def extra_heldout(heldout: list[Conversation], python_in_set: int) -> list[Conversation]:
    """More held-out items for the tasks the split leaves short, made past the end of what
    training draws from (two-digit problems after the first MENTAL2_ITEMS, Python questions
    after the set's own, new identity wordings): the training set stays exactly as it was, and
    the first held-out items of every task stay first."""
    have = {task: sum(c.task == task for c in heldout) for task in ("mental2", "python")}
    rng = random.Random(f"{SEED}:heldout-extra")
    extra = []
    problems = (p for p in two_digit_problems()[MENTAL2_ITEMS:]
                if is_heldout(f"{p[0]} {p[1]} {p[2]}"))
    for p in itertools.islice(problems, max(0, HELDOUT_AT_LEAST - have["mental2"])):
        extra.append(mental_conversation(rng, "mental2", *p))
    more = [c for c in python_items(python_in_set + 12 * HELDOUT_AT_LEAST)[python_in_set:]
            if is_heldout(c.subject)]
    extra += more[:max(0, HELDOUT_AT_LEAST - have["python"])]
    # The reference answer is the one every identity answer shares; the score asks for "llmos".
    extra += [conversation(rng, "identity", q, "llmos", [user(q), assistant(f"{_ME} {_TOOLS}")])
              for q in IDENTITY_HELDOUT]
    for c in extra:
        c.source = SPECS[1]
    return extra
