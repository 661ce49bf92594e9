"""Best-of-N: sample k answers and answer with the one a judge scores highest (a reward model's
reward, or a verifier's check); a tie goes to the likelier answer (mean log-probability per
token)."""

from __future__ import annotations

from llmos.infer.think import LanguageModel, Think, Thought, answer_of, sample


def best_of(lm: LanguageModel, messages: list[dict], cfg: Think) -> Thought:
    prompt, samples = sample(lm, messages, cfg, cfg.budget)
    read = [answer_of(cfg, c) for c in samples]
    scores = cfg.judge(messages, [text for text, _ in read], True)
    logprobs = lm.mean_logprobs(prompt, [c.ids for c in samples])
    pick = max(range(len(samples)), key=lambda i: (scores[i], logprobs[i]))
    text, answer = read[pick]
    candidates = sorted(({"answer": a, "score": round(float(s), 4)}
                         for (_, a), s in zip(read, scores)), key=lambda c: -c["score"])
    return Thought(text, answer, "best-of", cfg.budget, len(samples),
                   sum(len(c.ids) for c in samples), finish=samples[pick].finish,
                   candidates=candidates)
