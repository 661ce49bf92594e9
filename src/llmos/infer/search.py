"""Step-level beam search: an answer grows one step at a time (a step ends at one of
`Think.step_stops`: a line, or for worked arithmetic a clause), a judge values every partial
answer, and the best few go on (Tree of Thoughts' breadth-first search, Yao et al. 2023, with
sampled steps).

A budget of k decodes k rows per step, spread over the live beams (at most max(1, k // 2) are
kept: the first step samples k first steps, later ones two next steps per beam). A partial
answer the judge scores low is dropped as soon as its step is written, which is where search
gains on a vote: a vote pays for every wrong answer to its end. Without a judge the value is
the partial answer's mean log-probability per token.
"""

from __future__ import annotations

from dataclasses import replace

from llmos.infer.answers import extract
from llmos.infer.best_of import weighed
from llmos.infer.think import LanguageModel, Think, Thought, content, prompt_ids, sampling

MAX_STEPS = 16


def beams_kept(budget: int) -> int:
    """How many partial answers go on after each step, for a budget of rows per step."""
    return max(1, budget // 2)


def search(lm: LanguageModel, messages: list[dict], cfg: Think) -> Thought:
    width = beams_kept(cfg.budget)
    prompt = prompt_ids(lm.tok, messages)
    base = sampling(lm.tok, cfg, greedy=False)

    def value(texts: list[str], idss: list[list[int]], final: bool) -> list[float]:
        if not texts:
            return []
        if cfg.judge is not None:
            return [float(v) for v in cfg.judge(messages, texts, final)]
        return lm.mean_logprobs(prompt, idss)

    beams: list[list[int]] = [[]]
    finished: list[tuple[list[int], str, float]] = []  # ids, finish, value
    samples = tokens = 0
    for _step in range(MAX_STEPS):
        rows = [b for i, b in enumerate(beams)
                for _ in range(cfg.budget // len(beams) + (i < cfg.budget % len(beams)))]
        room = cfg.max_new_tokens - min(len(b) for b in beams)
        params = replace(base, max_new_tokens=max(1, room))
        grown = lm.complete([prompt + b for b in rows], params, cfg.step_stops, keep_stop=True)
        samples += len(rows)
        tokens += sum(len(c.ids) for c in grown)
        children: dict[tuple, str] = {}  # ids -> "" (still open), "stop" or "length"
        for b, c in zip(rows, grown):
            ids = (b + c.ids)[:cfg.max_new_tokens]
            ended = "stop" if c.finish == "stop" and not c.stop else ""
            if not ended and (len(ids) >= cfg.max_new_tokens or not c.ids):
                ended = "length"
            children.setdefault(tuple(ids), ended)
        done = [list(ids) for ids, end in children.items() if end]
        texts = [content(lm.tok.decode(ids, skip_special_tokens=False)) for ids in done]
        finished += [(ids, children[tuple(ids)], v)
                     for ids, v in zip(done, value(texts, done, True))]
        open_ = [list(ids) for ids, end in children.items() if not end]
        texts = [content(lm.tok.decode(ids, skip_special_tokens=False)) for ids in open_]
        ranked = sorted(zip(value(texts, open_, False), range(len(open_))), reverse=True)
        beams = [open_[i] for _, i in ranked[:width]]
        if not beams or len(finished) >= width:
            break
    if not finished:  # out of steps: the best open answer, as far as it got
        finished = [(b, "length", float("-inf")) for b in beams]
    logprobs = lm.mean_logprobs(prompt, [ids for ids, _, _ in finished])
    pick = max(range(len(finished)), key=lambda i: (finished[i][2], logprobs[i]))
    ids, finish, _ = finished[pick]
    text = content(lm.tok.decode(ids, skip_special_tokens=False))
    candidates = weighed([extract(cfg.kind, content(lm.tok.decode(f[0], skip_special_tokens=False)))
                          for f in finished], [f[2] for f in finished])
    return Thought(text, extract(cfg.kind, text), "search", cfg.budget, samples, tokens,
                   finish=finish, candidates=candidates)
