"""Behaviour: how often the assistant's own answers show each failure that the stage-3
comparisons (data/builtin/comparisons.py) teach against, found by deterministic detectors.

The answers are the policy's own samples (evals/own_samples.py): several per held-out prompt,
sampled as `llmos chat` samples, tools offered to every prompt. A kind's rate is over the samples
it applies to; its 95% interval resamples prompts, not samples (the samples of one prompt are
alike, so counting them as independent would make the interval too narrow).

    kind                 applies to                       fires when
    looping              every sample                     an assistant turn repeats itself
                                                          (`looping`)
    evasive              every sample with a gold answer  the answer hedges (`evasive`) and is
                                                          not right
    wrong_identity       identity prompts                 the answer does not say llmos, or
                                                          claims to be another model or a human
    skipped_tool         prompts whose gold answer calls  no call to that tool
                         a tool (calculator, python)
    used_tool            prompts that rule tools out      a tool call, well-formed or not
                         (mental, mental2, such sessions)
    malformed_tool_call  samples that try a tool call     a call that does not parse, names an
                                                          unknown tool or is refused
    wrong_answer         verifiable tasks (VERIFIED)      `verifiers.score` does not pass
"""

from __future__ import annotations

import re

from llmos.data.builtin.arithmetic import MENTAL_QUESTIONS
from llmos.data.records import Conversation, prompt_of
from llmos.envs.verifiers import passed, score
from llmos.evals import own_samples, text_table
from llmos.evals.assistant_tasks import plan
from llmos.evals.intervals import cluster_bootstrap

KINDS = ("looping", "evasive", "wrong_identity", "skipped_tool", "used_tool",
         "malformed_tool_call", "wrong_answer")
# Checked by `verifiers.score` against a gold answer (docstring and followup answers are scored
# by word overlap, too loose to call an answer wrong).
VERIFIED = ("arithmetic", "mental", "mental2", "python", "signature", "identity", "session")
NO_TOOL_TASKS = ("mental", "mental2")
PROMPTS = 100  # held-out prompts by default (--limit), spread over the tasks: 11 of each of 9
SAMPLES = 4  # answers sampled per prompt

# ---- looping ---------------------------------------------------------------------------------

MAX_UNIT = 200  # characters in the repeated piece: four words of a long signature fit
# A repeated run in the middle of an answer counts from this many characters: "'lant' * 4" is
# 'lantlantlantlant' (16), a sorted word is "'s', 's', 's', 's'" (20); "the height of " three
# times is 42.
MIN_RUN = 30
RUN = re.compile(rf"(.{{2,{MAX_UNIT}}}?)\1{{2,}}", re.S)


def _counts(unit: str, run: str, context: str) -> bool:
    """A repeated piece counts when it is not only spaces and the run is not copied from the
    conversation (a tool's output, the question)."""
    return bool(unit.strip()) and run not in context


def looping(text: str, context: str = "") -> bool:
    """Whether `text` is stuck in a loop: it ends in three or more periods of one piece of 2 to
    MAX_UNIT characters (the loop ran until the tokens did, the last copy may be cut short), or a
    piece repeats three or more times in a row over MIN_RUN characters or more. Runs that also
    appear in `context` do not count."""
    text = text.rstrip()
    for size in range(2, min(MAX_UNIT, len(text) // 3) + 1):
        tail = text[-3 * size:]
        if tail[:-size] == tail[size:] and _counts(text[-size:], tail, context):
            return True
    return any(len(m[0]) >= MIN_RUN and _counts(m[1], m[0], context) for m in RUN.finditer(text))


# ---- evasive ---------------------------------------------------------------------------------

# The non-answers of comparisons.EVASIVE and phrasings like them.
HEDGES = re.compile("|".join((
    r"\bI(?:'m| am) not (?:sure|certain)\b", r"\bI (?:don't|do not) know\b", r"\bno idea\b",
    r"\bI (?:can't|cannot|can not|am unable to|'m unable to) (?:answer|help|say|tell|share)\b",
    r"\blook (?:it|that) up\b", r"\b(?:check|consult|read) the (?:documentation|docs)\b",
    r"\bgood question\b", r"(?:^|[.!?]\s+)It depends\b", r"\bdepends on (?:many|several|various)\b",
    r"\bbe more specific\b", r"\bcould you clarify\b", r"\bcan you clarify\b",
    r"\bseveral ways to (?:think|look)\b", r"\bthe answer varies\b", r"\bhard to say\b",
)), re.I)


def evasive(text: str) -> bool:
    """Whether the answer hedges ("I'm not sure", "It depends", "Could you be more specific?",
    ...) outside `code` spans. The rate counts it only when the answer is also not right."""
    return HEDGES.search(re.sub(r"`[^`]*`", "", text)) is not None


# ---- identity --------------------------------------------------------------------------------

_OTHERS = (r"(?:chat ?gpt|gpt-?\d\w*|openai|claude|anthropic|gemini|bard|llama|mistral|copilot|"
           r"siri|alexa|(?:a |an )?(?:real )?(?:human|person))")
CLAIM = re.compile(rf"\bI(?:'m| am)\s+(?:a |an )?{_OTHERS}\b|\b(?:trained|made|created|built|"
                   r"developed)\s+by\s+(?:openai|google|meta|anthropic|microsoft)\b", re.I)
NEGATION = re.compile(r"\bnot\b|n't\b|\bno\b|\bnever\b", re.I)


def claims_other_identity(text: str) -> bool:
    """A sentence, not negated, that says it is ChatGPT (or another model, or a human) or was
    made by another company: "I'm ChatGPT, ... trained by OpenAI." does; "No, I'm not ChatGPT."
    does not."""
    return any(CLAIM.search(s) and not NEGATION.search(s)
               for s in re.split(r"(?<=[.!?])\s+", text))


def wrong_identity(text: str) -> bool:
    return "llmos" not in text.lower() or claims_other_identity(text)


# ---- tools: which one a prompt needs, and whether it rules them out ----------------------------


def _wording(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for key, value in (("a", r"-?\d+"), ("b", r"-?\d+"), ("op", r"[-+*/]"), ("w", r"[a-z ]+")):
        pattern = pattern.replace(re.escape("{" + key + "}"), value)
    return re.compile(pattern + r"\s*\Z", re.I)


NO_TOOL_WORDINGS = [_wording(t) for t in MENTAL_QUESTIONS]


def needed_tool(conv: Conversation) -> str | None:
    """The tool the gold answer calls (arithmetic: calculator, python: python), if any."""
    for m in conv.messages[len(prompt_of(conv)):]:
        for call in m.get("tool_calls") or []:
            return call["function"]["name"]
    return None


def rules_out_tools(conv: Conversation) -> bool:
    """Whether the question rules tools out: mental and mental2, and sessions whose last question
    is asked in one of their wordings ("Work out 87 - 7 mentally.")."""
    if conv.task in NO_TOOL_TASKS:
        return True
    question = prompt_of(conv)[-1]["content"]
    return conv.task == "session" and any(w.match(question) for w in NO_TOOL_WORDINGS)


# ---- one sample --------------------------------------------------------------------------------


def detect(sample: dict) -> dict[str, bool | None]:
    """Each kind's verdict on one sample: True (fired), False, None (does not apply). `sample`
    holds task, expected, answer, texts (every assistant turn's content), context (the prompt's
    and the tool results' text), calls (names of the parsed tool calls), attempted_calls and
    failed_calls (unparsed or refused), needs_tool and no_tools (see own_samples.answer)."""
    task, expected, answer = sample["task"], sample["expected"], sample["answer"]
    right = bool(expected) and passed(task, score(task, expected, answer))
    attempted = sample["attempted_calls"] > 0
    needs = sample["needs_tool"]
    return {
        "looping": any(looping(t, sample["context"]) for t in sample["texts"]),
        "evasive": evasive(answer) and not right if expected else None,
        "wrong_identity": wrong_identity(answer) if task == "identity" else None,
        "skipped_tool": needs not in sample["calls"] if needs else None,
        "used_tool": attempted if sample["no_tools"] else None,
        "malformed_tool_call": sample["failed_calls"] > 0 if attempted else None,
        "wrong_answer": not right if task in VERIFIED and expected else None,
    }


# ---- rates -----------------------------------------------------------------------------------


def rates(samples: list[dict], rounds: int = 2000, seed: int = 0) -> dict[str, dict]:
    """KIND -> {rate, ci, n, prompts} over the samples each kind applies to (their
    "detectors", see `detect`), the 95% interval by resampling prompts (`prompt_id`)."""
    out = {}
    for kind in KINDS:
        groups: dict[int, list[bool]] = {}
        for s in samples:
            verdict = s["detectors"][kind]
            if verdict is not None:
                groups.setdefault(s["prompt_id"], []).append(verdict)
        flags = [f for g in groups.values() for f in g]
        lo, hi = cluster_bootstrap(list(groups.values()), rounds, seed)
        out[kind] = {"rate": round(sum(flags) / len(flags), 4) if flags else None,
                     "ci": [round(lo, 4), round(hi, 4)], "n": len(flags),
                     "prompts": len(groups)}
    return out


def evaluate(model, tok, heldout: list[Conversation], limit: int = PROMPTS,
             samples: int = SAMPLES, seed: int = 0) -> dict:
    """Sample `samples` answers to up to `limit` held-out prompts (picked as the assistant eval
    picks them, assistant_tasks.plan) and run every detector on each. Returns {"behaviour":
    KIND -> {rate, ci, n, prompts}, "metrics": {...}, "items": every sample, its verdicts}."""
    chosen = plan(heldout, limit)
    items = []
    for r in own_samples.sample(model, tok, chosen, samples, seed):
        c = chosen[r["prompt_id"]]
        said = [m.get("content") or "" for m in r["prompt"]]  # what the answer may copy
        said += [m["content"] for m in r["transcript"] if m["role"] == "tool"]
        s = {"task": c.task, "subject": c.subject, "expected": c.answer, **r,
             "needs_tool": needed_tool(c), "no_tools": rules_out_tools(c),
             "context": "\n".join(said)}
        s["detectors"] = detect(s)
        s["fired"] = [kind for kind, v in s["detectors"].items() if v]
        items.append({k: v for k, v in s.items() if k not in ("texts", "context")})
    found = rates(items, seed=seed)
    metrics = {"clean": sum(not s["fired"] for s in items) / max(1, len(items)),
               **{kind: r["rate"] for kind, r in found.items() if r["rate"] is not None},
               "prompts": len(chosen), "samples": len(items)}
    return {"behaviour": found, "metrics": metrics, "samples_per_prompt": samples,
            "seed": seed, "items": items}


def cell(r: dict | None) -> str:
    """'0.123 [0.080, 0.170] (n = 400)', or '-' where the kind applied to nothing."""
    if not r or r.get("rate") is None:
        return "-"
    lo, hi = r["ci"]
    return f"{r['rate']:.3f} [{lo:.3f}, {hi:.3f}] (n = {r['n']})"


def format_table(behaviour: dict[str, dict]) -> str:
    rows = [("failure", "rate", "95% interval", "n", "prompts")]
    for kind, r in behaviour.items():
        shown = r["rate"] is not None
        rows.append((kind, f"{r['rate']:.4f}" if shown else "-",
                     f"[{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]" if shown else "-",
                     str(r["n"]), str(r["prompts"])))
    return text_table.aligned(rows)


def card_section(results: dict[str, dict], table) -> str:
    """The report card's Behaviour table: a row per failure kind, a column per checkpoint in
    `results` (name -> its `behaviour` eval result, without items); "" when there are none."""
    names = [n for n, r in results.items() if r and isinstance(r.get("behaviour"), dict)]
    if not names:
        return ""
    rows = [[kind] + [cell(results[n]["behaviour"].get(kind)) for n in names] for kind in KINDS]
    first = results[names[0]]
    about = (f"The policy's own answers to held-out prompts ({first.get('samples_per_prompt', '?')}"
             " samples a prompt, temperature 0.7, top-p 0.95, tools offered), each failure kind "
             "found by a deterministic detector over the samples it applies to (n); 95% "
             "intervals by resampling prompts. Lower is better. docs/comparisons.md, "
             "\"Behaviour: what changes in the answers\".")
    return table(["failure"] + names, rows) + "\n\n" + about
