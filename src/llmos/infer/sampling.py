"""Text completions of a batch of prompts in one pass of the engine: what generative evals and
the System-2 strategies sample through.

A row ends at a stop token, at a stop string or at its token budget; the batch ends when every
row has. So k samples of one question (the prompt repeated k times) cost one batched decode,
not k.

    completions = complete(engine, tok, [ids] * 8, SamplingParams(temperature=0.8), stops=["\\n"])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llmos.infer.engine import Engine, SamplingParams, TextStream


@dataclass
class Completion:
    text: str  # cut before the first stop string (or just after it, with keep_stop)
    ids: list[int] = field(default_factory=list)  # the tokens generated, up to the cut
    finish: str = "length"  # "stop": a stop token or string ended it; "length": the budget did
    stop: str = ""  # the stop string that ended it ("" for a stop token or the budget)


def cut(text: str, stops: Sequence[str], keep_stop: bool = False) -> tuple[str, str]:
    """(the text up to the first stop string, that string); ("text", "") when none occurs."""
    found = [(text.index(s), s) for s in stops if s and s in text]
    if not found:
        return text, ""
    at, stop = min(found)
    return text[:at + len(stop) if keep_stop else at], stop


def complete(engine: Engine, tok, prompts: Sequence[Sequence[int]], params: SamplingParams,
             stops: Sequence[str] = (), keep_stop: bool = False) -> list[Completion]:
    """One completion per prompt, all decoded together (`params.stop_tokens` end a row too).
    The tokens a row generated after the one that completed its stop string are not kept."""
    streams = [TextStream(tok) for _ in prompts]
    texts, ids = [""] * len(prompts), [[] for _ in prompts]
    ended = [""] * len(prompts)  # "" while running, else "token", "string"
    for step in engine.stream(prompts, params):
        for r, t in enumerate(step):
            if ended[r]:
                continue
            if t is None:
                ended[r] = "token"
                continue
            ids[r].append(t)
            texts[r] += streams[r].push(t)
            if stops and cut(texts[r], stops)[1]:
                ended[r] = "string"
        if all(ended):
            break
    out = []
    for r in range(len(prompts)):
        text, stop = cut(texts[r], stops, keep_stop)
        out.append(Completion(text, ids[r], "stop" if ended[r] else "length", stop))
    return out
