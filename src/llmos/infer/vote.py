"""Self-consistency (Wang et al. 2022): sample k answers, extract each one's final answer, and
answer with the most common one.

A tie between answers goes to the one whose likeliest sample has the higher mean log-probability
per token; the text returned is that likeliest sample of the winning answer. Samples with no
final answer (cut off, or none written) get no vote.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from llmos.infer.think import LanguageModel, Think, Thought, answer_of, sample


def tally(answers: Sequence[str | None], logprobs: Sequence[float]) -> tuple[int, Counter]:
    """(the index of the sample to answer with, votes per answer). With no answer at all, the
    likeliest sample."""
    votes = Counter(a for a in answers if a is not None)
    best: dict[str, int] = {}  # answer -> its likeliest sample
    for i, a in enumerate(answers):
        if a is not None and (a not in best or logprobs[i] > logprobs[best[a]]):
            best[a] = i
    if not votes:
        return max(range(len(answers)), key=lambda i: logprobs[i]), votes
    winner = max(votes, key=lambda a: (votes[a], logprobs[best[a]]))
    return best[winner], votes


def contenders_logprobs(lm: LanguageModel, prompt: list[int], samples, answers) -> list[float]:
    """The mean log-probabilities `tally` reads: only of the samples of the most-voted answers
    (or of all, when none has an answer), each distinct text scored once; -inf for the rest.
    A clear winner whose samples all say the same thing needs no forward pass at all."""
    votes = Counter(a for a in answers if a is not None)
    top = max(votes.values(), default=0)
    wanted = {i for i, a in enumerate(answers) if not votes or votes.get(a) == top}
    distinct = list(dict.fromkeys(tuple(samples[i].ids) for i in sorted(wanted)))
    scores = dict(zip(distinct, lm.mean_logprobs(prompt, distinct) if len(distinct) > 1
                      else [0.0] * len(distinct)))
    return [scores.get(tuple(c.ids), float("-inf")) if i in wanted else float("-inf")
            for i, c in enumerate(samples)]


def vote(lm: LanguageModel, messages: list[dict], cfg: Think) -> Thought:
    prompt, samples = sample(lm, messages, cfg, cfg.budget)
    read = [answer_of(cfg, c) for c in samples]
    logprobs = contenders_logprobs(lm, prompt, samples, [a for _, a in read])
    pick, votes = tally([a for _, a in read], logprobs)
    text, answer = read[pick]
    candidates = [{"answer": a, "votes": n} for a, n in votes.most_common()]
    return Thought(text, answer, "vote", cfg.budget, len(samples),
                   sum(len(c.ids) for c in samples), finish=samples[pick].finish,
                   candidates=candidates)
