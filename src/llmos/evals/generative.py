"""Generative tasks: greedy answers cut at stop strings, scored by answer extraction
(`llmos.infer.answers`), and code run in the sandbox.

    gsm8k      the number after "the answer is" (else after "####", else the last number in the
               answer) equals the reference, commas and a trailing period ignored
    triviaqa   the answer, normalized (lowercase, no punctuation or articles, single spaces),
               equals one of the normalized aliases
    humaneval  prompt + completion + the set's tests run in llmos's Python sandbox and exit 0
    mbpp       completion + the setup code + the asserts run in the sandbox and exit 0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llmos import chat_format
from llmos.agent.sandbox import PythonLimits, run_python
from llmos.infer.answers import clean_number, extract_number, normalize_answer
from llmos.infer.engine import Engine, SamplingParams
from llmos.infer.sampling import complete

# ---- scoring -----------------------------------------------------------------------------------


def score_answer(task: str, output: str, answers: Sequence[str]) -> tuple[float, str | None]:
    """(1.0 or 0.0, the extracted answer) for a generative task's output."""
    if task == "gsm8k":
        got = extract_number(output)
        return float(got is not None and got in {clean_number(a) for a in answers}), got
    got = normalize_answer(output)
    return float(got in {normalize_answer(a) for a in answers}), got


# ---- generation --------------------------------------------------------------------------------


def chat_prompt(tok, text: str) -> str:
    """The prompt as a user turn in the model's chat format, ending in the assistant's header
    (for assistant checkpoints, which answer a chat turn rather than continue a document)."""
    messages = [{"role": "user", "content": text.strip()}]
    template = getattr(tok, "chat_template", None)
    if template is not None:
        return chat_format.template_text(template, messages, None, add_generation_prompt=True)
    return chat_format.render_text(messages, None, add_generation_prompt=True)[0]


def generate_until(model, tok, prompts: Sequence[str], stops: Sequence[str], max_new_tokens: int,
                   batch_size: int = 16, end_ids: Sequence[int] = (),
                   progress: Callable[[int], None] | None = None) -> list[dict]:
    """Greedy completions of each prompt, cut at the first stop string; a batch stops as soon
    as every row has hit a stop string, an end token or the token budget. Prompts are cut from
    the left so that `max_new_tokens` fit in the window. One record per prompt: the completion,
    the reason it ended and the prompt tokens cut."""
    engine = Engine(model)
    window = model.cfg.max_seq_len
    budget = max(1, min(max_new_tokens, window // 2))
    params = SamplingParams(max_new_tokens=budget, temperature=0.0, stop_tokens=tuple(end_ids))
    encoded = [tok.encode(p).ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    out: list[dict | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids = [encoded[i][-(window - budget):] or [0] for i in chunk]
        for r, (i, c) in enumerate(zip(chunk, complete(engine, tok, ids, params, stops))):
            out[i] = {"output": c.text, "finish": c.finish,
                      "cut_prompt_tokens": len(encoded[i]) - len(ids[r])}
        if progress:
            progress(len(chunk))
    return out


# ---- code --------------------------------------------------------------------------------------

CODE_LIMITS = PythonLimits(cpu_seconds=5, wall_seconds=10, memory_mb=512)


def run_tests(program: str, limits: PythonLimits = CODE_LIMITS) -> dict:
    """Run a program (solution + tests) in the sandbox: passed when it exits 0 in the limits."""
    result = run_python(program, limits)
    return {"passed": result.exit_code == 0, "exit_code": result.exit_code,
            "timed_out": result.timed_out, "killed": result.killed,
            "stderr": result.stderr[-2000:]}
