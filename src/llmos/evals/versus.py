"""A tuned checkpoint against its parent on held-out prompts: win rate and task accuracy.

Both models answer the same held-out questions of the assistant evaluation (greedy, tools in
the loop; `llmos.evals.assistant_tasks`). Each question is one pair, decided by

1. the verifier: one answer is correct and the other is not (exact result, program output,
   signature, identity; word F1 >= 0.5 against the gold answer for free text);
2. otherwise, when a reward model is given and the answers differ, the higher reward;
3. otherwise a tie (the same answer, rewards within `reward_model.TIE_MARGIN` of each other, or both
   right or both wrong with no reward model).

The win rate is wins / (wins + losses): ties are left out ("decided pairs"). The summary splits
the reward model's calls by whether both answers were right or both wrong: at cpu-tiny most are
two wrong answers (two made-up docstrings), where its preference says little (docs/comparisons.md).

    from llmos.evals.versus import compare_to_parent
    compare_to_parent("runs/cpu-tiny/dpo", "runs/cpu-tiny/sft", judge="runs/cpu-tiny/reward")
"""

from __future__ import annotations

import json
from pathlib import Path

from llmos import checkpoint
from llmos import tokenizer as tokenizers_
from llmos.data.conversations import read_conversations
from llmos.data.records import Conversation, prompt_of
from llmos.envs.verifiers import passed
from llmos.evals import assistant_tasks
from llmos.reward_model import TIE_MARGIN, load_reward_model, score

HELDOUT = "builtin:assistant:heldout"


def correct(record: dict) -> bool:
    return passed(record["task"], record["score"])


def _evaluate(model, tok, heldout: list[Conversation], limit: int, saved: Path | None) -> dict:
    """The assistant evaluation, or the one saved in `saved` when it asked the same questions."""
    if saved is not None and saved.exists():
        result = json.loads(saved.read_text())
        asked = [(r["task"], r["subject"]) for r in result.get("items", [])]
        if asked == [(c.task, c.subject) for c in assistant_tasks.plan(heldout, limit)]:
            return result
    return assistant_tasks.evaluate(model, tok, heldout, limit)


def decide(child: dict, parent: dict, rewards: tuple[float, float] | None = None
           ) -> tuple[str, str]:
    """(outcome for the child: win / loss / tie, what decided it: verifier / reward / same)."""
    if child["transcript"] == parent["transcript"]:
        return "tie", "same"
    c, p = correct(child), correct(parent)
    if c != p:
        return ("win" if c else "loss"), "verifier"
    if rewards is not None and abs(rewards[0] - rewards[1]) > TIE_MARGIN:
        return ("win" if rewards[0] > rewards[1] else "loss"), "reward"
    return "tie", "undecided"


def compare_to_parent(child: str | Path, parent: str | Path, limit: int = 180,
                      judge: str | Path | None = None, heldout: list[Conversation] | None = None,
                      model=None, write: bool = True) -> dict:
    """Answer up to `limit` held-out questions with the child and its parent, judge each pair
    (verifier, then the reward model `judge` if given) and compare task accuracy. Writes
    child/compare_parent.json (every pair) and child/eval_assistant.json, adds the numbers to
    child/llmos.json's metrics, prints a summary and returns it."""
    child, parent = Path(child), Path(parent)
    if heldout is None:
        heldout, _ = read_conversations([HELDOUT])
    tok = tokenizers_.load(child)
    model = model if model is not None else checkpoint.load_model(child)
    model.eval()
    print(f"versus: answering up to {limit} held-out questions with {child} and {parent}...")
    mine = _evaluate(model, tok, heldout, limit, None)
    theirs = _evaluate(checkpoint.load_model(parent), tokenizers_.load(parent), heldout, limit,
                       parent / "eval_assistant.json")
    rewards = None
    if judge is not None:
        # Both evaluations asked the plan's questions in its order; a subject alone does not
        # name the prompt (one identity question is asked with and without a system prompt).
        prompts = [prompt_of(c) for c in assistant_tasks.plan(heldout, limit)]
        rewards = paired_rewards(load_reward_model(judge), prompts, mine["items"],
                                 theirs["items"])
    pairs = []
    for i, (c, p) in enumerate(zip(mine["items"], theirs["items"])):
        outcome, by = decide(c, p, rewards[i] if rewards else None)
        pairs.append({"task": c["task"], "subject": c["subject"], "outcome": outcome, "by": by,
                      "child_correct": correct(c), "parent_correct": correct(p),
                      "child": c["answer"], "parent": p["answer"],
                      **({"rewards": rewards[i]} if rewards else {})})
    summary = _summary(pairs, mine["summary"], theirs["summary"])
    _print(summary)
    if write:
        checkpoint.write_json(child / "compare_parent.json", {"summary": summary, "pairs": pairs,
                                               "child": str(child), "parent": str(parent),
                                               "judge": str(judge) if judge else None})
        checkpoint.write_json(child / "eval_assistant.json", mine)
        info = checkpoint.read_info(child)
        info.setdefault("metrics", {}).update(
            {f"heldout_{k}": v for k, v in mine["summary"].items()}
            | {"win_rate_vs_parent": summary["win_rate"], "decided_vs_parent": summary["decided"]})
        checkpoint.write_json(child / "llmos.json", info)
    return summary


def paired_rewards(judge: tuple, prompts: list[list[dict]], mine: list[dict],
                   theirs: list[dict]) -> list[tuple[float, float]]:
    """(child's reward, parent's reward) per question from the reward model `judge` (model,
    tokenizer), each answer's transcript scored after its own prompt: a subject alone does not
    name the prompt (one identity question is asked with and without a system prompt)."""
    rm, rtok = judge

    def scored(items: list[dict]) -> list[float]:
        return score(rm, rtok, [p + r["transcript"] for p, r in zip(prompts, items, strict=True)])

    return list(zip(scored(mine), scored(theirs)))


def _summary(pairs: list[dict], mine: dict, theirs: dict) -> dict:
    count = {o: sum(p["outcome"] == o for p in pairs) for o in ("win", "loss", "tie")}
    decided = count["win"] + count["loss"]

    def tally(sub: list[dict]) -> dict:
        return {"wins": sum(p["outcome"] == "win" for p in sub),
                "losses": sum(p["outcome"] == "loss" for p in sub)}

    by = {how: tally([p for p in pairs if p["by"] == how]) for how in ("verifier", "reward")}
    # The reward model decides only pairs the verifier calls equal: both right or both wrong.
    by["reward"]["both_wrong"] = tally([p for p in pairs if p["by"] == "reward"
                                        and not p["child_correct"]])
    accuracy = {k: {"child": v, "parent": theirs.get(k)} for k, v in mine.items()
                if k.endswith(("_acc", "_f1")) or k in ("well_formed_turns", "valid_tool_calls")}
    return {"pairs": len(pairs), "wins": count["win"], "losses": count["loss"],
            "ties": count["tie"], "decided": decided,
            "win_rate": count["win"] / decided if decided else float("nan"),
            "decided_by": by, "accuracy": accuracy}


def _print(s: dict) -> None:
    v, r = s["decided_by"]["verifier"], s["decided_by"]["reward"]
    w = r["both_wrong"]
    print(f"versus: {s['wins']} wins, {s['losses']} losses, {s['ties']} ties over {s['pairs']} "
          f"held-out questions: win rate {100 * s['win_rate']:.1f}% of {s['decided']} decided "
          f"(verifier {v['wins']}-{v['losses']}, reward model {r['wins']}-{r['losses']}, of "
          f"which {w['wins']}-{w['losses']} between two wrong answers)")
    for k, v in s["accuracy"].items():
        parent = v["parent"]
        print(f"  {k:<26} {v['child']:.3f}  (parent "
              f"{parent:.3f})" if isinstance(parent, float) else f"  {k:<26} {v['child']}")


