"""Best-of-N: sample k answers and answer with the one a judge scores highest (a reward model's
reward, or a verifier's check); a tie goes to the likelier answer (mean log-probability per
token)."""

from __future__ import annotations

from llmos.infer.think import LanguageModel, Think, Thought, answer_of, sample


def weighed(answers: list[str | None], scores: list[float]) -> list[dict]:
    """Each distinct answer once, with its best score and how many samples gave it, best
    first (what the response and the chat show)."""
    best: dict = {}
    for a, s in zip(answers, scores):
        c = best.setdefault(a, {"answer": a, "score": round(float(s), 4), "samples": 0})
        c["score"] = max(c["score"], round(float(s), 4))
        c["samples"] += 1
    return sorted(best.values(), key=lambda c: (-c["score"], -c["samples"]))


def best_of(lm: LanguageModel, messages: list[dict], cfg: Think) -> Thought:
    prompt, samples = sample(lm, messages, cfg, cfg.budget)
    read = [answer_of(cfg, c) for c in samples]
    scores = cfg.judge(messages, [text for text, _ in read], True)
    logprobs = lm.mean_logprobs(prompt, [c.ids for c in samples])
    pick = max(range(len(samples)), key=lambda i: (scores[i], logprobs[i]))
    text, answer = read[pick]
    candidates = weighed([a for _, a in read], scores)
    return Thought(text, answer, "best-of", cfg.budget, len(samples),
                   sum(len(c.ids) for c in samples), finish=samples[pick].finish,
                   candidates=candidates)
