"""Judges for automatic arena battles: given a prompt and two answers, which is better?

    verifier        prompts with a reference answer: each answer is scored as the held-out
                    evaluation scores it (`llmos.envs.verifiers.score`); the correct one wins,
                    both correct is a tie, both wrong is "tie (bothbad)"
    reward:PATH     a reward model (llmos.reward_model): the higher score wins
    openai:URL#M    an LLM judge behind any OpenAI-compatible endpoint, asked with a pairwise
                    prompt in the manner of MT-bench and parsed for [[A]], [[B]] or [[C]] (tie)

A judge returns a `Verdict`: a FastChat winner (model_a, model_b, tie, tie (bothbad)) or None
when it could not decide (an unparseable LLM verdict, an endpoint error), with a note saying
why. Undecided battles are counted, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmos import reward_model
from llmos.agent.peers import OpenAIPeer, answer, parse_openai
from llmos.envs.verifiers import passed, score


@dataclass
class Verdict:
    winner: str | None  # None: undecided (see note)
    note: str = ""
    raw: str = ""  # what an LLM judge said, for auditing


@dataclass
class Item:
    """One prompt of an automatic battle: the messages to answer, and what the verifier needs."""

    messages: list[dict]
    task: str = "chat"
    answer: str = ""  # the reference answer ("" = none)


# ---- verifier --------------------------------------------------------------------------------


def correct(item: Item, answer: str) -> bool:
    return passed(item.task, score(item.task, item.answer, answer))


class VerifierJudge:
    name = "verifier"

    def __call__(self, item: Item, answer_a: str, answer_b: str) -> Verdict:
        if not item.answer:
            return Verdict(None, "no reference answer")
        a, b = correct(item, answer_a), correct(item, answer_b)
        if a and b:
            return Verdict("tie", "both correct")
        if not a and not b:
            return Verdict("tie (bothbad)", "both wrong")
        return Verdict("model_a" if a else "model_b", "one correct")


# ---- reward model ----------------------------------------------------------------------------


class RewardJudge:
    """The answer the reward model scores higher wins; scores within `tie_margin` tie."""

    def __init__(self, path: str, tie_margin: float | None = None):
        self.name = f"reward:{path}"
        self.tie_margin = reward_model.TIE_MARGIN if tie_margin is None else tie_margin
        self.model, self.tok = reward_model.load_reward_model(path)

    def __call__(self, item: Item, answer_a: str, answer_b: str) -> Verdict:
        convs = [item.messages + [{"role": "assistant", "content": x}]
                 for x in (answer_a, answer_b)]
        ra, rb = reward_model.score(self.model, self.tok, convs)
        note = f"rewards {ra:.4f} / {rb:.4f}"
        if abs(ra - rb) <= self.tie_margin:
            return Verdict("tie", note)
        return Verdict("model_a" if ra > rb else "model_b", note)


# ---- an LLM judge ----------------------------------------------------------------------------

JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two "
    "AI assistants to the user question displayed below. Choose the assistant that follows the "
    "user's instructions and answers the question better, considering helpfulness, relevance, "
    "accuracy, depth and level of detail. Do not let the order of the responses, their length "
    "or the assistants' names influence you; be as objective as possible. Explain briefly, then "
    'output your final verdict in exactly this format: "[[A]]" if assistant A is better, '
    '"[[B]]" if assistant B is better, and "[[C]]" for a tie.')

VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
WINNER = {"A": "model_a", "B": "model_b", "C": "tie"}


def judge_prompt(item: Item, answer_a: str, answer_b: str) -> list[dict]:
    question = "\n\n".join(f"[{m['role']}]\n{m.get('content') or ''}" for m in item.messages)
    user = (f"[User Question]\n{question}\n\n"
            f"[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]"
            f"\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
            "[The End of Assistant B's Answer]")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> str | None:
    """model_a / model_b / tie from the judge's [[A]] / [[B]] / [[C]]; None when there is no
    verdict or when the judge gave more than one different verdict."""
    found = set(VERDICT.findall(text or ""))
    return WINNER[found.pop()] if len(found) == 1 else None


class LLMJudge:
    def __init__(self, spec: str, max_tokens: int = 512):
        url, model, key_env = parse_openai(spec.removeprefix("openai:"))
        self.name = f"openai:{model}"
        self.max_tokens = max_tokens
        self.endpoint = OpenAIPeer(self.name, url, model, key_env)

    def __call__(self, item: Item, answer_a: str, answer_b: str) -> Verdict:
        try:
            said = answer(self.endpoint, judge_prompt(item, answer_a, answer_b),
                          self.max_tokens, temperature=0.0)
        except Exception as e:  # noqa: BLE001 - a failed call is one undecided battle
            return Verdict(None, f"judge error: {type(e).__name__}: {e}")
        winner = parse_verdict(said)
        return Verdict(winner, "" if winner else "unparseable verdict", raw=said)


def make_judge(spec: str):
    """`verifier`, `reward:PATH` or `openai:URL#MODEL[;key=ENV]`."""
    if spec == "verifier":
        return VerifierJudge()
    if spec.startswith("reward:"):
        return RewardJudge(spec.removeprefix("reward:"))
    if spec.startswith("openai:"):
        return LLMJudge(spec)
    raise ValueError(f"unknown judge {spec!r}: use verifier, reward:PATH or "
                     "openai:BASE_URL#MODEL[;key=ENV]")
