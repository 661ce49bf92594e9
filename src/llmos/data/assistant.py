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

The source files are parsed with `ast`, never imported: importing arbitrary stdlib modules has
side effects (turtle opens a window, antigravity a browser). Test packages are left out, as in
``builtin:stdlib``.

Train and held-out are split by *subject* (the module, function, problem or question asked
about) with a stable hash, so no subject is in both and the split is the same on every machine
that has the same Python.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import io
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from llmos.data.conversations import Conversation
from llmos.data.sources import STDLIB_SKIP_DIRS, _walk_sorted

SEED = "llmos-assistant-1"
HELDOUT_FRACTION = 0.10
SYSTEM_FRACTION = 0.30  # share of conversations that start with a system prompt
FOLLOWUP_FRACTION = 0.45  # share of functions, classes and methods that also get a follow-up
# Shares of the whole set; the stdlib questions are as many as the stdlib gives, these follow.
TOOL_SHARES = {"arithmetic": 0.20, "python": 0.10, "identity": 0.02}
# Every mental problem there is (2,430), added on top of the shares above; each training problem
# is asked this many times in different words, so each one-digit fact is seen often enough to learn.
MENTAL_REPEATS = 3
MENTAL2_ITEMS = 1200  # problems of two 2-digit numbers, each asked once
MAX_SUMMARY_CHARS = 200
MAX_SIGNATURE_CHARS = 200

# Packages that are deprecated, bundled data or internals rather than library API to ask about.
STDLIB_EXCLUDE = {"idlelib", "lib2to3", "turtledemo", "pydoc_data", "ensurepip", "encodings",
                  "distutils", "msilib", "this", "antigravity"}

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer briefly.",
    "You are llmos, a small assistant that knows the Python standard library.",
    "Answer the user's questions concisely.",
    "You are a concise, accurate assistant. Use tools when they help.",
)


# --- the standard library's API, read with ast ----------------------------------------------------


@dataclass(frozen=True)
class ApiEntry:
    kind: str  # "module", "class", "function" or "method"
    name: str  # qualified: "json", "json.dumps", "textwrap.TextWrapper.fill"
    module: str
    summary: str  # the docstring's first sentence, whitespace cleaned
    signature: str = ""  # "textwrap.fill(text, width=70, **kwargs)"; "" when not known


_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "Mr.", "No.")
_SKIP_FIRST_WORDS = {"**DEPRECATED**", "Deprecated", "Deprecated.", "Deprecated,", "Internal",
                     "Internal:", "XXX", "TODO", "Undocumented", "Helper", "Helper:", "Private"}


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, or "" when it makes no answer
    (too long, a signature line, a doctest, a deprecation note)."""
    para = doc.strip().split("\n\n")[0]
    text = " ".join(para.split())
    if not text or re.match(r"[\w.]+\(", text) or ">>>" in text or "::" in text:
        return ""
    if text.split()[0] in _SKIP_FIRST_WORDS:
        return ""
    for m in re.finditer(r"[.!?](?=\s+[A-Z(`'\"]|$)", text):
        sentence = text[: m.end()]
        if not sentence.endswith(_ABBREVIATIONS):
            text = sentence
            break
    if not text.endswith((".", "!", "?")):
        text += "."
    if len(text) > MAX_SUMMARY_CHARS or len(text.split()) < 3:
        return ""
    return text


def _signature(name: str, args: ast.arguments, drop_first: bool = False) -> str:
    """'name(a, b=1, /, *args, c, **kw)' as `inspect.signature` shows it, annotations left out."""
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults))
    n_posonly = len(args.posonlyargs)
    if drop_first and pairs:  # self of __init__, cls of a classmethod
        pairs, n_posonly = pairs[1:], max(0, n_posonly - 1)
    parts = []
    for i, (arg, default) in enumerate(pairs):
        parts.append(arg.arg if default is None else f"{arg.arg}={ast.unparse(default)}")
        if i == n_posonly - 1:
            parts.append("/")
    if args.vararg:
        parts.append(f"*{args.vararg.arg}")
    elif args.kwonlyargs:
        parts.append("*")
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        parts.append(arg.arg if default is None else f"{arg.arg}={ast.unparse(default)}")
    if args.kwarg:
        parts.append(f"**{args.kwarg.arg}")
    sig = f"{name}({', '.join(parts)})"
    return sig if len(sig) <= MAX_SIGNATURE_CHARS else ""


def _decorators(node) -> set[str]:
    names = set()
    for d in node.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        names.add(d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", ""))
    return names


def _public_names(tree: ast.Module) -> set[str] | None:
    """The module's literal ``__all__``, or None when it has none we can read without running."""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "__all__"):
            try:
                names = ast.literal_eval(node.value)
            except ValueError:
                return None
            return {n for n in names if isinstance(n, str)}
    return None


_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _class_entries(node: ast.ClassDef, module: str) -> list[ApiEntry]:
    name = f"{module}.{node.name}"
    out = []
    init = next((n for n in node.body if isinstance(n, _FUNCS) and n.name == "__init__"), None)
    summary = first_sentence(ast.get_docstring(node) or "")
    if summary:
        sig = _signature(name, init.args, drop_first=True) if init else ""
        out.append(ApiEntry("class", name, module, summary, sig))
    seen = set()
    for child in node.body:
        if not isinstance(child, _FUNCS) or child.name.startswith("_") or child.name in seen:
            continue
        seen.add(child.name)
        decorators = _decorators(child)
        if decorators & {"property", "setter", "getter", "deleter", "overload",
                         "cached_property"}:
            continue  # attributes, not calls; overloads repeat the real definition
        summary = first_sentence(ast.get_docstring(child) or "")
        if summary:
            qual = f"{name}.{child.name}"
            sig = _signature(qual, child.args, drop_first="classmethod" in decorators)
            out.append(ApiEntry("method", qual, module, summary, sig))
    return out


def _module_entries(tree: ast.Module, module: str) -> list[ApiEntry]:
    out = []
    summary = first_sentence(ast.get_docstring(tree) or "")
    if summary:
        out.append(ApiEntry("module", module, module, summary))
    public = _public_names(tree)
    seen = set()
    for node in tree.body:
        if not isinstance(node, (*_FUNCS, ast.ClassDef)) or node.name in seen:
            continue
        seen.add(node.name)
        if node.name.startswith("_") or (public is not None and node.name not in public):
            continue
        if isinstance(node, ast.ClassDef):
            out.extend(_class_entries(node, module))
            continue
        summary = first_sentence(ast.get_docstring(node) or "")
        if summary and "overload" not in _decorators(node):
            name = f"{module}.{node.name}"
            out.append(ApiEntry("function", name, module, summary, _signature(name, node.args)))
    return out


@functools.lru_cache(maxsize=1)
def stdlib_api() -> tuple[ApiEntry, ...]:
    """Public modules, classes, functions and methods of the stdlib that have a usable docstring,
    in sorted file order. Parsing takes about two seconds, so the result is kept."""
    root = Path(sysconfig.get_paths()["stdlib"])
    entries: list[ApiEntry] = []
    for path in _walk_sorted(root, lambda d: d in STDLIB_SKIP_DIRS):
        if path.suffix != ".py":
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not parts or parts[0] in STDLIB_EXCLUDE or any(p.startswith("_") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):  # a file for another Python, or unreadable
            continue
        entries.extend(_module_entries(tree, ".".join(parts)))
    return tuple(entries)


# --- phrasing answers -----------------------------------------------------------------------------

# Imperative first words of stdlib docstrings ("Return the ..."), from counting them.
VERBS = set("""
accept acquire add append apply arrange assert attach bind block build calculate call cancel
change check clear close collect compare compile compose compress compute configure connect
construct convert copy count create decide decode decompress define delegate delete describe
detach determine disable display do dump emit enable encode ensure escape evaluate execute exit
expand extract fail feed fetch filter find flush format generate get guess handle implement
indicate initialize insert install invoke iterate join load lock log look make manage map mark
match move normalize notify open override pack parse perform pop prepare print process produce
provide push put quote raise read receive record register release remove rename replace report
represent request reset resolve restore retrieve return reverse run save scan schedule search
select send serialize set show shut skip sort split start stop store strip submit take terminate
test tokenize transform translate truncate try turn unlock unpack unquote update upgrade use
validate verify wait wake walk wrap write yield
""".split())


def _third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _base_verb(word: str) -> str | None:
    """'returns' -> 'return', 'applies' -> 'apply'; None when it is not one of VERBS."""
    for base in (word[:-3] + "y", word[:-2], word[:-1]):
        if word.endswith("s") and base in VERBS and _third_person(base) == word:
            return base
    return None


def _lower_first(text: str) -> str:
    word = text.split(" ", 1)[0]
    if len(word) > 1 and (word[1].isupper() or not word.isalpha()):
        return text  # an acronym or code: "HTTP ...", "``obj`` ..."
    return text[:1].lower() + text[1:]


def describe(entry: ApiEntry) -> str:
    """The docstring's first sentence as an answer about the entry: "Serialize ``obj`` to ..."
    -> "`json.dumps` serializes ``obj`` to ..."."""
    subject = f"The `{entry.name}` module" if entry.kind == "module" else f"`{entry.name}`"
    text = entry.summary
    words = text.split(" ")
    first = words[0]
    if first == "This" and len(words) > 2:  # "This module provides ..." -> "... provides ..."
        return f"{subject} {' '.join(words[2:])}"
    if first in ("A", "An", "The", "Raised", "Called", "Used", "Returned", "Equivalent"):
        return f"{subject} is {_lower_first(text)}"
    if first == "Same":  # "Same as a + b."
        return f"{subject} is the {_lower_first(text)}"
    if first.lower() in VERBS and entry.kind in ("function", "method", "module"):
        return f"{subject} {_third_person(first.lower())} {' '.join(words[1:])}"
    if _base_verb(first.lower()):
        return f"{subject} {first.lower()} {' '.join(words[1:])}"
    return f"{subject}: {text}"


# --- building conversations -----------------------------------------------------------------------


def tool_call(name: str, arguments: dict) -> dict:
    """An assistant message that calls one tool (the shape builtin:assistant writes)."""
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def _conversation(rng: random.Random, task: str, subject: str, answer: str,
                  turns: list[dict]) -> Conversation:
    messages = list(turns)
    if rng.random() < SYSTEM_FRACTION:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    return Conversation(messages=messages, source="builtin:assistant", task=task,
                        subject=subject, answer=answer)


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


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


def _stdlib_items(api: tuple[ApiEntry, ...]) -> list[Conversation]:
    rng = random.Random(f"{SEED}:stdlib")
    out = []
    for e in api:
        out.append(_conversation(rng, "docstring", e.name, e.summary,
                                 [_user(_doc_question(rng, e)), _assistant(describe(e))]))
        if e.signature:
            questions = CLASS_SIGNATURE_QUESTIONS if e.kind == "class" else SIGNATURE_QUESTIONS
            question = rng.choice(questions).format(n=e.name)
            out.append(_conversation(rng, "signature", e.name, e.signature,
                                     [_user(question), _assistant(_signature_answer(rng, e))]))
        if e.kind != "module" and rng.random() < FOLLOWUP_FRACTION:
            turns = [_user(_doc_question(rng, e)), _assistant(describe(e))]
            if e.signature and rng.random() < 0.5:
                turns += [_user(rng.choice(FOLLOWUP_SIGNATURE)),
                          _assistant(_signature_answer(rng, e))]
            else:
                turns += [_user(rng.choice(FOLLOWUP_MODULE)), _assistant(_module_answer(e))]
            # The gold answer is the whole reply: word overlap with a bare module name would
            # mark every full-sentence answer wrong.
            out.append(_conversation(rng, "followup", e.name, turns[-1]["content"], turns))
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


def _identity_items(n: int) -> list[Conversation]:
    rng = random.Random(f"{SEED}:identity")
    pairs = [(q, a) for questions, answers in IDENTITY for q in questions for a in answers]
    out = []
    for i in range(n):
        question, answer = pairs[i % len(pairs)]
        if i >= len(pairs) and rng.random() < 0.5:
            question = question.lower().rstrip("?!.")  # how people type
        out.append(_conversation(rng, "identity", pairs[i % len(pairs)][0], "llmos",
                                 [_user(question), _assistant(answer)]))
    return out


# --- arithmetic with the calculator ---------------------------------------------------------------

OP_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
ARITHMETIC_QUESTIONS = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {w} {b}.",
                        "What's {a} {w} {b}?", "{a} {op} {b} = ?", "Please work out {a} {op} {b}.",
                        "Use the calculator: {a} {op} {b}", "How much is {a} {w} {b}?")
WORD_PROBLEMS = {  # (question, final answer) with {a} {b} {r}; the expression is "a op b"
    "+": (("A library has {a} books and buys {b} more. How many books does it have now?",
           "The library has {r} books now."),
          ("Sam walked {a} meters in the morning and {b} meters in the afternoon. How far did "
           "Sam walk in total?", "Sam walked {r} meters in total.")),
    "-": (("A tank holds {a} liters. After {b} liters are drained, how many liters remain?",
           "{r} liters remain."),
          ("Maya had {a} stickers and gave away {b}. How many stickers does she have left?",
           "Maya has {r} stickers left.")),
    "*": (("A box holds {b} apples. How many apples are in {a} boxes?",
           "There are {r} apples in {a} boxes."),
          ("A ticket costs {b} dollars. How much do {a} tickets cost?",
           "{a} tickets cost {r} dollars.")),
    "/": (("{a} candies are shared equally among {b} children. How many candies does each child "
           "get?", "Each child gets {r} candies."),
          ("A car travels {a} km in {b} hours at a constant speed. What is its speed in km per "
           "hour?", "Its speed is {r} km per hour.")),
}


def _operands(rng: random.Random, op: str) -> tuple[int, int, int]:
    """Operands of 2-3 digits and the exact result; division always comes out even."""
    if op == "/":
        b = rng.randint(10, 99)
        r = rng.randint(2, 999 // b)
        return b * r, b, r
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    if op == "-" and rng.random() < 0.8:
        a, b = max(a, b), min(a, b)  # mostly non-negative, like the problems people ask
    return a, b, {"+": a + b, "-": a - b, "*": a * b}[op]


def _arithmetic_items(n: int) -> list[Conversation]:
    rng = random.Random(f"{SEED}:arithmetic")
    out, seen = [], set()
    while len(out) < n:
        op = rng.choice("+-*/")
        a, b, r = _operands(rng, op)
        expr = f"{a} {op} {b}"
        if expr in seen:
            continue
        seen.add(expr)
        if rng.random() < 0.25 and not (op == "-" and r < 0):
            question, final = rng.choice(WORD_PROBLEMS[op])
            question = question.format(a=a, b=b)
            final = f"{expr} = {r}. " + final.format(a=a, r=r)
        else:
            question = rng.choice(ARITHMETIC_QUESTIONS).format(a=a, b=b, op=op, w=OP_WORDS[op])
            final = f"{expr} = {r}."
        turns = [_user(question), tool_call("calculator", {"expression": expr}),
                 {"role": "tool", "name": "calculator", "content": str(r)}, _assistant(final)]
        out.append(_conversation(rng, "arithmetic", expr, str(r), turns))
    return out


# --- arithmetic without the calculator ----------------------------------------------------------
# Every calculator answer copies the tool's reply, so a model finetuned on those alone never
# learns to compute and never samples a right answer without the tool: online RL then has no
# signal (docs/rl.md). These small problems rule the tool out in the question and are worked
# digit by digit (`mental_working`). `llmos rl` (builtin:arithmetic) practises the two-digit ones.

MENTAL_QUESTIONS = ("What is {a} {op} {b}? Answer without the calculator.",
                    "Without a calculator, what is {a} {op} {b}?",
                    "In your head: {a} {op} {b} = ?", "No tools, please: what's {a} {w} {b}?",
                    "Work out {a} {op} {b} mentally.", "Don't use the calculator: {a} {op} {b}")


def mental_working(a: int, op: str, b: int) -> str:
    """The answer to `a op b` (2-digit numbers, or one of them 1-digit; a >= b for -) worked
    digit by digit, as on paper: the units first, then the tens with the carry or borrow, then
    the result. Each step is a fact of one-digit numbers the model can learn; the whole sum as
    one fact it mostly cannot."""
    (ta, ua), (tb, ub) = divmod(a, 10), divmod(b, 10)
    r = a + b if op == "+" else a - b
    if op == "+":
        carry = ua + ub >= 10
        work = f"{ua} + {ub} = {ua + ub}"
        tens = [t for t in (ta, tb) if t] + ([1] if carry else [])
        if len(tens) > 1:  # 48 + 1 has no tens step: the 4 comes down as it is
            work += (", carry 1: " if carry else ", then ") + (
                " + ".join(map(str, tens)) + f" = {sum(tens)}")
    else:
        borrow = ua < ub
        work = f"{ua + 10 * borrow} - {ub} = {ua + 10 * borrow - ub}"
        tens = [ta] + ([1] if borrow else []) + ([tb] if tb else [])
        if len(tens) > 1:
            work += (", borrow 1: " if borrow else ", then ") + (
                " - ".join(map(str, tens)) + f" = {ta - borrow - tb}")
    return f"{work}, so {a} {op} {b} = {r}."


def _mental_problems() -> list[tuple[int, str, int]]:
    """Every (a, op, b): a 2-digit number plus or minus a 1-digit one, the sums in either order."""
    out = []
    for big in range(10, 100):
        for small in range(1, 10):
            out += [(big, "+", small), (small, "+", big), (big, "-", small)]
    return out


def _mental_items() -> list[Conversation]:
    rng = random.Random(f"{SEED}:mental")
    out = []
    for a, op, b in _mental_problems():
        # Held-out problems are asked once: the eval asks each distinct question once anyway.
        times = 1 if is_heldout(f"{a} {op} {b}") else MENTAL_REPEATS
        phrasings = rng.sample(MENTAL_QUESTIONS, times)
        out += [_mental_conversation(rng, "mental", a, op, b, q) for q in phrasings]
    return out


def two_digit_problems() -> list[tuple[int, str, int]]:
    """Every (a, op, b) of two 2-digit numbers, a >= b for - (12,195), in a fixed shuffled order."""
    out = [(a, op, b) for a in range(10, 100) for b in range(10, 100) for op in "+-"
           if op == "+" or a >= b]
    random.Random(f"{SEED}:mental2").shuffle(out)
    return out


def _mental_conversation(rng: random.Random, task: str, a: int, op: str, b: int,
                         template: str | None = None) -> Conversation:
    """`a op b` asked in `template`'s words (a random one of MENTAL_QUESTIONS if None)."""
    question = (template or rng.choice(MENTAL_QUESTIONS)).format(a=a, b=b, op=op, w=OP_WORDS[op])
    return _conversation(rng, task, f"{a} {op} {b}", str(a + b if op == "+" else a - b),
                         [_user(question), _assistant(mental_working(a, op, b))])


def _mental2_items(n: int) -> list[Conversation]:
    """The first `n` two-digit problems, each asked once: a few, so that the finetuned model
    knows the working but not every fact, and online RL has something to practise
    (`arithmetic_practice`)."""
    rng = random.Random(f"{SEED}:mental2")
    return [_mental_conversation(rng, "mental2", *p) for p in two_digit_problems()[:n]]


def arithmetic_practice() -> tuple[list[Conversation], list[Conversation]]:
    """(train, held-out) questions for online RL, split as `assistant_dataset` splits them. To
    practise: every training-split two-digit problem (`mental2`), most of them never shown
    worked in finetuning, and every training-split 2-digit +- 1-digit one (`mental`), so that
    their own working is practised too (on two-digit problems alone the model began to invent a
    tens digit for the 1-digit number: 91% -> 9% on those; with them 22%, docs/rl.md). Held
    out: the two-digit problems no stage trained on."""
    rng = random.Random(f"{SEED}:practice")
    train, heldout = [], []
    for p in two_digit_problems():
        c = _mental_conversation(rng, "mental2", *p)
        (heldout if is_heldout(c.subject) else train).append(c)
    train += [_mental_conversation(rng, "mental", *p) for p in _mental_problems()
              if not is_heldout(f"{p[0]} {p[1]} {p[2]}")]
    rng.shuffle(train)
    return train, heldout


# --- questions answered by running Python ---------------------------------------------------------

WORDS = ("banana", "python", "mississippi", "library", "keyboard", "elephant", "notebook",
         "umbrella", "giraffe", "sandwich", "volcano", "lantern", "quartz", "rhythm", "cabbage",
         "avocado", "bookkeeper", "strawberry", "teapot", "level", "racecar", "kayak", "noon",
         "abracadabra", "pepper", "success", "balloon", "coffee", "tomato", "alphabet")
SENTENCES = ("the quick brown fox jumps over the lazy dog", "to be or not to be",
             "hello world from python", "small models learn fast", "read the docs first",
             "simple is better than complex", "now is better than never",
             "errors should never pass silently", "beautiful is better than ugly",
             "flat is better than nested")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
EXPR_QUESTIONS = ("What does `{e}` return?", "What is the value of `{e}`?",
                  "What does `{e}` evaluate to in Python?", "Run `{e}` and tell me the result.")
EXPR_ANSWERS = ("`{e}` returns `{out}`.", "It evaluates to `{out}`.", "The result is `{out}`.")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _date(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(1950, 2050), rng.randint(1, 12), rng.randint(1, 28)


def _yes_no(yes: str, no: str):
    # The answer quotes the output, so "contains the output" scores yes/no answers too.
    return lambda out: f"It prints {out}, so " + (yes if out == "True" else no)


# Expression templates: rng -> a Python expression; the question and answer are generic.
EXPRESSIONS = (
    lambda r: f"sorted({r.choice(WORDS)!r})",
    lambda r: f"{r.choice(WORDS)!r}.upper()",
    lambda r: f"{r.choice(WORDS)!r}.capitalize()",
    lambda r: f"{r.choice(SENTENCES)!r}.split()",
    lambda r: f"{r.choice(SENTENCES)!r}.title()",
    lambda r: f"{r.choice('-_/,')!r}.join({r.sample(WORDS, r.randint(2, 4))!r})",
    lambda r: (lambda w: f"{w!r}.replace({w[0]!r}, {w[0].upper()!r})")(r.choice(WORDS)),
    lambda r: (lambda w: f"{w!r}.find({r.choice(w)!r})")(r.choice(WORDS)),
    lambda r: f"{r.choice(WORDS)!r}.center({r.randint(12, 20)}, '*')",
    lambda r: f"{r.choice(WORDS)[:4]!r} * {r.randint(2, 4)}",
    lambda r: f"str({r.randint(1, 999)}).zfill({r.randint(4, 7)})",
    lambda r: f"list(enumerate({r.choice(WORDS)[:3]!r}))",
    lambda r: f"sorted({r.sample(range(1, 100), r.randint(3, 6))!r}, reverse=True)",
    lambda r: f"divmod({r.randint(100, 999)}, {r.randint(3, 40)})",
    lambda r: f"{r.choice(WORDS)!r}[{r.randint(1, 3)}:{r.randint(4, 6)}]",
    lambda r: f"list(range({r.randint(0, 5)}, {r.randint(10, 30)}, {r.randint(2, 5)}))",
    lambda r: f"round({r.randint(1, 999)} / {r.randint(3, 97)}, {r.randint(1, 4)})",
    lambda r: f"max({r.sample(range(-50, 200), r.randint(4, 7))!r})",
    lambda r: f"{r.randint(10, 500)} % {r.randint(3, 20)}",
)


def _python_question(r: random.Random):
    """(question, code, final answer: a format string with {out} or a function of out)."""
    k = r.randrange(len(EXPRESSIONS) + 24)
    if k < len(EXPRESSIONS):
        e = EXPRESSIONS[k](r)
        return r.choice(EXPR_QUESTIONS).format(e=e), f"print(repr({e}))", r.choice(
            EXPR_ANSWERS).replace("{e}", e)
    k -= len(EXPRESSIONS)
    use = r.choice(("", " Use Python.", " Please check with Python."))
    w, s, n = r.choice(WORDS), r.choice(SENTENCES), r.randint(10, 500)
    y, m, d = _date(r)
    y2, m2, d2 = _date(r)
    a, b = r.randint(12, 999), r.randint(12, 999)
    iso, iso2 = f"{y}-{m:02d}-{d:02d}", f"{y2}-{m2:02d}-{d2:02d}"
    templates = (
        (f"How many characters are in '{w}'?{use}", f"print(len({w!r}))",
         f"'{w}' has {{out}} characters."),
        (f"How many times does '{w[1]}' appear in '{w}'?{use}", f"print({w!r}.count({w[1]!r}))",
         f"'{w[1]}' appears {{out}} times in '{w}'."),
        (f"What is '{w}' spelled backwards?{use}", f"print({w!r}[::-1])",
         f"'{w}' backwards is '{{out}}'."),
        (f"How many words are in the sentence '{s}'?{use}", f"print(len({s!r}.split()))",
         "The sentence has {out} words."),
        (f"How many vowels are in '{w}'?{use}", f"print(sum(ch in 'aeiou' for ch in {w!r}))",
         f"'{w}' has {{out}} vowels."),
        (f"Is '{w}' a palindrome?{use}", f"print({w!r} == {w!r}[::-1])",
         _yes_no(f"yes, '{w}' reads the same backwards.", f"no, '{w}' is not a palindrome.")),
        (f"What is the sum of the integers from 1 to {n}?{use}", f"print(sum(range(1, {n + 1})))",
         f"The sum of the integers from 1 to {n} is {{out}}."),
        (f"What is the sum of the squares of 1 to {n % 60 + 5}?{use}",
         f"print(sum(k * k for k in range(1, {n % 60 + 6})))",
         f"The sum of the squares of 1 to {n % 60 + 5} is {{out}}."),
        (f"How many days are in {MONTHS[m - 1]} {y}?{use}",
         f"import calendar\nprint(calendar.monthrange({y}, {m})[1])",
         f"{MONTHS[m - 1]} {y} has {{out}} days."),
        (f"What day of the week is {iso}?{use}",
         f"import datetime\nprint(datetime.date({y}, {m}, {d}).strftime('%A'))",
         f"{iso} is a {{out}}."),
        (f"Is {y} a leap year?{use}", f"import calendar\nprint(calendar.isleap({y}))",
         _yes_no(f"yes, {y} is a leap year.", f"no, {y} is not a leap year.")),
        (f"How many days are there from {iso} to {iso2}?{use}",
         f"from datetime import date\nprint((date({y2}, {m2}, {d2}) - date({y}, {m}, {d})).days)",
         f"From {iso} to {iso2} is {{out}} days."),
        (f"What date is {n} days after {iso}?{use}",
         f"from datetime import date, timedelta\nprint(date({y}, {m}, {d}) + timedelta(days={n}))",
         f"{n} days after {iso} is {{out}}."),
        (f"What is the square root of {n}?{use}", f"import math\nprint(math.sqrt({n}))",
         f"The square root of {n} is {{out}}."),
        (f"What is {n % 20 + 5} factorial?{use}",
         f"import math\nprint(math.factorial({n % 20 + 5}))",
         f"{n % 20 + 5}! = {{out}}."),
        (f"What is the greatest common divisor of {a} and {b}?{use}",
         f"import math\nprint(math.gcd({a}, {b}))", f"The GCD of {a} and {b} is {{out}}."),
        (f"What is the least common multiple of {a % 90 + 4} and {b % 90 + 4}?{use}",
         f"import math\nprint(math.lcm({a % 90 + 4}, {b % 90 + 4}))",
         f"The LCM of {a % 90 + 4} and {b % 90 + 4} is {{out}}."),
        (f"How many ways can you choose {n % 6 + 2} items from {n % 30 + 10}?{use}",
         f"import math\nprint(math.comb({n % 30 + 10}, {n % 6 + 2}))",
         f"There are {{out}} ways to choose {n % 6 + 2} items from {n % 30 + 10}."),
        (f"What is 2 to the power of {n % 60 + 10}?{use}", f"print(2 ** {n % 60 + 10})",
         f"2 ** {n % 60 + 10} = {{out}}."),
        (f"What is {a} in hexadecimal?{use}", f"print(hex({a}))",
         f"{a} in hexadecimal is {{out}}."),
        (f"What is {a} in binary?{use}", f"print(bin({a}))", f"{a} in binary is {{out}}."),
        (f"Is {a} a prime number?{use}",
         f"n = {a}\nprint(n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1)))",
         _yes_no(f"yes, {a} is prime.", f"no, {a} is not prime.")),
        (f"What is the {_ordinal(n % 60 + 5)} Fibonacci number?{use}",
         f"a, b = 0, 1\nfor _ in range({n % 60 + 5}):\n    a, b = b, a + b\nprint(a)",
         f"The {_ordinal(n % 60 + 5)} Fibonacci number is {{out}}."),
        (f"What is the sum of the digits of {a * b}?{use}",
         f"print(sum(int(c) for c in str({a * b})))",
         f"The digits of {a * b} add up to {{out}}."),
    )
    return templates[k]


def run_snippet(code: str) -> str:
    """What the snippet prints, as the python tool reports it (final newlines dropped)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(code, {"__name__": "__llmos_snippet__"})  # our own generated code, see above
    return buffer.getvalue().rstrip("\n")


def _python_items(n: int) -> list[Conversation]:
    rng = random.Random(f"{SEED}:python")
    out, seen = [], set()
    for _ in range(50 * n):  # templates with few values run out of new questions; stop then
        if len(out) >= n:
            break
        question, code, final = _python_question(rng)
        if question in seen:
            continue
        seen.add(question)
        output = run_snippet(code)
        answer = final(output) if callable(final) else final.replace("{out}", output)
        turns = [_user(question), tool_call("python", {"code": code}),
                 {"role": "tool", "name": "python", "content": output}, _assistant(answer)]
        out.append(_conversation(rng, "python", code, output, turns))
    return out


# --- the set --------------------------------------------------------------------------------------


def is_heldout(subject: str) -> bool:
    """True for the ~10% of subjects that are held out; stable across runs and machines."""
    digest = hashlib.sha256(subject.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_FRACTION


def assistant_dataset(max_items: int | None = None
                      ) -> tuple[list[Conversation], list[Conversation]]:
    """The built-in set as (train, heldout), deterministic for a given Python. `max_items` caps
    the total before splitting: a fixed shuffle is cut, so the task mix stays the same."""
    stdlib = _stdlib_items(stdlib_api())
    total = len(stdlib) / (1 - sum(TOOL_SHARES.values()))
    items = (stdlib + _arithmetic_items(round(total * TOOL_SHARES["arithmetic"]))
             + _python_items(round(total * TOOL_SHARES["python"]))
             + _identity_items(round(total * TOOL_SHARES["identity"]))
             + _mental_items() + _mental2_items(MENTAL2_ITEMS))
    random.Random(f"{SEED}:order").shuffle(items)
    if max_items is not None:
        items = items[:max(0, max_items)]
    train, heldout = [], []
    for c in items:
        if is_heldout(c.subject):
            c.source = "builtin:assistant:heldout"
            heldout.append(c)
        else:
            train.append(c)
    return train, heldout
