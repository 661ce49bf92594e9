"""Accuracy against inference compute (System 2): every task answered with a strategy at each
budget, one row per budget with its 95% interval and what it cost.

    llmos eval runs/cpu-tiny/sft --tasks mental2 --think vote --budget 1,2,4,8,16,32

Tasks with answers that can be checked (`TASKS`):
    mental2    two 2-digit numbers added or subtracted in the head: the held-out problems no
               stage trained on (builtin:arithmetic's held-out split, 1,195)
    mental     a 2-digit and a 1-digit number, the held-out questions of builtin:assistant
    countdown  puzzles made by a solver (envs/countdown.py), checked line by line
    gsm8k      GSM8K test, asked as a user turn, the final number compared
    humaneval  HumanEval's 164 functions to complete, asked as a user turn; graded by its
               hidden tests in the sandbox; a vote compares programs (normalized by Python's
               parser); the verifier runs the examples of the function's own docstring

Budget 1 is the greedy answer, so a curve starts at the baseline. An item is right when the
answer the strategy chose is: its final number equals the reference (countdown: the working
reaches the target by the rules). The verifier judge of best-of and search checks the work
without the reference (envs/verifiers.working_value; countdown's own check), as a calculator
would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from llmos.data.builtin.arithmetic import arithmetic_practice
from llmos.data.builtin.assistant import assistant_dataset
from llmos.data.records import prompt_of
from llmos.envs import countdown
from llmos.envs.verifiers import doctest_value, function_program, passes_tests, working_value
from llmos.evals.intervals import wilson
from llmos.evals.tasks import TaskError, spread
from llmos.infer.answers import clean_number
from llmos.infer.strategies import think
from llmos.infer.think import NEEDS_JUDGE, Judge, LanguageModel, Think, Thought

TASKS = ("mental2", "mental", "countdown", "gsm8k", "humaneval")
CLAUSES = (", ",)  # a step of worked arithmetic: "8 + 7 = 15, carry 1: 4 + 3 + 1 = 8, so ..."


@dataclass
class Item:
    id: str
    messages: list[dict]
    answer: str  # the reference ("" for countdown, where any valid working is right)
    head: str = ""  # humaneval: the function's signature and docstring
    tests: str = ""  # humaneval: the hidden tests that grade it


@dataclass
class Task:
    name: str
    kind: str  # the answer kind a vote compares
    steps: tuple[str, ...]  # what ends a step of a search
    items: Callable[[], list[Item]]
    verify: Callable[[str, str, bool], float]  # (question, answer, final) -> 0..1, no reference
    correct: Callable[[Item, Thought], bool] = lambda item, thought: (  # noqa: E731
        thought.answer is not None and thought.answer == clean_number(item.answer))
    max_new_tokens: int = 64


def question(messages: list[dict]) -> str:
    return messages[-1]["content"]


def reaches_target(item: Item, thought: Thought) -> bool:
    """Countdown: any working that reaches the target by the rules is right."""
    return countdown_verify(question(item.messages), thought.text, True) >= 1.0


def passes_hidden_tests(item: Item, thought: Thought) -> bool:
    """HumanEval: the completed function passes the set's own (hidden) tests."""
    return passes_tests(function_program(item.head, thought.text), item.tests) == 1.0


def mental2_items() -> list[Item]:
    _, heldout = arithmetic_practice()
    return [Item(c.subject, prompt_of(c), c.answer) for c in heldout]


def mental_items() -> list[Item]:
    _, heldout = assistant_dataset()
    seen, out = set(), []
    for c in heldout:  # each question once (as the assistant eval asks them)
        if c.task == "mental" and c.subject not in seen:
            seen.add(c.subject)
            out.append(Item(c.subject, prompt_of(c), c.answer))
    return out


def countdown_items() -> list[Item]:
    return [Item(f"{p.numbers} -> {p.target}", [{"role": "user", "content": p.question()}], "")
            for p in countdown.puzzles(countdown.HELDOUT_SIZE, seed=countdown.HELDOUT_SEED)]


def countdown_verify(q: str, answer: str, final: bool) -> float:
    return countdown.check_question(q, answer, final)


def gsm8k_items() -> list[Item]:
    from llmos.evals.tasks import TASKS as SETS

    return [Item(d.id, [{"role": "user", "content": d.query.removeprefix("Question:")
                  .removesuffix("Answer:").strip()}], d.answers[0])
            for d in SETS["gsm8k"].docs()]


def humaneval_items() -> list[Item]:
    from llmos.evals.tasks import TASKS as SETS

    ask = "Complete this Python function:\n```python\n{}```"
    return [Item(d.id, [{"role": "user", "content": ask.format(d.query)}], "", d.query, d.tests)
            for d in SETS["humaneval"].docs()]


REGISTRY = {
    "mental2": Task("mental2", "number", CLAUSES, mental2_items, working_value),
    "mental": Task("mental", "number", CLAUSES, mental_items, working_value),
    "countdown": Task("countdown", "number", ("\n",), countdown_items, countdown_verify,
                      reaches_target),
    "gsm8k": Task("gsm8k", "number", ("\n",), gsm8k_items, working_value, max_new_tokens=192),
    "humaneval": Task("humaneval", "code", ("\n",), humaneval_items, doctest_value,
                      passes_hidden_tests, max_new_tokens=256),
}


def parse_tasks(names: list[str]) -> list[Task]:
    bad = [n for n in names if n not in REGISTRY]
    if bad:
        raise TaskError(f"--think runs on tasks with checkable answers: {', '.join(TASKS)}; "
                        f"not {', '.join(bad)}")
    return [REGISTRY[n] for n in names]


def parse_budgets(spec: str) -> list[int]:
    try:
        budgets = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--budget takes whole numbers like 1,2,4,8, not {spec!r}") from None
    if not budgets or budgets[0] < 1:
        raise ValueError(f"--budget needs numbers >= 1, not {spec!r}")
    return budgets


def verifier_judge(task: Task) -> Judge:
    return lambda messages, texts, final: [task.verify(question(messages), t, final)
                                           for t in texts]


def run_curve(lm: LanguageModel, task: Task, cfg: Think, strategies: list[str],
              budgets: list[int], limit: int | None, judge: Judge | None = None,
              log: Callable[[str], None] = lambda m: None) -> dict:
    """One task's curve: {"n", "curve": [a row per strategy and budget], "items": {"vote:8":
    [...], ...}}. Budget 1 is the greedy answer, run once and shared by every strategy."""
    pool = task.items()
    chosen = [pool[i] for i in spread(len(pool), limit)]
    if not chosen:
        raise TaskError(f"task {task.name} has no items")
    cfg = replace(cfg, kind=task.kind, step_stops=task.steps, max_new_tokens=task.max_new_tokens,
                  judge=judge or cfg.judge or verifier_judge(task))
    runs = [("greedy", 1)] * (1 in budgets) + [(s, k) for k in budgets if k > 1
                                                for s in strategies]
    curve, items = [], {}
    for strategy, k in runs:
        t0 = time.perf_counter()
        rows, right, tokens = [], 0, 0
        for it in chosen:
            thought = think(lm, it.messages, replace(cfg, strategy=strategy, budget=k))
            ok = task.correct(it, thought)
            right += ok
            tokens += thought.tokens
            rows.append({"id": it.id, "expected": it.answer, "answer": thought.answer,
                         "correct": ok, "text": thought.text, **thought.spent(),
                         "candidates": thought.candidates[:8]})
        seconds = time.perf_counter() - t0
        lo, hi = wilson(right, len(chosen))
        curve.append({"strategy": strategy, "budget": k, "accuracy": right / len(chosen),
                      "ci": [lo, hi], "correct": right, "n": len(chosen), "tokens": tokens,
                      "tokens_per_item": tokens / len(chosen), "seconds": round(seconds, 2)})
        items[f"{strategy}:{k}"] = rows
        log(f"{task.name} {strategy} k={k}: {right}/{len(chosen)} = {right / len(chosen):.3f}"
            f" [{lo:.3f}, {hi:.3f}], {tokens / len(chosen):.0f} tokens/item, {seconds:.1f}s")
    return {"n": len(chosen), "curve": curve, "items": items}


def lines(t: dict, strategies: list[str]) -> dict[str, list[dict]]:
    """strategy -> its rows of a task's curve, each starting from the shared greedy row."""
    greedy = [r for r in t["curve"] if r["strategy"] == "greedy"]
    return {s: greedy + [r for r in t["curve"] if r["strategy"] == s] for s in strategies}


def write(result: dict, out: Path) -> Path:
    """The JSON, and the curves drawn into a PNG beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    return plot(result, out.with_suffix(".png"))


def plot(result: dict, png: Path) -> Path:
    """Accuracy against the budget and against the tokens generated per item: one line per
    task and strategy, with 95% intervals."""
    from llmos.plots import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, t in result["tasks"].items():
        for strategy, c in lines(t, result["strategies"]).items():
            acc = [r["accuracy"] for r in c]
            err = [[r["accuracy"] - r["ci"][0] for r in c],
                   [r["ci"][1] - r["accuracy"] for r in c]]
            for ax, x in zip(axes, ([r["budget"] for r in c],
                                    [r["tokens_per_item"] for r in c])):
                ax.errorbar(x, acc, yerr=err, marker="o", capsize=3,
                            label=f"{name} {strategy} (n={t['n']})")
    for ax, label in zip(axes, ("budget (samples, or rows per step)",
                                "tokens generated per item")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['model']}: " + ", ".join(result["strategies"])
                 + (f" (judge: {result['judge']})" if result.get("judge") else ""))
    fig.tight_layout()
    return save(fig, png)


def label(result: dict, r: dict) -> str:
    """'greedy', 'vote k=8', 'best-of (verifier) k=8'."""
    if r["strategy"] == "greedy":
        return "greedy"
    judge = f" ({result['judge']})" if r["strategy"] in NEEDS_JUDGE and result.get("judge") else ""
    return f"{r['strategy']}{judge} k={r['budget']}"


def headline(result: dict) -> str:
    """'mental2 (n=150): greedy 0.650 [0.571, 0.722], vote k=8 0.553 [0.473, 0.631], ...'."""
    return "; ".join(f"{name} (n={t['n']}): " + ", ".join(
        f"{label(result, r)} {r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        for r in t["curve"]) for name, t in result["tasks"].items())


def format_table(result: dict) -> str:
    out = [f"{'task':<10} {'strategy':<8} {'budget':>6} {'accuracy':>8}  {'95% interval':<15} "
           f"{'n':>4} {'tokens/item':>11} {'seconds':>8}"]
    for name, t in result["tasks"].items():
        for r in t["curve"]:
            out.append(f"{name:<10} {r['strategy']:<8} {r['budget']:>6} {r['accuracy']:>8.3f}  "
                       f"{r['ci'][0]:.3f} - {r['ci'][1]:.3f}   {r['n']:>4} "
                       f"{r['tokens_per_item']:>11.1f} {r['seconds']:>8.1f}")
    return "\n".join(out)


def evaluate(model_dir: str, names: list[str], cfg: Think, strategies: list[str],
             budgets: list[int], limit: int | None, judge_spec: str | None = None,
             device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """Load a checkpoint and run every task's curve for every strategy; what `write` stores."""
    from llmos import checkpoint
    from llmos import tokenizer as tokenizers_
    from llmos.infer.think import LocalModel, parse_judge

    tasks = parse_tasks(names)  # before the model loads: a typo fails at once
    for strategy in strategies:
        replace(cfg, strategy=strategy, judge=cfg.judge or verifier_judge(tasks[0])).check()
    judge = parse_judge(judge_spec, device)
    model = checkpoint.load_model(model_dir, device).eval()
    lm = LocalModel(model, tokenizers_.load(model_dir))
    t0 = time.perf_counter()
    judged = any(s in NEEDS_JUDGE for s in strategies)
    result = {"model": str(model_dir), "strategies": strategies,
              "judge": (judge_spec or "verifier") if judged else None,
              "temperature": cfg.temperature, "seed": cfg.seed, "budgets": budgets,
              "limit": limit, "tasks": {}}
    for task in tasks:
        result["tasks"][task.name] = run_curve(lm, task, cfg, strategies, budgets, limit, judge,
                                               log)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def card_section(run: Path, names: list[str], table: Callable) -> str:
    """The report card's System-2 section: every checkpoint's think-*.json curves, as a table
    and the plot beside each file ("" when there are none)."""
    parts = []
    for name in names:
        for path in sorted((run / name / "evals").glob("think-*.json")):
            try:
                result = json.loads(path.read_text())
                rows = [[task, r["strategy"], r["budget"], f"{r['accuracy']:.3f}",
                         f"{r['ci'][0]:.3f} - {r['ci'][1]:.3f}", r["n"],
                         f"{r['tokens_per_item']:.0f}", f"{r['seconds']:.0f} s"]
                        for task, t in result["tasks"].items() for r in t["curve"]]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a file being written, or from another version: not this card's
            parts += [f"`{name}/evals/{path.name}` (budget 1 is the greedy answer; judge: "
                      f"{result.get('judge') or 'none'}):", "",
                      table(["task", "strategy", "budget", "accuracy", "95% interval", "n",
                             "tokens/item", "time"], rows), ""]
            if path.with_suffix(".png").exists():
                parts += [f"![{path.stem}]({name}/evals/{path.stem}.png)", ""]
    return "\n".join(parts).strip()
